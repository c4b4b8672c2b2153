"""Snakemake's own cost per job as the number of scenes grows: the main process's CPU seconds
(getrusage at exit: its threads, not the jobs), per job and in total, and its job-selection
rounds, for the data half (`snakemake pack_lmdb`) on tiny valid scans. Goal (issue 23): CPU per
job within +-30 % from 100 to 1,513 scenes.

    python benchmarks/bench_scheduler.py [--scenes 100 300 707 1513] [--run-max 300]
                                         [--before-max 300] [--before-rev REV] [--cores 2]
                                         [--stop-after S]
                                         [--slurm-scenes 0] [--json OUT]

For every size: a dry run (planning) with the workstation profile and with the SLURM profile,
and, up to --run-max scenes, a real local run with the workstation profile; up to --before-max
scenes, side by side with two runs of the workflow at --before-rev (three jobs per scene: index,
frames, video), extracted with `git archive`: `before` with Snakemake's own scheduling defaults
given on the command line and without the Snakefile's hooks (the workflow before issue 23), and
`3 jobs/scene` as that revision shipped (the profiles' scheduling settings, its hooks). `after`
is this checkout: those settings and one job per scene. Per job is (real run - dry run of the
same DAG) / jobs: the scheduling, not the start and the DAG. With --slurm-scenes S, S scenes
are also submitted through profiles/slurm to a private one-node SLURM cluster
(tests/slurm_cluster.py; root and SLURM's daemons needed). The scenes' scans are two 64x48
frames each (rehearse.py's tiny_scans), so the jobs do almost nothing and Snakemake's part shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from rehearse import NODE_CORES, SCENE_RULES, snakemake_main  # noqa: E402
from scale_config import tiny_scans  # noqa: E402

SLURM_PROFILE = REPO / "profiles" / "slurm"
# Snakemake 9.27's scheduling defaults, which profiles/default used before issue 23: a 1 s
# rate-limiter timespan (every selection round arms another 1 s re-evaluation timer), the ILP
# scheduler and every ready job considered in every round; --no-hooks: without the Snakefile's
# onstart, which cancels the timers.
BEFORE = ("--max-jobs-per-timespan", "100/1s", "--scheduler", "ilp", "--scheduler-subsample", "0",
          "--no-hooks")
SPREAD = 0.30  # the goal: per-job CPU within +-30 % across sizes


# The last revision with three jobs per scene (sens_index, frames, encode_video).
THREE_JOBS_REV = "cfe5207"
THREE_JOBS = 3


def jobs_for(n_scenes: int, per_scene: int = len(SCENE_RULES)) -> int:
    return n_scenes * per_scene + 1  # + pack_lmdb


def plan(root: Path, config: Path, *profile: str, snakefile: Path = REPO / "Snakefile") -> dict:
    """A dry run of the data half: Snakemake's start and DAG."""
    return snakemake_main(root, config, "pack_lmdb", "--cores", str(NODE_CORES), *profile,
                          "-n", "--quiet", "all", snakefile=snakefile)


def real_run(root: Path, config: Path, cores: int, *extra: str,
             stop_after: float | None = None, snakefile: Path = REPO / "Snakefile") -> dict:
    """A real run; stopped after `stop_after` s, it counts the jobs that finished (their
    benchmark: files)."""
    root.mkdir()
    r = snakemake_main(root, config, "pack_lmdb", "--cores", str(cores), *extra,
                       stop_after=stop_after, snakefile=snakefile)
    if r["stopped"]:
        r["jobs"] = len(list((root / "logs" / "benchmarks").rglob("*.tsv")))
    return r


def checkout(rev: str, dest: Path) -> Path:
    """The workflow files of `rev` (its Snakefile, rules, scripts, profiles) in `dest`; the jobs
    import this checkout's package, whose stage functions kept their signatures."""
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "Snakefile"


def row(n: int, profile: str, mode: str, r: dict, base: float | None,
        per_scene: int = len(SCENE_RULES)) -> dict:
    jobs = r.get("jobs") or jobs_for(n, per_scene)
    if r.get("stopped"):
        mode += " (stopped)"
    own = r["cpu"] - base if base is not None else None
    return {"scenes": n, "profile": profile, "mode": mode, "jobs": jobs, "rounds": r["rounds"],
            "timers": r["timers"], "main_cpu": r["cpu"], "wall": r["wall"],
            "exit_wait": r.get("exit_wait"),
            "per_job": own / jobs if own is not None else r["cpu"] / jobs}


def print_row(d: dict) -> None:
    print(f"{d['scenes']:6d} {d['profile']:8s} {d['mode']:24s} {d['jobs']:6d} {d['rounds']:7d} "
          f"{d['timers']:7d} {d['main_cpu']:9.1f} {d['per_job']:8.4f} {d['wall']:8.1f} "
          f"{'' if d['exit_wait'] is None else format(d['exit_wait'], '6.1f'):>6s}",
          flush=True)


def slurm_submission(root: Path, n: int) -> dict:
    """`n` scenes through profiles/slurm (fitted to the test node) to a private SLURM cluster."""
    import slurm_cluster
    import yaml

    root.mkdir()
    config = tiny_scans(root / "scans", n)
    with slurm_cluster.local_cluster() as cluster:
        profile = slurm_cluster.fitted_profile(
            cluster, SLURM_PROFILE, root / "profile",
            scenes_per_group=yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())[
                "group-components"]["scenes"], first_status_check=5)
        work = root / "run"
        work.mkdir()
        r = snakemake_main(work, config, "pack_lmdb", "--workflow-profile", str(profile),
                           extra_env={"SLURM_CONF": cluster.env["SLURM_CONF"],
                                      "PATH": cluster.env["PATH"]})
        base = plan(root / "scans", config, "--workflow-profile", str(profile))
    return row(n, "slurm", "SLURM run", r, base["cpu"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, nargs="+", default=[100, 300, 707, 1513])
    ap.add_argument("--run-max", type=int, default=300,
                    help="real runs only up to this many scenes (707 tiny scenes: ~15 min on 2 "
                    "cores each)")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="--cores of the real runs")
    ap.add_argument("--stop-after", type=float, default=None,
                    help="stop each real run with Ctrl-C after this many seconds and count the "
                    "jobs done (for the largest sizes on a small machine)")
    ap.add_argument("--slurm-scenes", type=int, default=0,
                    help="also submit this many scenes to a local SLURM cluster")
    ap.add_argument("--before-max", type=int, default=300,
                    help="the `before` and `3 jobs/scene` real runs only up to this many scenes")
    ap.add_argument("--before-rev", default=THREE_JOBS_REV,
                    help="the revision they run (default: %(default)s)")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = []
    print(f"{'scenes':>6s} {'profile':8s} {'mode':24s} {'jobs':>6s} {'rounds':>7s} {'timers':>7s} "
          f"{'main CPU':>9s} {'CPU/job':>8s} {'wall s':>8s} {'exit s':>6s}")
    with tempfile.TemporaryDirectory(prefix="bench_scheduler_", dir=a.tmp) as tmp:
        root = Path(tmp)
        old = checkout(a.before_rev, root / "rev")
        for n in a.scenes:
            config = tiny_scans(root / f"s{n}", n)
            dry = plan(root / f"s{n}", config)
            dry_slurm = plan(root / f"s{n}", config, "--workflow-profile", str(SLURM_PROFILE))
            rows += [row(n, "default", "dry run", dry, None),
                     row(n, "slurm", "dry run", dry_slurm, None)]
            for d in rows[-2:]:
                print_row(d)
            if n > a.run_max:
                continue
            # (mode, extra arguments, Snakefile, its dry run, jobs per scene)
            runs = [("run, after", (), REPO / "Snakefile", dry, len(SCENE_RULES))]
            if n <= a.before_max:
                dry_old = plan(root / f"s{n}", config, snakefile=old)
                runs[:0] = [("run, before", BEFORE, old, dry_old, THREE_JOBS),
                            ("run, 3 jobs/scene", (), old, dry_old, THREE_JOBS)]
            for mode, extra, snakefile, base, per_scene in runs:
                r = real_run(root / f"s{n}" / mode.replace(", ", "_").replace("/", "_"), config,
                             a.cores, *extra, stop_after=a.stop_after, snakefile=snakefile)
                rows.append(row(n, "default", mode, r, base["cpu"], per_scene))
                print_row(rows[-1])
        if a.slurm_scenes:
            rows.append(slurm_submission(root / "slurm", a.slurm_scenes))
            print_row(rows[-1])
    print("\nCPU/job: dry run = main CPU / jobs; real run = (main CPU - the dry run's) / jobs; "
          "exit s: from the scheduler's end to the process's exit (pending timers)")
    for mode in ("run, before", "run, 3 jobs/scene", "run, after"):
        per = {d["scenes"]: d["per_job"] for d in rows if d["mode"].startswith(mode)}
        if len(per) > 1:
            mid = statistics.fmean(per.values())
            worst = max(abs(v / mid - 1) for v in per.values())
            verdict = "within" if worst <= SPREAD else "OUTSIDE"
            print(f"{mode}: CPU per job {', '.join(f'{v:.4f} s at {k}' for k, v in per.items())}"
                  f"; {100 * worst:.0f} % from their mean, {verdict} +-{100 * SPREAD:.0f} %")
    print(f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end "
          f"({os.cpu_count()} CPUs)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"bench_scheduler: {time.time() - started:.0f} s")
