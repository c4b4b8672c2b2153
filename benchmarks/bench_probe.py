"""How long checking every released video at a run's start takes (issue 28): 707 mp4s of
100 frames (a ScanNet scan of ~2,000 frames kept every 20th, as SQA3D's videos), the header and
the last frame (`video.check_video`) against a full demux (`video.probe_video`, what `pack_lmdb`
does).

    python benchmarks/bench_probe.py [--videos 707] [--frames 100] [--size 64]

The frame size changes the files' bytes, not their headers: the header probe's time depends on
the count of videos and frames. Measured (2 loaded cores): 707 x 100 frames at 64 px 0.65-1.24 s
against 1.4-2.4 s; 707 x 300 frames at 320 px 0.81 s against 7.67 s. The files are in the page
cache (just written), as they are on a second run; a cold disk adds two small reads per video.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from clipbert import video  # noqa: E402


def write_mp4(path: Path, frames: int, size: int, rng: np.random.Generator) -> None:
    """An mp4 like the workflow's encodes: mpeg4 at 20 fps."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=20)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=707)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp, "scene0000_00.mp4")
        write_mp4(first, args.frames, args.size, rng)
        paths = [first] + [Path(tmp, f"scene{i:04d}_00.mp4") for i in range(1, args.videos)]
        for p in paths[1:]:
            p.write_bytes(first.read_bytes())
        for what, fn in (("header (check_video)", lambda p: video.check_video(p, 2)),
                         ("full demux (probe_video)", video.probe_video)):
            start = time.perf_counter()
            for p in paths:
                fn(p)
            took = time.perf_counter() - start
            print(f"{what}: {len(paths)} videos of {args.frames} frames in {took:.2f} s "
                  f"({1000 * took / len(paths):.2f} ms each)")


if __name__ == "__main__":
    main()
