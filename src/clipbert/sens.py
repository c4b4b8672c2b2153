"""ScanNet `.sens` (version 4) reader and writer that stream instead of loading the whole file.

A scan is 0.6 GB on average and up to several GB; the official tools read it all into memory.
Here one pass over the 96-byte frame heads (seeking over the payloads) builds a compact table,
after which any frame's payload is read by number with `os.pread`. Memory therefore grows only
with the frame count (about 100 bytes a frame), never with the payload sizes.

Layout (little-endian, packed, as ScanNet's SensReader writes it): a 304 + N byte header, F
frame records (96-byte head + colour payload + depth payload), then either EOF (old writers) or
a uint64 IMU count and that many 128-byte IMU records. Bytes after the IMU records are ignored
with a warning, as ScanNet's own reader ignores them. Frame numbers in messages are 0-based.
"""

from __future__ import annotations

import enum
import io
import json
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipbert.errors import ClipbertError, machine_error
from clipbert.fsutil import atomic_open, atomic_path
from clipbert.progress import Progress

SENS_VERSION = 4
FRAME_HEAD_SIZE = 96
IMU_RECORD_SIZE = 128
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ColorCompression(enum.IntEnum):
    """The int32 colour compression enum of the header."""

    UNKNOWN = -1
    RAW = 0
    PNG = 1
    JPEG = 2


class DepthCompression(enum.IntEnum):
    """The int32 depth compression enum; OCCI is known but has no public decoder."""

    UNKNOWN = -1
    RAW = 0
    ZLIB = 1
    OCCI = 2


COLOR_JPEG = int(ColorCompression.JPEG)
_COLOR_DECODABLE = frozenset({0, 1, 2})
_DEPTH_KNOWN = frozenset({0, 1, 2})
DEPTH_ZLIB = int(DepthCompression.ZLIB)

# version u32, name length u64 | 4 matrices | enums i32 x2, sizes u32 x4, shift f32, frames u64
_HEAD_A = struct.Struct("<IQ")
_HEAD_B = struct.Struct("<64f2i4IfQ")
_FRAME_HEAD = struct.Struct("<16f4Q")
_IMU = struct.Struct("<15dQ")
_U64 = struct.Struct("<Q")
_FRAME_DTYPE = np.dtype(
    [
        ("pose", "<f4", (4, 4)),
        ("color_timestamp", "<u8"),
        ("depth_timestamp", "<u8"),
        ("color_size", "<u8"),
        ("depth_size", "<u8"),
    ]
)
assert _FRAME_DTYPE.itemsize == FRAME_HEAD_SIZE == _FRAME_HEAD.size
assert _IMU.size == IMU_RECORD_SIZE


def _eye() -> np.ndarray:
    return np.eye(4, dtype=np.float32)


@dataclass
class SensHeader:
    """Everything before the first frame record; defaults are those of a ScanNet scan."""

    version: int = SENS_VERSION
    sensor_name: str = "StructureSensor"
    intrinsic_color: np.ndarray = field(default_factory=_eye)
    extrinsic_color: np.ndarray = field(default_factory=_eye)
    intrinsic_depth: np.ndarray = field(default_factory=_eye)
    extrinsic_depth: np.ndarray = field(default_factory=_eye)
    color_compression: int = COLOR_JPEG
    depth_compression: int = DEPTH_ZLIB
    color_width: int = 1296
    color_height: int = 968
    depth_width: int = 640
    depth_height: int = 480
    depth_shift: float = 1000.0
    num_frames: int = 0

    @property
    def size(self) -> int:
        """Byte size of the header on disk."""
        return _HEAD_A.size + len(self.sensor_name.encode()) + _HEAD_B.size


@dataclass
class SensFrame:
    """One frame record: pose, timestamps (microseconds) and the two compressed payloads."""

    camera_to_world: np.ndarray = field(default_factory=_eye)
    color_timestamp: int = 0
    depth_timestamp: int = 0
    color_bytes: bytes = b""
    depth_bytes: bytes = b""


@dataclass
class ImuRecord:
    """One 128-byte IMU record (five float64 3-vectors and a timestamp)."""

    rotation_rate: tuple[float, float, float] = (0.0, 0.0, 0.0)
    acceleration: tuple[float, float, float] = (0.0, 0.0, 0.0)
    magnetic_field: tuple[float, float, float] = (0.0, 0.0, 0.0)
    attitude: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gravity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    timestamp: int = 0


def _mat(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(4, 4)


def _mat16(m: np.ndarray, what: str) -> list[float]:
    a = np.asarray(m, dtype=np.float32)
    if a.shape != (4, 4):
        raise ClipbertError(f"{what} must be a 4x4 matrix, got shape {a.shape}")
    return a.ravel().tolist()


def _vec3(v: Sequence[float], what: str) -> list[float]:
    a = np.asarray(v, dtype=np.float64).ravel()
    if a.shape != (3,):
        raise ClipbertError(f"IMU {what} must have 3 values, got {a.shape[0]}")
    return a.tolist()


def pack_header(header: SensHeader) -> bytes:
    """The header bytes exactly as ScanNet's C++ writer lays them out."""
    name = header.sensor_name.encode()
    mats = []
    for attr in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        mats += _mat16(getattr(header, attr), attr)
    return (
        _HEAD_A.pack(header.version, len(name))
        + name
        + _HEAD_B.pack(
            *mats,
            header.color_compression,
            header.depth_compression,
            header.color_width,
            header.color_height,
            header.depth_width,
            header.depth_height,
            header.depth_shift,
            header.num_frames,
        )
    )


def write_sens(
    path: str | os.PathLike,
    header: SensHeader,
    frames: Iterable[SensFrame],
    imu: Sequence[ImuRecord] | None = (),
) -> None:
    """Write a `.sens` file, streaming `frames` one at a time, atomically.

    Payloads are written as given (not validated), so tests can build deliberately bad files.
    `imu=None` imitates the older writers that stop right after the frames; `()` writes an IMU
    count of 0. The number of frames must equal `header.num_frames`, else nothing is written.
    """
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        fh.write(pack_header(header))
        n = 0
        for frame in frames:
            pose = _mat16(frame.camera_to_world, f"{path}: frame {n}: camera_to_world")
            color, depth = bytes(frame.color_bytes), bytes(frame.depth_bytes)
            fh.write(
                _FRAME_HEAD.pack(
                    *pose, frame.color_timestamp, frame.depth_timestamp, len(color), len(depth)
                )
            )
            fh.write(color)
            fh.write(depth)
            n += 1
        if n != header.num_frames:
            raise ClipbertError(
                f"{path}: header says {header.num_frames} frames but {n} were given"
            )
        if imu is not None:
            fh.write(_U64.pack(len(imu)))
            for rec in imu:
                fh.write(
                    _IMU.pack(
                        *_vec3(rec.rotation_rate, "rotation_rate"),
                        *_vec3(rec.acceleration, "acceleration"),
                        *_vec3(rec.magnetic_field, "magnetic_field"),
                        *_vec3(rec.attitude, "attitude"),
                        *_vec3(rec.gravity, "gravity"),
                        rec.timestamp,
                    )
                )


def encode_depth(depth: np.ndarray, level: int = 6) -> bytes:
    """zlib-compress an HxW uint16 depth image as ScanNet stores it (little-endian samples)."""
    a = np.asarray(depth)
    if a.ndim != 2 or a.dtype != np.uint16:
        raise ClipbertError(f"depth must be a 2-D uint16 array, got {a.dtype} {a.shape}")
    return zlib.compress(a.astype("<u2", copy=False).tobytes(), level)


def decode_depth(
    data: bytes, width: int, height: int, compression: int = DEPTH_ZLIB, where: str = "depth"
) -> np.ndarray:
    """Inverse of `encode_depth` (also raw uint16); `where` prefixes error messages."""
    raw, problem = _depth_samples(data, width, height, compression)
    if raw is None:
        raise ClipbertError(f"{where}: {problem}")
    return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.uint16)


def _depth_samples(data: bytes, width: int, height: int,
                   compression: int) -> tuple[bytes | None, str]:
    """The raw little-endian samples of a depth payload, or None and what is wrong with it."""
    want = width * height * 2
    if compression == DepthCompression.ZLIB:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(data, want + 1)
        except zlib.error as e:
            return None, f"corrupt zlib depth payload ({e})"
        if len(raw) <= want and not d.eof:
            # Output stopped short of the limit, so all input was consumed without an end.
            return None, "corrupt zlib depth payload (stream is truncated)"
        if len(raw) != want:
            got = f"{len(raw)}" if len(raw) <= want else f"more than {want}"
            return None, f"depth inflates to {got} bytes, expected {want} ({width}x{height}x2)"
        return raw, ""
    if compression == DepthCompression.RAW:
        if len(data) != want:
            return None, f"raw depth has {len(data)} bytes, expected {want} ({width}x{height}x2)"
        return data, ""
    return None, f"cannot decode depth compression {_enum_name(DepthCompression, compression)}"


def _enum_name(kind: type[enum.IntEnum], value: int) -> str:
    try:
        return kind(value).name.lower()
    except ValueError:
        return f"unknown ({value})"


def is_lost(pose: np.ndarray) -> bool:
    """Lost tracking: ScanNet writes -inf into every entry; treat any non-finite entry so."""
    return not bool(np.isfinite(pose).all())


def _f32_list(a: np.ndarray) -> list:
    """float32 values as the shortest decimals that read back to the same float32."""
    return [[float(str(v)) for v in row] for row in np.asarray(a, dtype=np.float32)]


class SensReader:
    """Random access to a `.sens` file after one streaming pass over the frame heads.

    Opening validates the header, every frame head (payload sizes within the file, JPEG SOI) and
    the ending. Payloads are only read when asked for, so a 3 GB scan costs a few hundred KB.
    `check_jpeg_start=False` leaves the SOI to the caller (`check_file` reports every bad frame
    instead of the first); `warn=False` keeps the trailing-bytes warning to the caller.
    `partial=True` opens a file cut short too: the frames before the cut are readable
    (`readable_frames`) and `cut` holds the one line that a plain open raises.
    """

    def __init__(self, path: str | os.PathLike, *, check_jpeg_start: bool = True,
                 warn: bool = True, partial: bool = False) -> None:
        self.path = Path(path)
        self._check_jpeg_start = check_jpeg_start
        self._partial = partial
        self.cut: str | None = None
        self.trailing_bytes = 0
        try:
            self._fh = open(self.path, "rb", buffering=0)
        except OSError as e:
            raise machine_error(e, path) or ClipbertError(
                f"{path}: cannot open ({e.strerror})") from None
        try:
            self._fd = self._fh.fileno()
            self.file_size = os.fstat(self._fd).st_size
            self.header = self._read_header()
            self._heads, self._offsets, self.imu_offset, self.imu_count = self._scan()
        except BaseException:
            self._fh.close()
            raise
        if warn and self.trailing_bytes:
            print(f"warning: {self.trailing_message()}", file=sys.stderr, flush=True)

    def trailing_message(self) -> str:
        """The note on bytes after the IMU section (only meaningful when there are some)."""
        return (f"{self.path}: {self.trailing_bytes} bytes after the IMU section ignored "
                "(ScanNet's reader ignores them too)")

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> SensReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    # -- parsing --------------------------------------------------------------------------------

    def _read(self, n: int, offset: int, what: str) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise ClipbertError(
                f"{self.path}: {what}: truncated file ({n} bytes needed at offset {offset}, "
                f"file has {self.file_size})"
            )
        return data

    def _read_header(self) -> SensHeader:
        version, name_len = _HEAD_A.unpack(self._read(_HEAD_A.size, 0, "header"))
        if version != SENS_VERSION:
            raise ClipbertError(f"{self.path}: header: version {version}, only 4 is supported")
        if name_len > 4096:
            raise ClipbertError(
                f"{self.path}: header: sensor name length {name_len} is implausible "
                "(not a .sens file?)"
            )
        name = self._read(name_len, _HEAD_A.size, "header")
        vals = _HEAD_B.unpack(self._read(_HEAD_B.size, _HEAD_A.size + name_len, "header"))
        m = vals[:64]
        cc, dc, cw, ch, dw, dh, shift, nf = vals[64:]
        if cc not in _COLOR_DECODABLE:
            raise ClipbertError(f"{self.path}: header: unknown colour compression type {cc}")
        if dc not in _DEPTH_KNOWN:
            raise ClipbertError(f"{self.path}: header: unknown depth compression type {dc}")
        return SensHeader(
            version=version,
            sensor_name=name.decode("utf-8", errors="replace"),
            intrinsic_color=_mat(m[0:16]),
            extrinsic_color=_mat(m[16:32]),
            intrinsic_depth=_mat(m[32:48]),
            extrinsic_depth=_mat(m[48:64]),
            color_compression=cc,
            depth_compression=dc,
            color_width=cw,
            color_height=ch,
            depth_width=dw,
            depth_height=dh,
            depth_shift=shift,
            num_frames=nf,
        )

    def _scan(self) -> tuple[np.ndarray, np.ndarray, int | None, int]:
        """One pass over the heads: the table of heads, frame offsets, and the IMU section."""
        heads = bytearray()
        offsets: list[int] = []
        try:
            return self._scan_into(heads, offsets)
        except ClipbertError as e:
            if not self._partial:
                raise
            self.cut = str(e)
            table = np.frombuffer(bytes(heads), dtype=_FRAME_DTYPE)
            return table, np.asarray(offsets, dtype=np.int64), None, 0

    @property
    def readable_frames(self) -> int:
        """Frames whose head and payloads lie within the file (all of them unless `cut`)."""
        return len(self._offsets)

    def _scan_into(self, heads: bytearray,
                   offsets: list[int]) -> tuple[np.ndarray, np.ndarray, int | None, int]:
        h = self.header
        offset = h.size
        jpeg = h.color_compression == ColorCompression.JPEG and self._check_jpeg_start
        for i in range(h.num_frames):
            # The head and the first two colour bytes in one read (for the SOI check).
            data = os.pread(self._fd, FRAME_HEAD_SIZE + 2, offset)
            if len(data) < FRAME_HEAD_SIZE:
                raise ClipbertError(
                    f"{self.path}: frame {i}: truncated file (frame head at offset {offset} "
                    f"needs {FRAME_HEAD_SIZE} bytes, file has {self.file_size}; "
                    f"header says {h.num_frames} frames)"
                )
            csize, dsize = struct.unpack_from("<2Q", data, 80)
            end = offset + FRAME_HEAD_SIZE + csize + dsize
            if end > self.file_size:
                raise ClipbertError(
                    f"{self.path}: frame {i}: payload sizes (colour {csize} + depth {dsize} "
                    f"bytes at offset {offset + FRAME_HEAD_SIZE}) run past the end of the file "
                    f"({self.file_size} bytes)"
                )
            if jpeg and data[FRAME_HEAD_SIZE : FRAME_HEAD_SIZE + min(csize, 2)] != JPEG_SOI:
                raise ClipbertError(
                    f"{self.path}: frame {i}: colour payload is not a JPEG (no FF D8 start)"
                )
            heads += data[:FRAME_HEAD_SIZE]
            offsets.append(offset)
            offset = end
        table = np.frombuffer(bytes(heads), dtype=_FRAME_DTYPE)
        offs = np.asarray(offsets, dtype=np.int64)
        rest = self.file_size - offset
        if rest == 0:
            return table, offs, None, 0
        if rest < _U64.size:
            raise ClipbertError(
                f"{self.path}: after frame {h.num_frames - 1}: {rest} trailing bytes, "
                "too few for the IMU count (truncated file?)"
            )
        (count,) = _U64.unpack(self._read(_U64.size, offset, "IMU count"))
        need = _U64.size + IMU_RECORD_SIZE * count
        if rest < need:
            raise ClipbertError(
                f"{self.path}: after frame {h.num_frames - 1}: IMU section truncated: "
                f"{count} records need {need} bytes, only {rest} are left (truncated file?)"
            )
        self.trailing_bytes = rest - need
        return table, offs, offset, count

    # -- frames ---------------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        return self.header.num_frames

    def _check(self, i: int) -> int:
        if not 0 <= i < self.num_frames:
            raise ClipbertError(
                f"{self.path}: frame {i} does not exist (the file has {self.num_frames} frames)"
            )
        if i >= self.readable_frames:
            raise ClipbertError(str(self.cut))
        return int(i)

    def pose(self, i: int) -> np.ndarray:
        """Camera-to-world 4x4 float32 (all -inf when tracking was lost)."""
        return self._heads["pose"][self._check(i)].copy()

    def lost(self, i: int) -> bool:
        return is_lost(self._heads["pose"][self._check(i)])

    @property
    def lost_frames(self) -> list[int]:
        """Frame numbers whose pose is not finite."""
        ok = np.isfinite(self._heads["pose"].reshape(-1, 16)).all(axis=1)
        return np.flatnonzero(~ok).tolist()

    def frame_info(self, i: int) -> dict[str, Any]:
        """Where frame `i` lies and what its head says, as JSON-able values."""
        i = self._check(i)
        head = self._heads[i]
        off = int(self._offsets[i])
        csize = int(head["color_size"])
        pose = head["pose"]
        lost = is_lost(pose)
        return {
            "frame": i,
            "offset": off,
            "color_offset": off + FRAME_HEAD_SIZE,
            "color_size": csize,
            "depth_offset": off + FRAME_HEAD_SIZE + csize,
            "depth_size": int(head["depth_size"]),
            "color_timestamp": int(head["color_timestamp"]),
            "depth_timestamp": int(head["depth_timestamp"]),
            "lost": lost,
            "pose": None if lost else _f32_list(pose),
        }

    def color_bytes(self, i: int) -> bytes:
        """The colour payload exactly as stored (for ScanNet: the original JPEG stream)."""
        i = self._check(i)
        off = int(self._offsets[i]) + FRAME_HEAD_SIZE
        data = self._read(int(self._heads["color_size"][i]), off, f"frame {i}: colour")
        if self.header.color_compression == ColorCompression.JPEG and data[:2] != JPEG_SOI:
            raise ClipbertError(
                f"{self.path}: frame {i}: colour payload is not a JPEG (no FF D8 start)"
            )
        return data

    def depth_bytes(self, i: int) -> bytes:
        """The depth payload exactly as stored (zlib stream for ScanNet)."""
        i = self._check(i)
        head = self._heads[i]
        off = int(self._offsets[i]) + FRAME_HEAD_SIZE + int(head["color_size"])
        return self._read(int(head["depth_size"]), off, f"frame {i}: depth")

    def color_rgb(self, i: int) -> np.ndarray:
        """Decoded colour as an HxWx3 uint8 array."""
        from PIL import Image

        h = self.header
        data = self.color_bytes(i)
        where = f"{self.path}: frame {i}"
        if h.color_compression == ColorCompression.RAW:
            want = h.color_width * h.color_height * 3
            if len(data) != want:
                raise ClipbertError(f"{where}: raw colour has {len(data)} bytes, expected {want}")
            return np.frombuffer(data, np.uint8).reshape(h.color_height, h.color_width, 3).copy()
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ClipbertError(f"{where}: cannot decode colour payload ({e})") from None
        if rgb.shape[:2] != (h.color_height, h.color_width):
            raise ClipbertError(
                f"{where}: colour image is {rgb.shape[1]}x{rgb.shape[0]}, header says "
                f"{h.color_width}x{h.color_height}"
            )
        return rgb

    def depth(self, i: int) -> np.ndarray:
        """Decoded depth as an HxW uint16 array of raw sensor units (divide by depth_shift)."""
        h = self.header
        return decode_depth(
            self.depth_bytes(i),
            h.depth_width,
            h.depth_height,
            h.depth_compression,
            where=f"{self.path}: frame {i}",
        )

    def frame(self, i: int) -> SensFrame:
        """The whole record, as the writer takes it."""
        head = self._heads[self._check(i)]
        return SensFrame(
            camera_to_world=head["pose"].copy(),
            color_timestamp=int(head["color_timestamp"]),
            depth_timestamp=int(head["depth_timestamp"]),
            color_bytes=self.color_bytes(i),
            depth_bytes=self.depth_bytes(i),
        )

    def frames(self) -> Iterator[SensFrame]:
        """Every frame in order, one at a time."""
        for i in range(self.num_frames):
            yield self.frame(i)

    def imu(self) -> list[ImuRecord]:
        """The IMU records (empty when the file ends right after the frames)."""
        if self.imu_offset is None or self.imu_count == 0:
            return []
        data = self._read(IMU_RECORD_SIZE * self.imu_count, self.imu_offset + 8, "IMU records")
        out = []
        for v in _IMU.iter_unpack(data):
            out.append(
                ImuRecord(
                    rotation_rate=v[0:3],
                    acceleration=v[3:6],
                    magnetic_field=v[6:9],
                    attitude=v[9:12],
                    gravity=v[12:15],
                    timestamp=v[15],
                )
            )
        return out

    # -- summaries ------------------------------------------------------------------------------

    def header_dict(self) -> dict[str, Any]:
        """The header as JSON-able values (matrices as nested lists)."""
        h = self.header
        return {
            "version": h.version,
            "sensor_name": h.sensor_name,
            "color": {
                "width": h.color_width,
                "height": h.color_height,
                "compression": _enum_name(ColorCompression, h.color_compression),
            },
            "depth": {
                "width": h.depth_width,
                "height": h.depth_height,
                "compression": _enum_name(DepthCompression, h.depth_compression),
                "shift": float(str(np.float32(h.depth_shift))),
            },
            "num_frames": h.num_frames,
            "intrinsic_color": _f32_list(h.intrinsic_color),
            "extrinsic_color": _f32_list(h.extrinsic_color),
            "intrinsic_depth": _f32_list(h.intrinsic_depth),
            "extrinsic_depth": _f32_list(h.extrinsic_depth),
        }


@dataclass
class SensCheck:
    """What `check_file` found in one file: `problems` holds one line per bad frame, then the
    line of the cut in a truncated file (`missing` frames lie past it), or the one line of a file
    that cannot be read at all (then `frames` is 0)."""

    path: str
    frames: int = 0
    truncated: bool = False
    missing: int = 0
    bad_frames: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: how many frames were read and how many are bad, and any notes."""
        if self.truncated:
            text = (f"{self.path}: BAD: truncated after {self.frames} of "
                    f"{self.frames + self.missing} frames, {len(self.bad_frames)} of them bad")
        elif self.problems and not self.frames:
            text = f"{self.path}: BAD: unreadable"
        elif self.bad_frames:
            text = f"{self.path}: BAD: {len(self.bad_frames)} of {self.frames} frames"
        else:
            text = f"{self.path}: ok: {self.frames} frames"
        return "; ".join([text, *self.notes])


def check_file(path: str | os.PathLike, on_problem: Callable[[str], None] | None = None,
               progress_stream: Any = None) -> SensCheck:
    """Read every frame of a `.sens` file in full, to vet a download before a long run.

    Colour: a JPEG must start with SOI (FF D8) and end with EOI (FF D9), a PNG start with its
    signature, raw colour be W*H*3 bytes. Depth must inflate to exactly W*H*2 bytes (OCCI
    cannot be decoded: noted, not checked). Each bad frame is one `<file>: frame N: <what>` line,
    passed to `on_problem` as found; progress goes to `progress_stream` (default stderr).
    """
    result = SensCheck(str(path))

    def problem(line: str) -> None:
        result.problems.append(line)
        if on_problem is not None:
            on_problem(line)

    try:
        r = SensReader(path, check_jpeg_start=False, warn=False, partial=True)
    except ClipbertError as e:
        problem(str(e))
        return result
    with r:
        result.missing = r.num_frames - r.readable_frames
        h = r.header
        if r.trailing_bytes:
            result.notes.append(f"{r.trailing_bytes} bytes after the IMU section ignored")
        check_depth = h.depth_compression != DepthCompression.OCCI
        if not check_depth:
            result.notes.append("depth is occi (no public decoder): not checked")
        bar = Progress(str(path), r.readable_frames, unit="frames", stream=progress_stream)
        try:
            for i in range(r.readable_frames):
                try:
                    found = _colour_problems(r, i)
                    if check_depth:
                        _, what = _depth_samples(r.depth_bytes(i), h.depth_width,
                                                 h.depth_height, h.depth_compression)
                        found += [what] if what else []
                except OSError as e:
                    found = [f"read error ({e.strerror})"]
                result.frames += 1
                if found:
                    result.bad_frames.append(i)
                    problem(f"{path}: frame {i}: {'; '.join(found)}")
                bar.update()
        finally:
            bar.close()
        if r.cut is not None:
            result.truncated = True
            problem(r.cut)
    return result


def _colour_problems(r: SensReader, i: int) -> list[str]:
    """The colour payload's markers (JPEG, PNG) or size (raw); reads only the bytes it checks."""
    h = r.header
    size = int(r._heads["color_size"][i])
    off = int(r._offsets[i]) + FRAME_HEAD_SIZE
    if h.color_compression == ColorCompression.JPEG:
        if size < 4:
            return [f"colour payload of {size} bytes cannot be a JPEG"]
        out = []
        if os.pread(r._fd, 2, off) != JPEG_SOI:
            out.append("colour payload is not a JPEG (no FF D8 start)")
        if os.pread(r._fd, 2, off + size - 2) != JPEG_EOI:
            out.append("colour JPEG does not end with FF D9 (cut short?)")
        return out
    if h.color_compression == ColorCompression.PNG:
        if os.pread(r._fd, len(PNG_SIGNATURE), off) != PNG_SIGNATURE:
            return ["colour payload is not a PNG (no PNG signature)"]
        return []
    want = h.color_width * h.color_height * 3
    return [] if size == want else [f"raw colour has {size} bytes, expected {want}"]


def sens_info(path: str | os.PathLike) -> dict[str, Any]:
    """Header, IMU count and lost-tracking count: what `clipbert sens info` prints."""
    with SensReader(path) as r:
        info = {"file": str(path), "file_size": r.file_size, **r.header_dict()}
        info["imu_section"] = r.imu_offset is not None
        info["imu_count"] = r.imu_count
        lost = r.lost_frames
        info["lost_frames"] = len(lost)
        if r.num_frames:
            ts = r._heads["color_timestamp"]
            info["duration_s"] = round(float(int(ts[-1]) - int(ts[0])) / 1e6, 6)
        return info


def build_index(path: str | os.PathLike, reader: SensReader | None = None) -> dict[str, Any]:
    """Per-scene index: header plus every frame's offsets, sizes, timestamps, pose, lost flag.
    `reader`: `path` already open (the scene job walks the heads once for index and export)."""
    if reader is None:
        with SensReader(path) as r:
            return build_index(path, r)
    r = reader
    return {
        "file": Path(path).name,
        "file_size": r.file_size,
        **r.header_dict(),
        "imu_section": r.imu_offset is not None,
        "imu_count": r.imu_count,
        "imu_offset": r.imu_offset,
        "lost_frames": len(r.lost_frames),
        "frames": [r.frame_info(i) for i in range(r.num_frames)],
    }


def write_index(path: str | os.PathLike, out_json: str | os.PathLike,
                reader: SensReader | None = None) -> None:
    """Write `build_index(path)` to `out_json` atomically (compact: one scan has ~1650 frames)."""
    text = json.dumps(build_index(path, reader)) + "\n"
    with atomic_open(out_json) as fh:
        fh.write(text)
