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


# Test processes (pytest-xdist's `-n auto`, pyproject.toml's addopts): one per CPU this process
# may use, at most four, whose ~3 GB each (an end-to-end run, a training) fit a 24 GB machine.
# PYTEST_XDIST_AUTO_NUM_WORKERS or `-n N` choose another count, `-n 0` runs in this process.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if "PYTEST_XDIST_AUTO_NUM_WORKERS" in os.environ:
        return None  # pytest-xdist's own hook reads it
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, MAX_WORKERS))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (`@pytest.mark.slow(seconds=N)`, measured on two busy cores),
    the rest in their order: started last, a ten-minute test would leave the other workers
    idle for most of it. `--dist loadgroup` hands out the tests one at a time in this order
    (no test has an `xdist_group`, so each is a group of its own); `--dist load` would send
    each process a run of a quarter of its share at once, both longest tests to the first."""
    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return mark.kwargs.get("seconds", 0) if mark else 0

    items.sort(key=lambda item: -seconds(item))


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
