"""Scene frames -> mp4 (SQA3D's own encode, or a faster antialiased one), probing, clip sampling,
decoding.

The `faithful` encode is SQA3D's `utils/jpg2mp4.py`: OpenCV decodes each JPEG at full size
(its libjpeg-turbo) and `cv2.resize` squashes it to 224x224 with INTER_LINEAR (2-tap bilinear,
no antialiasing); then PyAV does what OpenCV's FFmpeg writer does with that BGR frame: swscale
bicubic to yuv420p and `mpeg4` with the writer's settings (`bit_rate = bit_rate_tolerance = 2 x
fps x W x H`, since OpenCV adds half the nominal rate twice; `qmin` 3; a GOP of 12; one thread),
20 fps. On the same FFmpeg the decoded frames are identical to OpenCV's writer's; against OpenCV
4.6 (SQA3D's time) they are as close as two OpenCV releases are to each other
(benchmarks/bench_video.py, tests/test_video.py). PyAV writes rather than `cv2.VideoWriter` for
one FFmpeg in the whole pipeline, errors that name the frame, and an atomic output. The
`improved` encode keeps less aliasing in 0.7x the time: a DCT-domain downscaled decode (Pillow
`draft()`) and one swscale bilinear pass, at a bit rate chosen from a measured curve. Training
decodes every example's video every epoch, so a video is demuxed and decoded once, up to the last
frame needed, and only the frames used are converted to RGB. Clips are picked by upstream
ClipBERT's timestamp arithmetic from each file's own rate, time base and pts.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from PIL import Image

from clipbert.errors import ClipbertError, machine_error
from clipbert.frames import INDEX_NAME
from clipbert.fsutil import atomic_path
from clipbert.progress import progress

PRESETS = ("faithful", "improved")
# What made a video, recorded by the workflow (rule encode_video's params): a new recipe or a
# new revision of one re-encodes the videos of an existing work folder. Revision 1 was the
# draft-decoded encode every preset used before the faithful one followed OpenCV.
ENCODERS = {
    "faithful": "pyav-mpeg4-opencv-jpg2mp4/2",
    "improved": "pyav-mpeg4-draft-bilinear/2",
}


def encoder_key(preset: str) -> str:
    """ENCODERS' recipe with the versions of the libraries that decide the video bytes: PyAV's
    libavcodec (the encoder) and libswscale (the pixel conversion), and the decoder and resizer
    of the frames, OpenCV's wheel for `faithful`, Pillow for `improved`. The `scene` rule's
    `encoder` param, so that an upgrade of either re-encodes instead of mixing old and new videos
    in one LMDB. From installed metadata (no cv2 import: the Snakefile asks at parse time)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    libs = av.library_versions
    frames = (f"opencv {installed('opencv-python-headless')}" if preset == "faithful"
              else f"pillow {installed('pillow')}")
    return (f"{ENCODERS[preset]} libavcodec {'.'.join(map(str, libs['libavcodec']))} "
            f"libswscale {'.'.join(map(str, libs['libswscale']))} {frames}")


# `improved`'s bit rate in bits per pixel per frame (x fps x W x H), from the curve in docs/video.md
# (benchmarks/bench_video.py): at 1.5 `mpeg4` reaches its finest default quantiser on detailed
# 224x224 frames, so more bytes buy nothing; below it PSNR falls ~1 dB per 0.25.
IMPROVED_BPP = 1.5

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


def frame_sources(frames_dir: str | os.PathLike) -> dict[int, str]:
    """Where each kept frame of a scene folder came from, `X.sens: frame N` (N the scan's own
    frame number), as the export's index.json records it; empty for a folder without one. A bad
    frame is then blamed on the scan that holds it, not on its exported copy."""
    try:
        index = json.loads((Path(frames_dir) / INDEX_NAME).read_text())
        return {int(e["k"]): f"{index['source']}: frame {int(e['frame'])}"
                for e in index["frames"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class BadJpeg(ClipbertError):
    """A source JPEG that does not decode; the encoder blames the scan's frame when it knows it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: cannot decode JPEG ({reason})")
        self.path, self.reason = path, reason


def _fit(src: tuple[int, int], size: tuple[int, int], keep_aspect: bool) -> tuple[int, int]:
    """Size of the resized picture inside the (W, H) canvas."""
    if not keep_aspect:
        return size
    sw, sh = src
    scale = min(size[0] / sw, size[1] / sh)
    return max(1, min(size[0], round(sw * scale))), max(1, min(size[1], round(sh * scale)))


def _open_jpeg(path: Path, data: bytes | None, expect: tuple[int, int] | None) -> Image.Image:
    """An opened source JPEG (header read, nothing decoded), its size checked against frame 0's;
    errors name the file."""
    try:
        im = Image.open(io.BytesIO(data) if data is not None else path)
    except (OSError, SyntaxError, ValueError) as e:
        raise BadJpeg(path, str(e)) from None
    if im.format != "JPEG":
        im.close()
        raise ClipbertError(f"{path}: not a JPEG file ({im.format})")
    if expect is not None and im.size != expect:
        im.close()
        raise ClipbertError(
            f"{path}: frame size {im.size[0]}x{im.size[1]} differs from frame 0's "
            f"{expect[0]}x{expect[1]}"
        )
    return im


def faithful_frame(
    path: Path, size: tuple[int, int], keep_aspect: bool = False,
    expect: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """One source JPEG as SQA3D's script handed it to OpenCV's writer: (BGR uint8 (H, W, 3) of
    `size`, source size).

    OpenCV's own calls: the JPEG decoded at full size by its libjpeg-turbo (`cv2.imread`'s
    decoder, on the bytes read once) and `cv2.resize(img, size)`, INTER_LINEAR. OpenCV returns
    a grey-filled picture for a cut-off JPEG instead of failing, so a file without its
    end-of-image marker is refused first. `keep_aspect` (not upstream's) resizes the same way to
    the fitted size and pads right and bottom with black.
    """
    import cv2

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise machine_error(e, path) or ClipbertError(
            f"{path}: cannot read ({e.strerror})") from None
    with _open_jpeg(path, data, expect) as im:
        src = im.size
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise BadJpeg(path, "truncated: no end-of-image marker")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or (bgr.shape[1], bgr.shape[0]) != src:
        raise BadJpeg(path, "OpenCV could not read it")
    inner = _fit(src, size, keep_aspect)
    small = cv2.resize(bgr, inner, interpolation=cv2.INTER_LINEAR)
    if inner != size:
        canvas = np.zeros((size[1], size[0], 3), np.uint8)
        canvas[: inner[1], : inner[0]] = small
        small = canvas
    return small, src


def _load_faithful(
    path: Path, size: tuple[int, int], keep_aspect: bool, expect: tuple[int, int] | None
) -> tuple[av.VideoFrame, tuple[int, int]]:
    """`faithful_frame` converted to yuv420p as OpenCV's FFmpeg writer converts its BGR24 input:
    swscale, SWS_BICUBIC (which filters the chroma subsampling)."""
    bgr, src = faithful_frame(path, size, keep_aspect, expect)
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
    return frame.reformat(format="yuv420p", interpolation="BICUBIC"), src


def _load_improved(
    path: Path, size: tuple[int, int], keep_aspect: bool, expect: tuple[int, int] | None
) -> tuple[av.VideoFrame, tuple[int, int]]:
    """Decode one source JPEG straight to a yuv420p frame of `size`; returns (frame, source size).

    `draft()` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is at least that much
    smaller, which skips most of the IDCT and colour work of a full 1296x968 decode (Pillow picks
    the largest reduction that stays >= the requested size, so it is a no-op below 2x). The rest
    of the bilinear resize and the RGB -> YUV conversion are one swscale pass; only the padded
    `keep_aspect` canvas goes through Pillow. Both low-pass the picture: fewer aliased details
    than upstream's frames.
    """
    try:
        with _open_jpeg(path, None, expect) as im:
            src = im.size
            inner = _fit(src, size, keep_aspect)
            im.draft("RGB", inner)
            rgb = im.convert("RGB")
    except ClipbertError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise BadJpeg(path, str(e)) from None
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


def opencv_bit_rate(fps: float, w: int, h: int) -> int:
    """The bit rate (and tolerance) OpenCV's FFmpeg writer gives `mpeg4`: 2 x fps x W x H.

    It computes `fps * W * H`, sets 1.5 times that when it configures the stream and adds the
    other half again before opening the codec (cap_ffmpeg_impl.hpp); both halves are truncated.
    """
    nominal = min(fps * w * h, (2**31 - 1) / 2)
    rate = int(nominal + 0.5)
    return min(rate + rate // 2 + int(nominal / 2), 2**31 - 1)


def encode_video(
    frames_dir: str | os.PathLike,
    out: str | os.PathLike,
    size: tuple[int, int] = (224, 224),
    fps: float = 20,
    codec: str = "mpeg4",
    keep_aspect: bool = False,
    gop: int | None = None,
    preset: str = "faithful",
) -> dict:
    """Encode a scene folder into an mp4 at `out` (atomically) and return its description.

    `size` is (W, H). By default the aspect is squashed as the published baseline did;
    `keep_aspect` resizes the longer side and pads right/bottom with black (the same corner the
    model pads). `faithful` is SQA3D's encode (OpenCV's resize and writer settings, see the
    module's docstring); `improved` the antialiased draft-decoded one at `IMPROVED_BPP`. The GOP
    is 12 (OpenCV's) unless `gop` is given. Pixel format yuv420p: `mpeg4` accepts odd sizes
    (chroma is rounded up), codecs that do not (libx264) are reported as a clear error.
    """
    w, h = int(size[0]), int(size[1])
    if preset not in PRESETS:
        raise ClipbertError(f"{out}: unknown video preset {preset!r} (one of {', '.join(PRESETS)})")
    if w < 1 or h < 1:
        raise ClipbertError(f"{out}: invalid size {w}x{h} (width and height must be at least 1)")
    if fps <= 0:
        raise ClipbertError(f"{out}: fps must be positive, got {fps}")
    if gop is not None and gop < 1:
        raise ClipbertError(f"{out}: gop must be >= 1, got {gop}")
    paths = list_scene_frames(frames_dir)
    rate = Fraction(fps).limit_denominator(1001)
    faithful = preset == "faithful"
    load = _load_faithful if faithful else _load_improved
    if faithful:
        import cv2

        cv2.setNumThreads(1)  # one core per scene job; the resize of one small frame gains nothing
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
            cc = stream.codec_context
            cc.gop_size = 12 if gop is None else gop
            if faithful:
                # FFmpeg's default of one thread: slice threads would add resync markers
                cc.thread_count = 1
                cc.bit_rate = cc.bit_rate_tolerance = opencv_bit_rate(fps, w, h)
                cc.qmin = 3
            else:
                cc.bit_rate = round(IMPROVED_BPP * fps * w * h)
            src_size, sources = None, frame_sources(frames_dir)
            for k, path in progress(enumerate(paths), str(out), len(paths), unit="frames"):
                try:
                    frame, src_size = load(path, (w, h), keep_aspect, src_size)
                except BadJpeg as e:
                    if k not in sources:
                        raise
                    raise ClipbertError(
                        f"{sources[k]}: cannot decode JPEG ({e.reason}); exported as {path}"
                    ) from None
                frame.pts = k
                frame.time_base = 1 / rate
                try:
                    container.mux(stream.encode(frame))
                except av.FFmpegError as e:
                    raise ClipbertError(
                        f"{out}: codec {codec!r} cannot encode {w}x{h} yuv420p ({e})"
                    ) from None
            container.mux(stream.encode(None))
    return {"n_frames": len(paths), "width": w, "height": h, "fps": fps, "codec": codec,
            "preset": preset}


def _open(src: bytes | str | os.PathLike, name: str) -> av.container.InputContainer:
    """The container of a video; an image (FFmpeg reads a JPEG or PNG, whatever its file name,
    as a one-frame "video" at a made-up 25 fps), a file of no known format and one without a
    video stream are refused."""
    try:
        data = io.BytesIO(src) if isinstance(src, bytes | bytearray | memoryview) else str(src)
        container = av.open(data, mode="r")
    except av.FFmpegError as e:
        raise ClipbertError(f"{name}: cannot open video ({e})") from None
    except OSError as e:
        raise machine_error(e, name) or ClipbertError(f"{name}: cannot open ({e})") from None
    fmt = container.format
    if fmt.name.endswith("_pipe") or fmt.name in _IMAGE_FORMATS:
        container.close()
        raise ClipbertError(f"{name}: not a video but an image ({fmt.long_name}); put the "
                            "scene's mp4 here")
    if not container.streams.video:
        container.close()
        raise ClipbertError(f"{name}: no video stream")
    return container


# FFmpeg's demuxers of still images besides the `*_pipe` ones (jpeg_pipe, png_pipe, ...).
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})


@dataclass(frozen=True)
class VideoTiming:
    """What clip sampling reads from a video stream: rate, time base, duration and every pts.

    `pts` are in presentation order (frame k of the decoder's output has `pts[k]`), `duration`
    in time-base units.
    """

    rate: Fraction
    time_base: Fraction
    duration: int
    pts: tuple[int, ...]

    @property
    def n_frames(self) -> int:
        return len(self.pts)


def _demux(
    container: av.container.InputContainer, name: str
) -> tuple[list[av.Packet], VideoTiming]:
    """All packets of the video stream in decoding order, and the stream's timing.

    Only the container is read, nothing is decoded. The duration is the stream's, or when the
    container has none (Matroska, NUT) the span of the pts plus the last frame's own duration
    (the mean spacing, or one tick for a lone frame, where the packet has none). The rate is the
    stream's `average_rate`, or when it has none (NUT, MPEG-TS) frames per second of duration.
    Upstream fell back to plain frame indices without a duration and failed without a rate;
    here one arithmetic serves every video.
    """
    stream = container.streams.video[0]
    packets = []
    samples = 0  # what the container holds, empty samples too (the end's flush packet not)
    try:
        for p in container.demux(stream):
            samples += bool(p.size or p.pts is not None)
            if p.size:
                packets.append(p)
    except av.FFmpegError as e:
        raise ClipbertError(f"{name}: cannot read video ({e})") from None
    if not packets:
        raise ClipbertError(f"{name}: the video stream has no frames")
    if stream.frames > samples:
        raise ClipbertError(f"{name}: truncated: its header lists {stream.frames} frames, the "
                            f"file holds {samples}")
    if any(p.pts is None for p in packets):
        raise ClipbertError(
            f"{name}: a frame without a presentation timestamp (a raw stream? mux it into mp4)"
        )
    order = sorted(range(len(packets)), key=lambda i: packets[i].pts)
    pts = tuple(int(packets[i].pts) for i in order)
    dup = next((a for a, b in zip(pts, pts[1:], strict=False) if a == b), None)
    if dup is not None:
        raise ClipbertError(f"{name}: two frames share the presentation timestamp {dup}")
    time_base = Fraction(stream.time_base)
    duration = stream.duration
    if not duration or duration <= 0:
        last = packets[order[-1]].duration
        if not last or last <= 0:
            last = max(round((pts[-1] - pts[0]) / (len(pts) - 1)), 1) if len(pts) > 1 else 1
        duration = pts[-1] - pts[0] + last
    rate = stream.average_rate
    rate = Fraction(rate) if rate else Fraction(len(pts)) / (duration * time_base)
    return packets, VideoTiming(rate, time_base, int(duration), pts)


def probe_video(path_or_bytes: bytes | str | os.PathLike, name: str | None = None) -> dict:
    """Size, rate, time base, duration, first pts, codec and frame count (demuxed, not decoded).

    `rate` is the exact fraction clip sampling uses (`fps` the same as a float), `duration` is
    in `time_base` units and `start_pts` is the first frame's presentation timestamp.
    """
    name = name or (str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else "<mp4 bytes>")
    with _open(path_or_bytes, name) as container:
        stream = container.streams.video[0]
        _, t = _demux(container, name)
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(t.rate),
            "rate": f"{t.rate.numerator}/{t.rate.denominator}",
            "time_base": f"{t.time_base.numerator}/{t.time_base.denominator}",
            "duration": t.duration,
            "start_pts": t.pts[0],
            "codec": stream.codec_context.name,
            "n_frames": t.n_frames,
        }


def check_video(path: str | os.PathLike, min_frames: int = 1) -> int:
    """Refuse what is not a usable video, cheaply: an image, no video stream, no frames, a copy
    cut short, fewer than `min_frames` (one clip's frames). Reads the header and the last frame
    where the container counts its frames (mp4, mov), else demuxes; returns the frame count.
    For a run's start, where every released video is checked: 707 of 300 frames in 0.8 s
    (benchmarks/bench_probe.py), a full demux 7.7 s."""
    name = str(path)
    with _open(path, name) as container:
        stream = container.streams.video[0]
        n = stream.frames if container.format.name.startswith("mov,") else 0
        if n > 0 and not _last_frame_there(container, stream):
            n = 0
    if n <= 0:  # no count in the header, or not all there: demuxed, naming what is wrong
        with _open(path, name) as container:
            n = _demux(container, name)[1].n_frames
    if n < min_frames:
        raise ClipbertError(f"{name}: {n} frame{'s' if n != 1 else ''}, fewer than one clip "
                            f"({min_frames} frames); put the scene's whole video here")
    return n


def _last_frame_there(container: av.container.InputContainer, stream: av.VideoStream) -> bool:
    """Whether the last frame the header lists is in the file: one seek to it and one packet,
    so that a copy cut short is found without reading the whole file."""
    try:
        container.seek((stream.start_time or 0) + (stream.duration or 0), stream=stream,
                       backward=True, any_frame=True)
        return any(p.size for p in container.demux(stream))
    except av.FFmpegError:
        return False


def linspace_f32(end: float, steps: int) -> np.ndarray:
    """`torch.linspace(0, end, steps)` as upstream computed it: float32, one rounding per value.

    Torch takes `step = end / (steps - 1)` in float32, counts the first half up from 0 and the
    second half down from `end` (a fused multiply-add, so each value is rounded once); here the
    products and differences are exact in float64 and rounded to float32 once. Plain float64
    `np.linspace` truncates differently when a value lands within float32 rounding of an integer.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return np.zeros(1, np.float32)
    e = float(np.float32(end))
    step = float(np.float32(e / (steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    return np.where(i < steps // 2, step * i, e - step * (steps - 1 - i)).astype(np.float32)


def clip_frame_indices(
    pts: Sequence[int],
    duration: int,
    rate: float,
    num_frm: int,
    fps: float,
    n_clips: int,
    train: bool,
    rng: np.random.Generator | None = None,
    name: str = "video",
) -> list[list[int]]:
    """Presentation-order frame indices of each clip, by upstream's timestamp arithmetic.

    `pts` are the frames' timestamps in presentation order, `duration` the stream's duration in
    the same units and `rate` its frame rate. A clip spans `clip_size = num_frm / fps * rate`
    frames; with `delta = max(n - clip_size, 0)` training clips start at `uniform(0, delta)`
    (one draw from `rng` per clip), evaluation clip i of N at `delta * i / N`; `end = start +
    clip_size - 1`. With `tick = duration / n` the clip keeps the frames whose pts lie in
    `[int(start * tick), int(end * tick)]` plus the first frame past that, and takes
    `linspace_f32(clip_size - 1, num_frm)`, clamped to that list, truncated.

    So the result depends on the time base, not only on the rate: with a fine one (1/10240 in
    this project's 20 fps mp4s) a clip's first frame is in effect the first at or after `start`,
    with time base 1/rate the one at or before it (what plain frame arithmetic gives). Upstream
    took pts as they are, which assumes a stream starting at 0; here they count from the first
    frame, so that a stream starting later (an mp4 edit list, MPEG-TS) is sampled as the same
    frames shifted, not with clips cut short.
    """
    n = len(pts)
    if n < 1:
        raise ClipbertError(f"{name}: cannot sample clips from a video of 0 frames")
    if num_frm < 1 or n_clips < 1 or fps <= 0 or rate <= 0 or duration <= 0:
        raise ClipbertError(
            f"{name}: invalid sampling: num_frm={num_frm}, n_clips={n_clips}, fps={fps}, "
            f"rate={rate}, duration={duration}"
        )
    rel = np.asarray(pts, dtype=np.int64) - int(pts[0])
    clip_size = num_frm / fps * rate
    delta = max(n - clip_size, 0)
    tick = duration / n
    offsets = linspace_f32(clip_size - 1, num_frm)
    if train and rng is None:
        rng = np.random.default_rng()
    clips = []
    for i in range(n_clips):
        start = rng.uniform(0.0, delta) if train else delta * i / n_clips
        end = start + clip_size - 1
        lo, hi = int(start * tick), int(end * tick)
        first = int(np.searchsorted(rel, lo, side="left"))
        if first == n:
            raise ClipbertError(
                f"{name}: clip {i} starts at frame {start:.3f}, after the last frame's timestamp "
                f"({n} frames, clip of {clip_size:g})"
            )
        past = max(int(np.searchsorted(rel, hi, side="right")), first)
        last = min(past, n - 1)
        idx = np.clip(offsets, np.float32(0), np.float32(last - first)).astype(np.int64)
        clips.append([first + int(v) for v in idx])
    return clips


def _decode_open(
    container: av.container.InputContainer,
    indices: Sequence[int],
    name: str,
    packets: Iterable[av.Packet] | None = None,
) -> np.ndarray:
    """Decode from the start once, stopping after the last needed frame; RGB only where needed.

    Frames are counted in the decoder's output order, which is presentation order. `packets`
    (already demuxed, in decoding order) spare a second pass over the container.
    """
    if len(indices) == 0:
        raise ClipbertError(f"{name}: no frame indices to decode")
    wanted = sorted(set(int(i) for i in indices))
    if wanted[0] < 0:
        raise ClipbertError(f"{name}: negative frame index {wanted[0]}")
    last = wanted[-1]
    need = set(wanted)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    frames = container.decode(stream) if packets is None else _decode_packets(stream, packets)
    got: dict[int, np.ndarray] = {}
    k = -1
    try:
        for frame in frames:
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


def _decode_packets(
    stream: av.VideoStream, packets: Iterable[av.Packet]
) -> Iterator[av.VideoFrame]:
    """Frames of demuxed packets, then the ones the decoder still holds."""
    for p in packets:
        yield from stream.decode(p)
    yield from stream.decode(None)


class Clips(NamedTuple):
    """One video's sampled clips: frames (n_clips, num_frm, H, W, 3), their presentation-order
    indices (n_clips lists of num_frm) and the timing they were computed from."""

    frames: np.ndarray
    indices: list[list[int]]
    timing: VideoTiming


def read_clips(
    mp4: bytes | str | os.PathLike,
    *,
    num_frm: int,
    fps: float,
    n_clips: int,
    train: bool,
    rng: np.random.Generator | None = None,
    name: str | None = None,
    video_fps: float | None = None,
) -> Clips:
    """`sample_clips` with the indices and the timing (rate, time base) it used.

    The container is demuxed once (pts, no decoding), the indices computed by
    `clip_frame_indices` from the video's own rate, or `video_fps` when given, and the same
    packets decoded up to the last frame needed.
    """
    name = name or (str(mp4) if not isinstance(mp4, bytes) else "<mp4 bytes>")
    if video_fps is not None and video_fps <= 0:
        raise ClipbertError(f"{name}: video_fps must be positive, got {video_fps}")
    with _open(mp4, name) as container:
        packets, timing = _demux(container, name)
        rate = float(timing.rate) if video_fps is None else float(video_fps)
        clips = clip_frame_indices(timing.pts, timing.duration, rate, num_frm, fps, n_clips,
                                   train, rng, name)
        flat = [i for clip in clips for i in clip]
        frames = _decode_open(container, flat, name, packets)
    return Clips(frames.reshape(n_clips, num_frm, *frames.shape[1:]), clips, timing)


def sample_clips(
    mp4: bytes | str | os.PathLike,
    *,
    num_frm: int,
    fps: float,
    n_clips: int,
    train: bool,
    rng: np.random.Generator | None = None,
    name: str | None = None,
    video_fps: float | None = None,
) -> np.ndarray:
    """uint8 frames (n_clips, num_frm, H, W, 3) of one video as upstream's decoder picks them.

    The rate, frame count, duration and pts come from the file, so a video is sampled by its
    own rate and time base; `video_fps` overrides the rate (None: the file's `average_rate`).
    Training clips draw their starts from `rng`. See `clip_frame_indices` for the arithmetic.
    """
    return read_clips(mp4, num_frm=num_frm, fps=fps, n_clips=n_clips, train=train, rng=rng,
                      name=name, video_fps=video_fps).frames
