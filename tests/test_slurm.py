"""The demo workflow submitted through profiles/slurm to a real one-node SLURM cluster.

The cluster (tests/slurm_cluster.py) is started here and stopped by PID afterwards. In CI
(CI=true) the SLURM packages are installed by .ci/run, so a missing one fails the test instead of
skipping it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from conftest import REPO, cli_env

from clipbert.smk import JOB_RESOURCES

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"
# The executor's first status check, in seconds; squeue must still list a job that long after it
# ends, three times over (the plugin falls back to sacct otherwise, which needs a database).
FIRST_STATUS_CHECK = 5
TIME_LIMIT = 600  # about 4 minutes on two busy cores; the limit only stops a hang
SMALL_CONFIG = {
    "data": {"demo": {"scenes": 6, "frames": 40}},
    "frames": {"stride": 10},
    "video": {"size": [64, 64]},
    "train": {"overrides": {"epochs": 1, "max_img_size": 64}},
    # Two runs of `runs` (results/runs/video/seed{0,1}): separate SLURM jobs, side by side.
    "runs": {"seeds": [0, 1], "variants": {"video": {}}},
}
# One SLURM job each, with the 18 per-scene jobs in two groups of 3 scenes (two run at once on
# the two-CPU test node; the shipped profile groups 10 scenes).
SCENES_PER_GROUP = 3
# runs_summary, like the plots, is a local rule: it runs in the submitting Snakemake, not on SLURM.
EXPECTED_JOBS = ["demo_data", "sqa_convert", "scenes_scene", "scenes_scene", "pack_lmdb", "train",
                 "infer", "train_run", "train_run", "infer_run", "infer_run"]


def _unavailable() -> str | None:
    missing = slurm_cluster.missing_binaries()
    if missing:
        return f"SLURM/MUNGE not installed ({', '.join(missing)}); .ci/run installs them"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"CI must run the SLURM test: {reason}")
        pytest.skip(reason)
    with slurm_cluster.local_cluster() as running:
        yield running


def test_profile_is_complete():
    """What the README promises: one place for partition and account, GPUs for the GPU rules,
    the per-scene rules grouped, and nothing that is the rules' own (memory, time, CPUs)."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert set(profile["default-resources"]) == {"slurm_partition", "slurm_account"}
    rules = profile["set-resources"]
    for rule in ("train", "infer", "train_blind", "infer_blind", "train_run", "infer_run"):
        assert rules[rule]["gpu"] >= 1
    own = {"mem_mb", "runtime", "cpus_per_task"}
    assert not [(rule, own & set(res)) for rule, res in rules.items() if own & set(res)]
    assert profile["groups"] == {"scene": "scenes"}
    # without a slot each, a group job would ask for the CPUs and memory of all its scenes
    assert rules["scene"]["scene_slots"] == 1 and "scene_slots=1" in profile["resources"]
    assert profile["group-components"]["scenes"] > 1


def test_profile_names_only_known_rules():
    """A renamed rule would silently lose its resources."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--list-rules"],
        capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    known = set(out.stdout.split())
    profile = yaml.safe_load(PROFILE.read_text())
    named = set(profile["set-resources"]) | set(profile["set-threads"]) | set(profile["groups"])
    assert named <= known, sorted(named - known)


def _job_block(text: str, rule: str) -> str:
    """A dry run's lines about one job of `rule`, up to the next job."""
    block = text[text.index(f"rule {rule}:"):]
    return block[: block.index("\nrule ", 1) if "\nrule " in block[1:] else 2000]


def test_profile_resources_reach_a_dry_run(tmp_path):
    """Snakemake accepts the profile and applies it: the GPU rules ask for a GPU, and every
    job's memory and time limit come from its rule (clipbert.smk.JOB_RESOURCES at the demo's
    scale), not from the profile."""
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--workflow-profile", str(PROFILE.parent), "-n",
         "--configfile", str(tmp_path / "small.yaml"), "--", "results/test_acc.json",
         "results/blind/test_acc.json", "plots"],
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "Group job scenes" in text
    demo = JOB_RESOURCES["demo"]
    for rule, table in (("train", "train"), ("train_blind", "train_blind"),
                        ("infer", "infer"), ("pack_lmdb", "pack_lmdb"),
                        ("plot_data", "plot"), ("sqa_convert", "sqa_convert")):
        job = _job_block(text, rule)
        mem_mb, runtime = demo[table]
        assert f"mem_mb={mem_mb}," in job and f"runtime={runtime}" in job, (rule, job)
        assert ("gpu=1" in job) == rule.startswith(("train", "infer")), (rule, job)
    mem_mb, runtime = demo["scene"]
    assert f"mem_mb={mem_mb}," in text and f"runtime={runtime}, scene_slots=1" in text


def _test_profile(cluster: slurm_cluster.Cluster, dest: Path) -> Path:
    """profiles/slurm fitted to the test node (slurm_cluster.fitted_profile), 3 scenes a group;
    the runs' jobs take one CPU each, so that two runs fit the node at once."""
    slurm_cluster.fitted_profile(cluster, PROFILE.parent, dest, scenes_per_group=SCENES_PER_GROUP,
                                 first_status_check=FIRST_STATUS_CHECK)
    profile = yaml.safe_load((dest / "config.yaml").read_text())
    for rule in ("train_run", "infer_run"):
        profile["set-threads"][rule] = 1
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def _slurm_jobs(cluster: slurm_cluster.Cluster) -> list[tuple[str, str, int, str]]:
    """(rule or group, final state, CPUs, memory) of every job SLURM still remembers, sorted.

    The executor names a job by its rule (`rule_<name>_wildcards_...`) or its group
    (`group_<group>_<rules>`) in the job's comment."""
    out = cluster.run("squeue", "--noheader", "--states=all", "--format=%k|%T|%C|%m")
    assert out.returncode == 0, out.stderr
    jobs = []
    for line in out.stdout.splitlines():
        comment, state, cpus, memory = (f.strip() for f in line.split("|"))
        name = comment.removeprefix("rule_").split("_wildcards")[0]
        if name.startswith("scene_"):  # a group's comment lists its rules after the group
            name = "scene"
        jobs.append((name, state, int(cpus), memory))
    return sorted(jobs)


def _job_windows(cluster: slurm_cluster.Cluster, rule: str) -> list[tuple[str, str]]:
    """(start, end) of every job of `rule` SLURM remembers, as squeue prints them."""
    out = cluster.run("squeue", "--noheader", "--states=all", "--format=%k|%S|%e")
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines()]
    return sorted((start.strip(), end.strip()) for comment, start, end in rows
                  if comment.strip().removeprefix("rule_").split("_wildcards")[0] == rule)


@pytest.mark.slow(seconds=130)
def test_demo_workflow_on_slurm(cluster, tmp_path):
    assert slurm_cluster.MIN_JOB_AGE >= max(3 * FIRST_STATUS_CHECK, TIME_LIMIT)
    profile = _test_profile(cluster, tmp_path / "profile")
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    work = tmp_path / "run"
    env = cli_env()
    env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    env["PATH"] = os.pathsep.join(
        [str(cluster.bin), str(Path(sys.executable).parent), env.get("PATH", "")]
    )
    cmd = [
        "timeout", "-k", "15", str(TIME_LIMIT),
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
        "--workflow-profile", str(profile), "--configfile", str(tmp_path / "small.yaml"),
        "--", "results/test_acc.json", "results/runs/summary.json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    if proc.returncode != 0:
        slurm_logs = "\n".join(
            f"--- {p} ---\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
        )
        pytest.fail(
            f"snakemake on SLURM exited {proc.returncode}\n{proc.stderr[-6000:]}\n"
            f"{slurm_logs}\n{cluster.logs()}"
        )
    acc = json.loads((work / "results" / "test_acc.json").read_text())
    assert 0.0 <= acc["overall"] <= 100.0
    assert acc["n_questions"] > 0
    summary = json.loads((work / "results/runs/summary.json").read_text())
    assert summary["variants"]["video"]["n"] == 2
    assert sorted(summary["variants"]["video"]["runs"]) == ["seed0", "seed1"]
    jobs = _slurm_jobs(cluster)
    assert [name for name, *_ in jobs] == sorted(EXPECTED_JOBS), jobs
    # The two runs' trainings were in the queue together and ran side by side.
    (start0, end0), (start1, end1) = _job_windows(cluster, "train_run")
    assert start1 < end0 and start0 < end1, _job_windows(cluster, "train_run")
    assert {state for _, state, *_ in jobs} == {"COMPLETED"}, jobs
    # A group runs its scenes one after another: one CPU, one scene's memory, not their sums.
    per_scene = JOB_RESOURCES["demo"]["scene"][0]  # the rule's mem_mb at the demo's scale
    for name, _, cpus, memory in jobs:
        if name == "scenes_scene":  # the executor's name: the group, then its rules
            assert (cpus, memory) == (1, f"{per_scene}M"), jobs
    # The scene jobs ran inside the group jobs, not as SLURM jobs of their own.
    assert len(list((work / "logs" / "scene").glob("*.log"))) == 6


def checkout_on_this_env(root: Path) -> Path:
    """A copy of `./run` whose `.venv` is the environment running the tests (its `bin`, and the
    stamp `./run` looks for), so that the script's own logic runs without building a virtual
    environment in the checkout (minutes and gigabytes where `.venv` is absent or is another)."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a link elsewhere
    if not (bin_dir / "snakemake").is_file():
        pytest.skip(f"no snakemake beside the running interpreter ({bin_dir}): ./run would "
                    "build a virtual environment")
    root.mkdir()
    inputs = b""  # what ./run's stamp hashes: pyproject.toml, then the lock
    for name in ("pyproject.toml", "envs/requirements.lock"):
        data = (REPO / name).read_bytes()
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        inputs += data
    (root / "run").write_bytes((REPO / "run").read_bytes())
    (root / "run").chmod(0o755)
    venv = root / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(bin_dir)
    (venv / f".installed-{hashlib.sha256(inputs).hexdigest()[:16]}").touch()
    return root / "run"


@pytest.mark.parametrize("profile_args, keeps_conf", [
    ((), False),
    (("--workflow-profile", str(PROFILE.parent)), True),
])
def test_run_keeps_slurm_out_of_local_runs(tmp_path, profile_args, keeps_conf):
    """Snakemake loads the SLURM plugin at every start and the plugin asks `scontrol show config`
    (~9 s where no controller answers): `./run snakemake` hands it an empty configuration unless
    the run names SLURM. A stand-in scontrol records the SLURM_CONF it is given. `./run` runs
    on the test's own environment (`checkout_on_this_env`): no `.venv` is built."""
    fake = tmp_path / "bin"
    fake.mkdir()
    seen = tmp_path / "seen"
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$SLURM_CONF" >> {seen}\nexit 1\n')
    # The plugin asks scontrol only where SLURM's client is installed (it looks for sinfo and
    # squeue): stand-ins, so that the check runs on a machine without SLURM too.
    for name in ("sinfo", "squeue"):
        (fake / name).write_text("#!/bin/sh\nexit 1\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = dict(cli_env(), SLURM_CONF="/etc/slurm/site.conf",
               PATH=os.pathsep.join([str(fake), os.environ["PATH"]]))
    env.pop("SNAKEMAKE_PROFILE", None)
    run = checkout_on_this_env(tmp_path / "checkout")
    proc = subprocess.run([str(run), "snakemake", "-s", str(REPO / "Snakefile"), *profile_args,
                           "--list-rules"], capture_output=True, text=True, env=env,
                          cwd=run.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    conf = "/etc/slurm/site.conf" if keeps_conf else os.devnull
    assert set(seen.read_text().split()) == {conf}
