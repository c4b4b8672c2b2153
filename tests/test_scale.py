"""The workflow at full ScanNet scale (707 scenes), planned but not run: the DAG must stay quick
to build, the LMDB step must split into batches, and the SLURM profile must group the scenes.

The config comes from tests/scale_config.py. How long planning takes is measured by
benchmarks/bench_dag.py (goal: under 15 s), not asserted here: these machines are shared.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, job_stats
from scale_config import N_SCENES, real_data_config

PER_SCENE_RULES = ("sens_index", "frames", "encode_video")
SCENES_PER_GROUP = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())[
    "group-components"
]["scene"]


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
        **{rule: N_SCENES for rule in PER_SCENE_RULES},
        "sqa_convert": 1, "pack_lmdb": 1, "train": 1, "infer": 1,
        "total": 3 * N_SCENES + 4,
    }


def test_lmdb_step_runs_in_batches(scale):
    """--batch splits pack_lmdb's 707 inputs: the first third plans only their scenes' jobs."""
    root, config = scale
    text = _dry_run(root, config, "--quiet", "rules", "--batch", "pack_lmdb=1/3")
    counts = job_stats(text)
    per_batch = math.ceil(N_SCENES / 3)
    assert {rule: counts.get(rule) for rule in PER_SCENE_RULES} == dict.fromkeys(
        PER_SCENE_RULES, per_batch
    )
    assert "pack_lmdb" not in counts and "train" not in counts
    assert "Considering only batch 1/3 (rule pack_lmdb)" in text


def test_slurm_profile_groups_scenes(scale):
    """Through profiles/slurm the 2121 per-scene jobs become a few dozen SLURM group jobs."""
    root, config = scale
    text = _dry_run(
        root, config, "--workflow-profile", str(REPO / "profiles" / "slurm"),
        "--", "results/test_acc.json",
    )
    assert text.count("Group job scene") == math.ceil(N_SCENES / SCENES_PER_GROUP)
