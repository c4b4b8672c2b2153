"""Scene frames -> mp4 (the published ClipBERT/SQA3D preset), probing, clip sampling, decoding.

The faithful preset (spec pipeline.md §4): 224x224, bilinear, aspect squashed, 20 fps, MPEG-4
Part 2 (`mpeg4`) in mp4, frames in index order. Speed matters twice: encoding reads ~1.2 M source
frames (so JPEGs are decoded with DCT-domain downscaling), and training decodes every example's
video every epoch (so a video is decoded once, up to the last frame needed, and only the frames
used are converted to RGB).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path
from clipbert.progress import progress

FRAME_RE = re.compile(r"^frame-(\d+)\.color\.jpg$")


def list_scene_frames(frames_dir: str | os.PathLike) -> list[Path]:
    """The `frame-{k}.color.jpg` files of a scene folder in index order; other files are ignored.

    A scene is a folder of frames numbered 0..K-1 without gaps; anything else is an error, so a
    stray file or an empty folder never becomes a video.
    """
    d = Path(frames_dir)
    if not d.is_dir():
        raise ClipbertError(f"{d}: not a folder of frame-{{k}}.color.jpg files")
    found: dict[int, Path] = {}
    for p in d.iterdir():
        m = FRAME_RE.match(p.name)
        if not m:
            continue
        k = int(m.group(1))
        if str(k) != m.group(1):
            raise ClipbertError(f"{p}: zero-padded frame name; expected frame-{k}.color.jpg")
        found[k] = p
    if not found:
        raise ClipbertError(f"{d}: no frame-{{k}}.color.jpg files (not a scene folder)")
    missing = next((k for k in range(len(found)) if k not in found), None)
    if missing is not None:
        raise ClipbertError(
            f"{d}: frame-{missing}.color.jpg is missing "
            "(frames must be numbered 0..K-1 without gaps)"
        )
    return [found[k] for k in range(len(found))]


def _fit(src: tuple[int, int], size: tuple[int, int], keep_aspect: bool) -> tuple[int, int]:
    """Size of the resized picture inside the (W, H) canvas."""
    if not keep_aspect:
        return size
    sw, sh = src
    scale = min(size[0] / sw, size[1] / sh)
    return max(1, min(size[0], round(sw * scale))), max(1, min(size[1], round(sh * scale)))


def _load_frame(
    path: Path, size: tuple[int, int], keep_aspect: bool, expect: tuple[int, int] | None
) -> tuple[av.VideoFrame, tuple[int, int]]:
    """Decode one source JPEG straight to a yuv420p frame of `size`; returns (frame, source size).

    `draft()` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is at least that much
    smaller, which skips most of the IDCT and colour work of a full 1296x968 decode (Pillow picks
    the largest reduction that stays >= the requested size, so it is a no-op below 2x). The rest
    of the bilinear resize and the RGB -> YUV conversion are one swscale pass; only the padded
    `keep_aspect` canvas goes through Pillow.
    """
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                raise ClipbertError(f"{path}: not a JPEG file ({im.format})")
            src = im.size
            if expect is not None and src != expect:
                raise ClipbertError(
                    f"{path}: frame size {src[0]}x{src[1]} differs from frame 0's "
                    f"{expect[0]}x{expect[1]}"
                )
            inner = _fit(src, size, keep_aspect)
            im.draft("RGB", inner)
            rgb = im.convert("RGB")
    except ClipbertError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ClipbertError(f"{path}: cannot decode JPEG ({e})") from None
    if inner == size:
        frame = av.VideoFrame.from_image(rgb).reformat(
            width=size[0], height=size[1], format="yuv420p", interpolation="BILINEAR"
        )
        return frame, src
    if rgb.size != inner:
        rgb = rgb.resize(inner, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", size)
    canvas.paste(rgb, (0, 0))
    return av.VideoFrame.from_image(canvas).reformat(format="yuv420p"), src


def encode_video(
    frames_dir: str | os.PathLike,
    out: str | os.PathLike,
    size: tuple[int, int] = (224, 224),
    fps: float = 20,
    codec: str = "mpeg4",
    keep_aspect: bool = False,
    gop: int | None = None,
) -> dict:
    """Encode a scene folder into an mp4 at `out` (atomically) and return its description.

    `size` is (W, H). By default the aspect is squashed as the published baseline did;
    `keep_aspect` resizes the longer side and pads right/bottom with black (the same corner the
    model pads). The bit rate is fps*W*H bits/s and the GOP 12 unless `gop` is given, which is
    what OpenCV's `mp4v` writer used upstream. Pixel format yuv420p: `mpeg4` accepts odd sizes
    (chroma is rounded up), codecs that do not (libx264) are reported as a clear error.
    """
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ClipbertError(f"{out}: invalid size {w}x{h} (width and height must be at least 1)")
    if fps <= 0:
        raise ClipbertError(f"{out}: fps must be positive, got {fps}")
    if gop is not None and gop < 1:
        raise ClipbertError(f"{out}: gop must be >= 1, got {gop}")
    paths = list_scene_frames(frames_dir)
    rate = Fraction(fps).limit_denominator(1001)
    out = Path(out)
    with atomic_path(out) as tmp:
        try:
            container = av.open(str(tmp), mode="w", format="mp4")
        except av.FFmpegError as e:
            raise ClipbertError(f"{out}: cannot create mp4 ({e})") from None
        with container:
            try:
                stream = container.add_stream(codec, rate=rate)
            except (av.FFmpegError, ValueError) as e:
                raise ClipbertError(f"{out}: unknown or unusable codec {codec!r} ({e})") from None
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = round(fps * w * h)
            if gop is not None:
                stream.codec_context.gop_size = gop
            src_size = None
            for k, path in progress(enumerate(paths), str(out), len(paths), unit="frames"):
                frame, src_size = _load_frame(path, (w, h), keep_aspect, src_size)
                frame.pts = k
                frame.time_base = 1 / rate
                try:
                    container.mux(stream.encode(frame))
                except av.FFmpegError as e:
                    raise ClipbertError(
                        f"{out}: codec {codec!r} cannot encode {w}x{h} yuv420p ({e})"
                    ) from None
            container.mux(stream.encode(None))
    return {"n_frames": len(paths), "width": w, "height": h, "fps": fps, "codec": codec}


def _open(src: bytes | str | os.PathLike, name: str) -> av.container.InputContainer:
    try:
        data = io.BytesIO(src) if isinstance(src, bytes | bytearray | memoryview) else str(src)
        container = av.open(data, mode="r")
    except (av.FFmpegError, OSError) as e:
        raise ClipbertError(f"{name}: cannot open video ({e})") from None
    if not container.streams.video:
        container.close()
        raise ClipbertError(f"{name}: no video stream")
    return container


def _count_frames(container: av.container.InputContainer, name: str) -> int:
    """Frame count from the container index, or by demuxing (no decoding) when it has none."""
    stream = container.streams.video[0]
    if stream.frames > 0:
        return int(stream.frames)
    try:
        n = sum(1 for p in container.demux(stream) if p.size)
    except av.FFmpegError as e:
        raise ClipbertError(f"{name}: cannot read video ({e})") from None
    container.seek(0)
    return n


def probe_video(path_or_bytes: bytes | str | os.PathLike, name: str | None = None) -> dict:
    """Width, height, fps, codec and frame count, read from the container (nothing decoded)."""
    name = name or (str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else "<mp4 bytes>")
    with _open(path_or_bytes, name) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(rate) if rate else None,
            "codec": stream.codec_context.name,
            "n_frames": _count_frames(container, name),
        }


def clip_frame_indices(
    n_frames: int,
    video_fps: float,
    num_frm: int,
    fps: float,
    n_clips: int,
    train: bool,
    rng: np.random.Generator | None = None,
) -> list[list[int]]:
    """Source-frame indices of each clip, as ClipBERT samples them (spec model.md §2).

    A clip spans `clip_size = num_frm / fps * video_fps` frames; with `delta = max(n - clip_size,
    0)` training clips start at `uniform(0, delta)` (drawn from `rng`), evaluation clip i of N at
    `delta * i / N`. The `num_frm` frames are `linspace(start, start + clip_size - 1, num_frm)`,
    clamped to the video, then rounded down (upstream did the same in torch float32; float64 here
    differs only when a value lands within float32 rounding of an integer).
    """
    if n_frames < 1:
        raise ClipbertError(f"cannot sample clips from a video of {n_frames} frames")
    if num_frm < 1 or n_clips < 1 or fps <= 0 or video_fps <= 0:
        raise ClipbertError(
            f"invalid sampling: num_frm={num_frm}, n_clips={n_clips}, fps={fps}, "
            f"video_fps={video_fps}"
        )
    clip_size = num_frm / fps * video_fps
    delta = max(n_frames - clip_size, 0.0)
    if train and rng is None:
        rng = np.random.default_rng()
    clips = []
    for i in range(n_clips):
        start = rng.uniform(0.0, delta) if train else delta * i / n_clips
        idx = np.linspace(start, start + clip_size - 1, num_frm)
        idx = np.floor(np.clip(idx, 0, n_frames - 1)).astype(np.int64)
        clips.append([int(v) for v in idx])
    return clips


def _decode_open(
    container: av.container.InputContainer, indices: Sequence[int], name: str
) -> np.ndarray:
    """Decode from the start once, stopping after the last needed frame; RGB only where needed."""
    if len(indices) == 0:
        raise ClipbertError(f"{name}: no frame indices to decode")
    wanted = sorted(set(int(i) for i in indices))
    if wanted[0] < 0:
        raise ClipbertError(f"{name}: negative frame index {wanted[0]}")
    last = wanted[-1]
    need = set(wanted)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    got: dict[int, np.ndarray] = {}
    k = -1
    try:
        for frame in container.decode(stream):
            k += 1
            if k in need:
                got[k] = frame.to_ndarray(format="rgb24")
            if k >= last:
                break
    except av.FFmpegError as e:
        raise ClipbertError(f"{name}: cannot decode video at frame {k + 1} ({e})") from None
    if k < last:
        raise ClipbertError(f"{name}: video ends after {k + 1} frames, frame {last} was asked for")
    return np.stack([got[int(i)] for i in indices])


def decode_frames(
    mp4: bytes | str | os.PathLike, indices: Sequence[int], name: str | None = None
) -> np.ndarray:
    """uint8 RGB frames (len(indices), H, W, 3) in the order of `indices` (repeats allowed).

    The video is decoded at most once, in order, and stops after the largest index: with the
    sparse clips ClipBERT samples that is cheaper than a seek per clip (the mpeg4 GOP is 12).
    """
    name = name or (str(mp4) if not isinstance(mp4, bytes) else "<mp4 bytes>")
    with _open(mp4, name) as container:
        return _decode_open(container, indices, name)


def sample_clips(
    mp4: bytes | str | os.PathLike,
    *,
    num_frm: int,
    fps: float,
    video_fps: float,
    n_clips: int,
    train: bool,
    rng: np.random.Generator | None = None,
    name: str | None = None,
) -> np.ndarray:
    """uint8 frames (n_clips, num_frm, H, W, 3) of one video, opening and decoding it once."""
    name = name or (str(mp4) if not isinstance(mp4, bytes) else "<mp4 bytes>")
    with _open(mp4, name) as container:
        n = _count_frames(container, name)
        clips = clip_frame_indices(n, video_fps, num_frm, fps, n_clips, train, rng)
        flat = [i for clip in clips for i in clip]
        frames = _decode_open(container, flat, name)
    return frames.reshape(n_clips, num_frm, *frames.shape[1:])

