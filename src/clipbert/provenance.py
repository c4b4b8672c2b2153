"""What made a result: the software, the machine and this checkout, as one JSON-ready record.

Every result writer (accuracy files, the model file, the runs' summary) stores `record()` under
the key `environment`, and `clipbert env` prints it: a number that moved can then be traced to a
new PyAV, another CPU or a dirty checkout. Results record it; nothing is keyed on it (a Snakemake
param holding the commit would retrain everything at each commit). Only the versions that decide
video bytes are keyed, in the `scene` rule's `encoder` param (clipbert.video.encoder_key).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from clipbert import envlock

# The distributions the record names, by their PyPI names (their import names differ).
PACKAGES = ("torch", "torchvision", "transformers", "av", "opencv-python-headless", "numpy",
            "lmdb", "pillow", "snakemake", "snakemake-executor-plugin-slurm")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`; None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pyav_libraries() -> dict[str, str]:
    """The FFmpeg libraries PyAV runs on (its wheel bundles them): libavcodec encodes the videos,
    libswscale converts their pixels (empty where PyAV is absent)."""
    try:
        import av
    except ImportError:
        return {}

    return {name: ".".join(map(str, v)) for name, v in sorted(av.library_versions.items())}


def opencv_ffmpeg() -> dict[str, str]:
    """OpenCV's version and the FFmpeg libraries inside its wheel, from its build information
    (None where OpenCV is absent: the `improved` encode and the GPU check do without it)."""
    try:
        import cv2
    except ImportError:
        return {"version": None}

    info = cv2.getBuildInformation()
    found = {"version": cv2.__version__}
    for lib in ("avcodec", "avformat", "swscale"):
        m = re.search(rf"^\s*{lib}:\s*YES \(([^)]+)\)", info, re.M)
        found[f"lib{lib}"] = m.group(1) if m else "none"
    return found


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (the machine's architecture elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(root: Path = envlock.ROOT) -> dict[str, Any]:
    """This checkout's commit and whether tracked or new files differ from it (None for both
    outside a git checkout, an installed copy of the package)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit.strip() if commit else None,
            "dirty": bool(status.strip()) if status is not None else None}


def lock_state() -> dict[str, Any]:
    """Whether the installed distributions are exactly envs/requirements.lock's."""
    out: dict[str, Any] = {"file": str(envlock.LOCK.relative_to(envlock.ROOT)),
                           "platform": envlock.PLATFORM}
    if not envlock.LOCK.exists():
        return {**out, "matches": False, "why": "no lock file beside this package"}
    installed = [(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()]
    diff = envlock.installed_vs_lock(installed)
    out["matches"] = diff["matches"]
    if not diff["matches"]:
        out["why"] = "; ".join(
            f"{kind} {', '.join(items[:5])}" + (f" and {len(items) - 5} more" if len(items) > 5
                                                else "")
            for kind, items in (("differ:", diff["differ"]), ("not in the lock:", diff["extra"]),
                                ("missing:", diff["missing"])) if items)
    return out


def _torch() -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"version": str(torch.__version__), "cuda": torch.version.cuda,
            "cudnn": str(cudnn) if cudnn else None, "devices": devices or ["cpu"]}


@functools.cache
def _static() -> dict[str, Any]:
    """The parts that do not change while a process runs (asked once: git and the lock check
    take a few tenths of a second)."""
    import clipbert

    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": _torch(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "pyav_ffmpeg": pyav_libraries(),
        "opencv": opencv_ffmpeg(),
        "clipbert": {"version": clipbert.__version__, **git_state()},
        "cpu": {"model": cpu_model(), "cores": os.cpu_count()},
        "lock": lock_state(),
    }


def record(threads: int | None = None) -> dict[str, Any]:
    """The provenance record: Python, torch (CUDA, cuDNN, devices), the packages that decide
    results, PyAV's and OpenCV's FFmpeg, this package's version and commit (dirty or not), the
    CPU and the threads used (torch's current setting unless given), whether the environment is
    the lock's."""
    import torch

    rec = _static()
    rec = {**rec, "cpu": {**rec["cpu"], "threads": threads or torch.get_num_threads()}}
    # Plain JSON types only (torch's version is a str subclass): the model file is read back
    # with torch.load(weights_only=True), which refuses any other class.
    return json.loads(json.dumps(rec))


def rows(rec: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The record flattened to (dotted key, value) rows: the report's table, `clipbert env`."""
    out: list[tuple[str, str]] = []
    for key, value in rec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += rows(value, name + ".")
        elif isinstance(value, list):
            out.append((name, ", ".join(map(str, value))))
        else:
            out.append((name, "" if value is None else str(value)))
    return out


def table(rec: dict[str, Any]) -> str:
    """The record as an aligned two-column text table."""
    flat = rows(rec)
    width = max(len(k) for k, _ in flat)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in flat)
