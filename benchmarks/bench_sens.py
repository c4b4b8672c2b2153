"""Benchmark the .sens stage on a generated ScanNet-sized scan; prints ratios, deletes its files.

    python benchmarks/bench_sens.py [--frames 1650] [--tmp DIR]

The scan is 1296x968 JPEG colour (quality 90, ~150 KB a frame) and 640x480 zlib depth
(~250 KB a frame), about 0.4 MB a frame like ScanNet's ~0.6 GB / ~1650-frame average. To
keep generation cheap, 16 distinct colour and 16 distinct depth payloads are cycled; sizes and
codec work per frame are those of real frames. Measured side by side, file in page cache:

* `export --stride 20` (in-process and via the CLI) against `cat FILE > /dev/null`;
* peak RSS of the CLI export against the file size, and against the same export of a scan a
  tenth as long (flat memory means the two are equal);
* depth decoding (zlib + size check) of every frame, frames per CPU-second in one process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from realdata import color_payload, scannet_header  # noqa: E402  (ScanNet-sized JPEGs, shared with the tests)

from clipbert import frames as frames_mod  # noqa: E402
from clipbert import sens  # noqa: E402

W, H, DW, DH = 1296, 968, 640, 480
N_DISTINCT = 16


def make_depth(seed: int) -> bytes:
    """Sloped surfaces in mm with disparity quantisation, flicker and clustered holes."""
    r = np.random.default_rng(1000 + seed)
    y, x = np.mgrid[0:DH, 0:DW].astype(np.float32)
    d = 1200 + (1 + seed % 3) * x + 4 * y + 90 * np.sin(x / (40 + seed)) + 60 * np.cos(y / 37)
    step = np.maximum(1, d * d / 3.0e5)
    d = np.round(d / step) * step
    d += step * r.integers(-1, 2, d.shape) * (r.random(d.shape) < 0.05)
    d[np.kron(r.random((DH // 16, DW // 16)) < 0.06, np.ones((16, 16), bool))] = 0
    return sens.encode_depth(np.clip(d, 0, 65535).astype(np.uint16))


def write_scan(path: Path, n: int, colors: list[bytes], depths: list[bytes]) -> None:
    header = scannet_header(n)

    def gen() -> Iterator[sens.SensFrame]:
        rng = np.random.default_rng(7)
        for i in range(n):
            pose = np.eye(4, dtype=np.float32)
            pose[:3, 3] = rng.normal(size=3)
            if i % 97 == 50:
                pose[:] = -np.inf
            yield sens.SensFrame(pose, 33_333 * i, 33_333 * i + 500,
                                 colors[i % N_DISTINCT], depths[(i * 7 + 3) % N_DISTINCT])

    imu = [sens.ImuRecord(timestamp=10_000 * j) for j in range(n * 3)]
    sens.write_sens(path, header, gen(), imu)


def timed(fn: Callable[[], object], repeat: int, reset: Path | None = None) -> float:
    """Median wall seconds of `repeat` runs; `reset` is removed (untimed) before each run."""
    times = []
    for _ in range(repeat):
        if reset is not None:
            shutil.rmtree(reset, ignore_errors=True)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# The child reports its own VmHWM: getrusage's ru_maxrss survives fork and exec, so it would
# show this (large) parent's footprint instead of the child's.
HWM = """
hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]
print("VmHWM", hwm)
"""
CLI = "import sys\nfrom clipbert.cli import main\nassert main(sys.argv[1:]) == 0\n" + HWM
IMPORTS = "import clipbert.frames, PIL.Image\n" + HWM
DEPTH_PASS = """
import sys, time
from clipbert.sens import SensReader
t = time.process_time()
with SensReader(sys.argv[1]) as r:
    for i in range(r.num_frames):
        r.depth(i)
print("FPS", r.num_frames / (time.process_time() - t))
""" + HWM


def run_rss(code: str, *args: str) -> tuple[float, int, dict[str, float]]:
    """Run `code` in a fresh interpreter: wall seconds, peak RSS (bytes), its KEY VALUE lines."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"benchmark: child failed: {proc.stderr.strip()}")
    vals = {k: float(v) for k, v in (line.split() for line in proc.stdout.splitlines()
                                     if line.split()[0] in ("VmHWM", "FPS"))}
    return wall, int(vals["VmHWM"]) * 1024, vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1650, help="frames in the scan (>= 1500 "
                    "for the reported figures)")
    ap.add_argument("--stride", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--tmp", default=None, help="folder for the generated files")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_sens_", dir=a.tmp) as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        colors = [color_payload(s) for s in range(N_DISTINCT)]
        depths = [make_depth(s) for s in range(N_DISTINCT)]
        big, small = tmp / "scene_big.sens", tmp / "scene_small.sens"
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        write_scan(big, a.frames, colors, depths)
        t_write = time.perf_counter() - t
        write_scan(small, max(1, a.frames // 10), colors, depths)
        size = big.stat().st_size
        kb_c = np.mean([len(c) for c in colors]) / 1e3
        kb_d = np.mean([len(d) for d in depths]) / 1e3
        print(f"scan: {a.frames} frames, {W}x{H} JPEG (mean {kb_c:.0f} KB) + {DW}x{DH} zlib "
              f"depth (mean {kb_d:.0f} KB) = {size / 1e6:.0f} MB; payloads made in {t_gen:.1f} s, "
              f"write_sens {t_write:.2f} s ({size / 1e6 / t_write:.0f} MB/s)")

        subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # page cache
        t_cat = timed(lambda: subprocess.run(f"cat '{big}' > /dev/null", shell=True,
                                             check=True), a.repeat)
        out = tmp / "out"
        t_open = timed(lambda: sens.SensReader(big).close(), a.repeat)
        t_exp = timed(lambda: frames_mod.export_frames(big, out, stride=a.stride), a.repeat, out)
        t_exp_dp = timed(lambda: frames_mod.export_frames(big, out, stride=a.stride, depth=True,
                                                          poses=True), a.repeat, out)
        st = str(a.stride)
        shutil.rmtree(out)
        t_cli, rss_big, _ = run_rss(CLI, "sens", "export", str(big), str(out), "--stride", st)
        _, rss_small, _ = run_rss(CLI, "sens", "export", str(small), str(out), "--stride", st)
        _, rss_base, _ = run_rss(IMPORTS)
        _, rss_dp, vals = run_rss(DEPTH_PASS, str(big))
        fps = vals["FPS"]
        zraw = timed(lambda: [zlib.decompress(d) for d in depths], a.repeat) / len(depths)

        k = -(-a.frames // a.stride)
        mib = 2**20
        rows = [
            ("cat FILE > /dev/null", f"{t_cat * 1e3:.1f} ms ({size / 1e9 / t_cat:.2f} GB/s)"),
            ("SensReader open (index pass)", f"{t_open * 1e3:.1f} ms"),
            (f"export --stride {a.stride}, in-process", f"{t_exp * 1e3:.1f} ms ({k} frames)"),
            ("  same with --depth --poses", f"{t_exp_dp * 1e3:.1f} ms"),
            (f"export --stride {a.stride}, CLI process", f"{t_cli * 1e3:.1f} ms (with startup)"),
            ("RATIO export / cat", f"{t_exp / t_cat:.3f} in-process, {t_cli / t_cat:.3f} CLI"
                                   " (goal <= 1)"),
            ("peak RSS, export CLI", f"{rss_big / mib:.1f} MiB (bare imports "
                                     f"{rss_base / mib:.1f} MiB)"),
            ("peak RSS, depth pass stride 1", f"{rss_dp / mib:.1f} MiB"),
            ("RATIO peak RSS / file size", f"{rss_big / size:.4f} export, {rss_dp / size:.4f} "
                                           "depth pass"),
            ("RATIO RSS full / 1/10 scan", f"{rss_big / rss_small:.3f} (goal 1: flat)"),
            ("RATIO depth decode, stride 1", f"{fps:.0f} frames per CPU-second (one core); "
                                             f"bare zlib.decompress {1 / zraw:.0f}/s"),
        ]
        for name, value in rows:
            print(f"{name:34s} {value}")


if __name__ == "__main__":
    main()
