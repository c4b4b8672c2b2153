"""The workflow at full ScanNet scale (707 scenes), planned but not run: the DAG must stay quick
to build, the LMDB step must split into batches, and the SLURM profile must group the scenes.

The config comes from tests/scale_config.py. How long planning takes is measured by
benchmarks/bench_dag.py (goal: under 15 s), not asserted here: these machines are shared.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, job_stats
from scale_config import N_SCENES, SNAKEMAKE_MAIN, real_data_config, tiny_scans

SCENES_PER_GROUP = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())[
    "group-components"
]["scenes"]


@pytest.fixture(scope="module")
def scale(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scale")
    return root, real_data_config(root)


def _dry_run(root: Path, config: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(root),
           "-n", "--configfile", str(config), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_full_dag(scale):
    root, config = scale
    text = _dry_run(root, config, "--quiet", "rules", "--", "results/test_acc.json")
    counts = job_stats(text)
    assert counts == {
        "scene": N_SCENES, "sqa_convert": 1, "pack_lmdb": 1, "train": 1, "infer": 1,
        "total": N_SCENES + 4,
    }


def test_lmdb_step_runs_in_batches(scale):
    """--batch splits pack_lmdb's 707 inputs: the first third plans only their scenes' jobs."""
    root, config = scale
    text = _dry_run(root, config, "--quiet", "rules", "--batch", "pack_lmdb=1/3")
    counts = job_stats(text)
    per_batch = math.ceil(N_SCENES / 3)
    assert counts.get("scene") == per_batch
    assert "pack_lmdb" not in counts and "train" not in counts
    assert "Considering only batch 1/3 (rule pack_lmdb)" in text


def test_slurm_profile_groups_scenes(scale):
    """Through profiles/slurm the 707 scene jobs become a few dozen SLURM group jobs."""
    root, config = scale
    text = _dry_run(
        root, config, "--workflow-profile", str(REPO / "profiles" / "slurm"),
        "--", "results/test_acc.json",
    )
    assert text.count("Group job scenes") == math.ceil(N_SCENES / SCENES_PER_GROUP)


def test_job_selection_runs_once_per_job(tmp_path):
    """Issue 23: with the workstation profile, Snakemake's scheduler selects jobs about once per
    finished job, and exits when they are done. Its default rate limit made every selection
    round arm a 1 s timer that runs another round: rounds grew with the jobs finished (22,054
    rounds for 301 jobs at 100 scenes, benchmarks/bench_scheduler.py); the profile's one-minute
    timespan would instead keep the process waiting at exit if the Snakefile did not cancel the
    timers. At 4 scenes and three jobs per scene (13 jobs): 12 rounds and 0.04 s at exit; with
    Snakemake's defaults 88 rounds; without the Snakefile's hooks 57 s at exit."""
    n_scenes = 4
    config = tiny_scans(tmp_path / "scans", n_scenes)
    report = tmp_path / "main.json"
    cmd = [sys.executable, "-c", SNAKEMAKE_MAIN, "-s", str(REPO / "Snakefile"), "-d",
           str(tmp_path / "run"), "pack_lmdb", "--cores", "2", "--configfile", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(cli_env(), REHEARSE_MAIN_CPU=str(report)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    main = json.loads(report.read_text())
    jobs = n_scenes + 1
    assert jobs // 2 <= main["rounds"] <= jobs + 2, main
    assert main["exit_wait"] < 10, main  # a pending one-minute timer would hold it ~50 s
