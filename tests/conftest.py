"""Shared test helpers: run the `clipbert` command in a subprocess from this checkout's src/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_SQA = SHARED / "data" / "sqa3d"
# No test talks to a real SLURM cluster (tests/test_slurm.py starts its own and passes its
# SLURM_CONF): every Snakemake start would otherwise wait ~9 s in the SLURM plugin's
# `scontrol show config` where SLURM's client is installed and no controller answers.
os.environ["SLURM_CONF"] = os.devnull


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def run_cli(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m clipbert ARGS`; with check, fail the test showing stderr on non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "clipbert", *map(str, args)],
        capture_output=True, text=True, env=cli_env(), cwd=cwd,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"clipbert {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


needs_shared = pytest.mark.skipif(
    not SHARED_SQA.is_dir(), reason="../shared/data is absent (real SQA3D files)"
)


def job_stats(output: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run or dry run: rule -> number of jobs
    (empty when the output has none)."""
    counts: dict[str, int] = {}
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in table.splitlines()[3:]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def mp4s(tmp_path_factory) -> list[Path]:
    """Three small scene videos (3, 5 and 4 frames, 32 px), for the LMDB and fault tests."""
    from test_video import make_scene

    from clipbert import video

    root = tmp_path_factory.mktemp("mp4")
    paths = []
    for i, n in enumerate((3, 5, 4)):
        scene = make_scene(root / "frames" / f"scene000{i}_00", n=n, extras=False)
        paths.append(root / "videos" / f"scene000{i}_00.mp4")
        video.encode_video(scene, paths[-1], size=(32, 32))
    return paths
