"""SQA3D's encoder (its `utils/jpg2mp4.py`, run by OpenCV itself) and ScanNet-like frames for it.

Shared by tests/test_video.py and benchmarks/bench_video.py. As a script it runs under any
Python that has `cv2` (the benchmark drives an old OpenCV in its own venv this way):

    python tests/opencv_reference.py FRAMES_DIR OUT.mp4 [--resized OUT.npy] [--size 224x224]

It writes the mp4 exactly as upstream did (`cv2.imread`, `cv2.resize(img, (W, H))`, i.e.
INTER_LINEAR, `cv2.VideoWriter` with fourcc `mp4v` at 20 fps, BGR frames) and, with
`--resized`, the resized BGR frames before the writer as one (N, H, W, 3) uint8 array, so the
resize can be compared pixel by pixel. It prints one JSON line: OpenCV's version.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

SCANNET_SIZE = (1296, 968)


def natural_frames(n: int, size: tuple[int, int] = SCANNET_SIZE, seed: int = 0,
                   pan: float = 3.0) -> list[np.ndarray]:
    """n RGB frames of one still scene seen by a slowly panning camera.

    Natural-image statistics: a 1/f amplitude spectrum (per channel, partly shared so colours
    correlate), lightly blurred as a camera is, cropped from a wider canvas `pan` pixels further
    right each frame. Flat colours would hide what an encoder does to fine detail.
    """
    w, h = size
    cw = w + int(np.ceil(pan * max(n - 1, 0))) + 2
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(cw)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amp = 1.0 / f * np.exp(-((f / 0.35) ** 2))  # 1/f, then a soft optical low-pass
    amp[0, 0] = 0.0

    def field() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, amp.shape)
        img = np.fft.irfft2(amp * np.exp(1j * phase), s=(h, cw))
        return img / img.std()

    shared = field()
    canvas = np.stack([0.75 * shared + 0.45 * field() for _ in range(3)], axis=-1)
    canvas = 118 + 42 * canvas + np.array([8.0, 0.0, -10.0])
    frames = []
    for k in range(n):
        x = pan * k
        x0 = int(np.floor(x))
        t = x - x0
        crop = (1 - t) * canvas[:, x0:x0 + w] + t * canvas[:, x0 + 1:x0 + 1 + w]
        frames.append(np.clip(np.rint(crop), 0, 255).astype(np.uint8))
    return frames


def write_scene(d: Path, n: int, size: tuple[int, int] = SCANNET_SIZE, seed: int = 0,
                quality: int = 92) -> Path:
    """A scene folder of n `frame-{k}.color.jpg` (JPEG quality 92, 4:2:0 like ScanNet's)."""
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    for k, rgb in enumerate(natural_frames(n, size, seed)):
        Image.fromarray(rgb).save(d / f"frame-{k}.color.jpg", quality=quality, subsampling=2)
    return d


def jpg2mp4(frames_dir: Path, out: Path, size: tuple[int, int] = (224, 224), fps: int = 20,
            resized: Path | None = None) -> str:
    """SQA3D's `utils/jpg2mp4.py` for one scene, with OpenCV; returns `cv2.__version__`."""
    import cv2

    paths = sorted(Path(frames_dir).glob("frame-*.color.jpg"),
                   key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    kept = []
    for p in paths:
        img = cv2.resize(cv2.imread(str(p)), size)
        writer.write(img)
        if resized is not None:
            kept.append(img)
    writer.release()
    if resized is not None:
        np.save(resized, np.stack(kept))
    return cv2.__version__


def decode_rgb(mp4: Path) -> np.ndarray:
    """Every frame of an mp4 as uint8 RGB (N, H, W, 3), decoded by PyAV."""
    import av

    with av.open(str(mp4)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all frames together (one mean squared error); inf when identical."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def detail(frames: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the frames' grey level (mean of the channels):
    how much fine detail (and aliasing) survives."""
    g = frames.astype(np.float32).mean(axis=-1)
    lap = (4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2]
           - g[:, 1:-1, 2:])
    return float(np.abs(lap).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frames_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--resized", type=Path)
    ap.add_argument("--size", default="224x224")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    print(json.dumps({"opencv": jpg2mp4(a.frames_dir, a.out, (w, h), resized=a.resized)}))


if __name__ == "__main__":
    main()
