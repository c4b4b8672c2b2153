"""Benchmark the start-of-run checkpoint check on a file of SQA3D's release size; prints ratios.

    python benchmarks/bench_checkpoint.py [--dtype float32] [--tmp DIR]

An evaluation-only run (`infer.model`) checks the checkpoint when the workflow starts, before any
job: `modelfile.check_model_file` reads its names and shapes only (torch.load with
`weights_only=True, mmap=True`: tensors stay on disk until used). This writes an upstream-layout
fine-tuned state dict of the faithful model (ResNet-50, BERT-base, 1500-row head, `module.`
prefix; fp32 by default, ~600 MB) and measures, side by side, each from disk (the file dropped
from the page cache first) and from the page cache:

* the check itself;
* a full `torch.load(weights_only=True)` of the same file, what reading it whole costs;
* `cat FILE > /dev/null`, the disk's pace.

Goal: the check takes at most a few seconds, and far less than reading the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from realdata import drop_cache  # noqa: E402  (shared with the tests)

from clipbert import modelfile  # noqa: E402
from clipbert.checkpoints import native_to_upstream  # noqa: E402
from clipbert.config import make_config  # noqa: E402
from clipbert.model import build_model  # noqa: E402


def write_checkpoint(path: Path, dtype: torch.dtype) -> int:
    """Random weights at the faithful model's shapes, upstream names, DDP prefix; its size."""
    cfg = dataclasses.replace(make_config("faithful").model, vocab_size=30522, num_labels=1500)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        name = native_to_upstream(key)
        if name is not None:
            state["module." + name] = torch.randn(shape, generator=g).to(dtype)
    torch.save(state, path)
    return path.stat().st_size


def timed(fn, path: Path, cold: bool) -> float:
    if cold:
        drop_cache(path)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--tmp", default=None, help="folder for the file (default: the system's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        path = Path(tmp) / "clipbert.pt"
        size = write_checkpoint(path, getattr(torch, a.dtype))
        print(f"checkpoint: {path.name}, {size / 1e6:.0f} MB, {a.dtype}, faithful shapes")
        runs = {
            "check (names and shapes)": lambda: modelfile.check_model_file(
                path, preset="faithful", variant="clipbert", n_answers=706),
            "torch.load whole file": lambda: torch.load(path, map_location="cpu",
                                                        weights_only=True),
            "cat file > /dev/null": lambda: subprocess.run(["cat", str(path)], check=True,
                                                           stdout=subprocess.DEVNULL),
        }
        modelfile.check_model_file(path, preset="faithful")  # imports and meta model warm
        results = {}
        for cold in (True, False):
            for name, fn in runs.items():
                results[name, cold] = min(timed(fn, path, cold) for _ in range(3))
        check = results["check (names and shapes)", True]
        for cold in (True, False):
            print(f"{'from disk (page cache dropped)' if cold else 'from the page cache'}:")
            for name in runs:
                t = results[name, cold]
                print(f"  {name:28s} {t:7.3f} s   {t / check:6.1f} x the check from disk")
        load = results["torch.load whole file", True]
        print(f"the check from disk: {check:.3f} s, {load / check:.0f}x faster than loading the "
              f"file; goal <= 3 s: {'meets it' if check <= 3 else 'MISSES it'}")
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
