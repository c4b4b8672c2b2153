"""The .sens reader and writer: byte layout, round trips, both endings, lost poses, bad input."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipbert import sens
from clipbert.errors import ClipbertError
from clipbert.sens import ImuRecord, SensFrame, SensHeader, SensReader

CW, CH, DW, DH = 40, 30, 20, 16


def jpeg(seed: int, w: int = CW, h: int = CH) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def depth_image(seed: int, w: int = DW, h: int = DH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5000, (h, w), dtype=np.uint16)


def pose(seed: int) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = np.random.default_rng(seed).normal(size=3)
    m[0, 1] = 0.1 * seed
    return m


def header(n: int, **kw) -> SensHeader:
    k = np.array([[35.0, 0, 20, 0], [0, 35.5, 15, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    base = dict(
        sensor_name="StructureSensor", intrinsic_color=k, intrinsic_depth=k * 0.5,
        color_width=CW, color_height=CH, depth_width=DW, depth_height=DH, num_frames=n,
    )
    base.update(kw)
    return SensHeader(**base)


def frames(n: int, lost: tuple[int, ...] = ()) -> list[SensFrame]:
    out = []
    for i in range(n):
        p = np.full((4, 4), -np.inf, np.float32) if i in lost else pose(i)
        out.append(SensFrame(p, 1000 + 33_333 * i, 1010 + 33_333 * i, jpeg(i),
                             sens.encode_depth(depth_image(i))))
    return out


IMU = [
    ImuRecord((0.1 * i, 0.2, 0.3), (1.0, 2.0, 3.0 + i), (4.0, 5.0, 6.0), (7.0, 8.0, 9.0),
              (0.0, -9.81, 0.0), 5000 + i)
    for i in range(3)
]


def write(path: Path, n: int = 6, lost: tuple[int, ...] = (), imu=IMU, **kw) -> list[SensFrame]:
    fr = frames(n, lost)
    sens.write_sens(path, header(n, **kw), iter(fr), imu)
    return fr


def test_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    fr = write(p, 6, lost=(2,))
    with SensReader(p) as r:
        h = r.header
        assert (h.version, h.sensor_name) == (4, "StructureSensor")
        assert h.num_frames == r.num_frames == 6
        assert (h.color_width, h.color_height, h.depth_width, h.depth_height) == (CW, CH, DW, DH)
        assert h.color_compression == sens.COLOR_JPEG and h.depth_compression == sens.DEPTH_ZLIB
        assert h.depth_shift == 1000.0
        np.testing.assert_array_equal(h.intrinsic_color, header(6).intrinsic_color)
        np.testing.assert_array_equal(h.intrinsic_depth, header(6).intrinsic_depth)
        assert h.intrinsic_color.dtype == np.float32
        for i, f in enumerate(fr):
            assert r.color_bytes(i) == f.color_bytes
            np.testing.assert_array_equal(r.depth(i), depth_image(i))
            assert r.depth(i).dtype == np.uint16
            np.testing.assert_array_equal(r.pose(i), f.camera_to_world)
            rgb = r.color_rgb(i)
            assert rgb.shape == (CH, CW, 3) and rgb.dtype == np.uint8
            ref = np.asarray(Image.open(io.BytesIO(f.color_bytes)).convert("RGB"))
            np.testing.assert_array_equal(rgb, ref)
            info = r.frame_info(i)
            assert info["color_timestamp"] == f.color_timestamp
            assert info["depth_timestamp"] == f.depth_timestamp
            assert info["lost"] == (i == 2)
        assert r.lost_frames == [2]
        assert r.frame_info(2)["pose"] is None
        assert np.isneginf(r.pose(2)).all()
        assert r.imu_count == 3 and r.imu() == IMU
        f4 = r.frame(4)
        assert (f4.color_bytes, f4.depth_bytes) == (fr[4].color_bytes, fr[4].depth_bytes)
        assert (f4.color_timestamp, f4.depth_timestamp) == (fr[4].color_timestamp,
                                                            fr[4].depth_timestamp)


def test_rewrite_is_byte_identical(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sens", tmp_path / "b.sens"
    write(a, 5, lost=(0, 4))
    with SensReader(a) as r:
        sens.write_sens(b, r.header, r.frames(), r.imu())
    assert a.read_bytes() == b.read_bytes()


def test_byte_layout_follows_the_spec(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    fr = write(p, 2, imu=IMU[:1], sensor_name="Kinect")
    data = p.read_bytes()
    assert struct.unpack_from("<IQ", data, 0) == (4, 6)
    assert data[12:18] == b"Kinect"
    hdr = 304 + 6
    mats = struct.unpack_from("<64f", data, 18)
    assert mats[0:4] == (35.0, 0.0, 20.0, 0.0)  # row-major intrinsic_color
    assert struct.unpack_from("<2i4IfQ", data, 18 + 256) == (2, 1, CW, CH, DW, DH, 1000.0, 2)
    vals = struct.unpack_from("<16f4Q", data, hdr)
    assert vals[16:] == (1000, 1010, len(fr[0].color_bytes), len(fr[0].depth_bytes))
    assert data[hdr + 96 : hdr + 98] == b"\xff\xd8"
    end = hdr + sum(96 + len(f.color_bytes) + len(f.depth_bytes) for f in fr)
    assert struct.unpack_from("<Q", data, end) == (1,)
    assert len(data) == end + 8 + 128
    assert struct.unpack_from("<15dQ", data, end + 8)[-1] == 5000


@pytest.mark.parametrize("imu,section,count,trailer", [(None, False, 0, 0), ((), True, 0, 8),
                                                      (IMU, True, 3, 8 + 3 * 128)])
def test_both_endings(tmp_path: Path, imu, section, count, trailer) -> None:
    p = tmp_path / "a.sens"
    fr = write(p, 3, imu=imu)
    body = 304 + 15 + sum(96 + len(f.color_bytes) + len(f.depth_bytes) for f in fr)
    assert p.stat().st_size == body + trailer
    info = sens.sens_info(p)
    assert (info["imu_section"], info["imu_count"]) == (section, count)
    with SensReader(p) as r:
        assert len(r.imu()) == count
        assert r.color_bytes(2) == fr[2].color_bytes


def test_reader_reads_only_the_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Indexing must seek over payloads: bytes read stay at header + 98 per frame + IMU count."""
    p = tmp_path / "a.sens"
    write(p, 8)
    read = []
    real = os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        data = real(fd, n, off)
        read.append(len(data))
        return data

    monkeypatch.setattr(sens.os, "pread", counting)
    with SensReader(p):
        pass
    assert sum(read) <= 319 + 8 * 98 + 8
    assert p.stat().st_size > 3 * sum(read)


def test_writer_checks_frame_count_and_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    with pytest.raises(ClipbertError, match="header says 4 frames but 3"):
        sens.write_sens(p, header(4), iter(frames(3)))
    assert list(tmp_path.iterdir()) == []


def test_writer_streams_a_generator(tmp_path: Path) -> None:
    """Frames are written as they come: the generator is never materialised as a list."""
    p = tmp_path / "a.sens"
    seen = []

    def gen():
        for i in range(4):
            seen.append(i)
            yield SensFrame(pose(i), i, i, jpeg(i), sens.encode_depth(depth_image(i)))

    sens.write_sens(p, header(4), gen(), None)
    assert seen == [0, 1, 2, 3]
    assert SensReader(p).num_frames == 4


def test_info_and_index(tmp_path: Path, cli) -> None:
    p = tmp_path / "scene0000_00.sens"
    fr = write(p, 5, lost=(1, 3))
    info = json.loads(cli("sens", "info", p).stdout)
    assert info["version"] == 4 and info["num_frames"] == 5 and info["lost_frames"] == 2
    assert info["color"] == {"width": CW, "height": CH, "compression": "jpeg"}
    assert info["depth"] == {"width": DW, "height": DH, "compression": "zlib", "shift": 1000.0}
    assert info["imu_count"] == 3
    assert info["intrinsic_color"][1] == [0.0, 35.5, 15.0, 0.0]
    out = tmp_path / "idx" / "index.json"
    cli("sens", "index", p, out)
    idx = json.loads(out.read_text())
    assert idx == json.loads(json.dumps(sens.build_index(p), allow_nan=False))
    data = p.read_bytes()
    for f, e in zip(fr, idx["frames"], strict=True):
        assert data[e["color_offset"] : e["color_offset"] + e["color_size"]] == f.color_bytes
        assert data[e["depth_offset"] : e["depth_offset"] + e["depth_size"]] == f.depth_bytes
        assert e["offset"] + 96 == e["color_offset"]
    assert [e["lost"] for e in idx["frames"]] == [False, True, False, True, False]
    assert idx["frames"][1]["pose"] is None
    np.testing.assert_array_equal(np.float32(idx["frames"][4]["pose"]), fr[4].camera_to_world)


def test_raw_depth_and_raw_colour(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    d = depth_image(7)
    rgb = np.random.default_rng(1).integers(0, 256, (CH, CW, 3), dtype=np.uint8)
    f = SensFrame(pose(0), 1, 2, rgb.tobytes(), d.astype("<u2").tobytes())
    sens.write_sens(p, header(1, color_compression=0, depth_compression=0), [f])
    with SensReader(p) as r:
        np.testing.assert_array_equal(r.depth(0), d)
        np.testing.assert_array_equal(r.color_rgb(0), rgb)


def test_depth_codec_rejects_bad_arrays() -> None:
    with pytest.raises(ClipbertError, match="uint16"):
        sens.encode_depth(np.zeros((4, 4), np.float32))
    d = depth_image(3)
    np.testing.assert_array_equal(sens.decode_depth(sens.encode_depth(d), DW, DH), d)


# ---- bad input --------------------------------------------------------------------------------


def patch(path: Path, offset: int, fmt: str, *values) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def frame_offset(path: Path, i: int) -> int:
    with SensReader(path) as r:
        return r.frame_info(i)["offset"]


def expect_error(path: Path, pattern: str, cli=None) -> None:
    with pytest.raises(ClipbertError, match=pattern) as e:
        with SensReader(path) as r:
            for i in range(r.num_frames):
                r.depth(i)
                r.color_rgb(i)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if cli is not None:
        proc = cli("sens", "info", path, check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and str(path) in proc.stderr


def test_bad_version(tmp_path: Path, cli) -> None:
    p = tmp_path / "a.sens"
    write(p, 2, version=3)
    expect_error(p, "version 3, only 4", cli)


@pytest.mark.parametrize("field,value,pattern", [("color_compression", 7, "colour compression"),
                                                 ("color_compression", -1, "colour compression"),
                                                 ("depth_compression", 9, "depth compression")])
def test_unknown_compression(tmp_path: Path, cli, field, value, pattern) -> None:
    p = tmp_path / "a.sens"
    write(p, 2, **{field: value})
    expect_error(p, f"unknown {pattern} type {value}", cli)


def test_occi_depth_cannot_be_decoded(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    write(p, 2, depth_compression=2)
    with SensReader(p) as r:
        with pytest.raises(ClipbertError, match="frame 0: cannot decode depth compression occi"):
            r.depth(0)


@pytest.mark.parametrize("cut,pattern", [(10, "header: truncated"), (300, "header: truncated"),
                                         ("head2", "frame 2: truncated"),
                                         ("pay2", "frame 2: payload sizes"),
                                         ("imu", "trailing bytes"),
                                         ("imurec", "IMU section truncated: 3 records need 392 "
                                          "bytes, only 208 are left")])
def test_truncated(tmp_path: Path, cli, cut, pattern) -> None:
    p = tmp_path / "a.sens"
    write(p, 4)
    data = p.read_bytes()
    with SensReader(p) as r:
        size = {"head2": r.frame_info(2)["offset"] + 50,
                "pay2": r.frame_info(2)["depth_offset"] + 3,
                "imu": r.imu_offset + 5, "imurec": r.imu_offset + 8 + 200}.get(cut, cut)
    p.write_bytes(data[:size])
    expect_error(p, pattern, cli)


def test_payload_size_past_end(tmp_path: Path, cli) -> None:
    p = tmp_path / "a.sens"
    write(p, 4)
    patch(p, frame_offset(p, 3) + 80, "<Q", 2**40)
    expect_error(p, "frame 3: payload sizes .* run past the end", cli)


@pytest.mark.parametrize("imu,extra", [(IMU, 8), ((), 100)])
def test_bytes_after_the_imu_section_are_ignored_with_a_warning(
        tmp_path: Path, cli, capsys: pytest.CaptureFixture, imu, extra: int) -> None:
    """ScanNet's reader ignores what follows the IMU records; so do we, saying so once."""
    p = tmp_path / "a.sens"
    fr = write(p, 2, imu=imu)
    p.write_bytes(p.read_bytes() + b"\x07" * extra)
    warning = (f"warning: {p}: {extra} bytes after the IMU section ignored (ScanNet's reader "
               "ignores them too)")
    with SensReader(p) as r:
        assert (r.trailing_bytes, r.imu()) == (extra, list(imu))
        assert r.color_bytes(1) == fr[1].color_bytes
    assert capsys.readouterr().err == warning + "\n"
    proc = cli("sens", "info", p)
    assert proc.stderr == warning + "\n" and json.loads(proc.stdout)["imu_count"] == len(imu)


def test_an_imu_count_beyond_the_end_is_a_shortage(tmp_path: Path, cli) -> None:
    p = tmp_path / "a.sens"
    write(p, 2)
    with SensReader(p) as r:
        patch(p, r.imu_offset, "<Q", 5)
    expect_error(p, "after frame 1: IMU section truncated: 5 records need 648 bytes, only 392 "
                 r"are left \(truncated file\?\)", cli)


def test_colour_not_jpeg(tmp_path: Path, cli) -> None:
    p = tmp_path / "a.sens"
    fr = frames(3)
    fr[1].color_bytes = b"\x89PNG\r\n" + fr[1].color_bytes[2:]
    sens.write_sens(p, header(3), fr)
    expect_error(p, "frame 1: colour payload is not a JPEG", cli)


def test_colour_jpeg_that_does_not_decode(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    fr = frames(3)
    fr[2].color_bytes = b"\xff\xd8" + b"\0" * 50
    sens.write_sens(p, header(3), fr)
    expect_error(p, "frame 2: cannot decode colour")


def test_colour_of_the_wrong_size(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    fr = frames(2)
    fr[1].color_bytes = jpeg(1, CW + 2, CH)
    sens.write_sens(p, header(2), fr)
    expect_error(p, "frame 1: colour image is 42x30, header says 40x30")


@pytest.mark.parametrize("payload,pattern", [
    (b"not zlib at all", "frame 1: corrupt zlib"),
    (zlib.compress(depth_image(1).tobytes())[:-9], "frame 1: corrupt zlib.*truncated"),
    (zlib.compress(depth_image(1).tobytes())[:-2] + b"\0\0", "frame 1: corrupt zlib"),
    (sens.encode_depth(depth_image(1, DW, DH - 1)), "frame 1: depth inflates to 600 bytes, exp"),
    (sens.encode_depth(depth_image(1, DW, DH + 1)), "frame 1: depth inflates to more than 640"),
])
def test_bad_depth(tmp_path: Path, payload: bytes, pattern: str) -> None:
    p = tmp_path / "a.sens"
    fr = frames(3)
    fr[1].depth_bytes = payload
    sens.write_sens(p, header(3), fr)
    with SensReader(p) as r:  # depth is only checked when decoded
        np.testing.assert_array_equal(r.depth(0), depth_image(0))
    expect_error(p, pattern)


def test_frame_number_out_of_range(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    write(p, 2)
    with SensReader(p) as r, pytest.raises(ClipbertError, match="frame 2 does not exist"):
        r.color_bytes(2)


def test_missing_file(tmp_path: Path, cli) -> None:
    proc = cli("sens", "info", tmp_path / "nope.sens", check=False)
    assert proc.returncode == 1 and "nope.sens: cannot open" in proc.stderr


# ---- sens check: every payload read in full ---------------------------------------------------


def corrupt_scan(path: Path) -> list[str]:
    """Six frames, four of them bad in different ways; returns the expected problem lines."""
    fr = frames(6)
    fr[1].color_bytes = b"\x89PNG\r\n" + fr[1].color_bytes[2:]
    fr[2].color_bytes = fr[2].color_bytes[:-40]  # cut short: no EOI
    fr[4].depth_bytes = b"not zlib at all"
    fr[5].color_bytes = fr[5].color_bytes[:-1]
    fr[5].depth_bytes = sens.encode_depth(depth_image(5, DW, DH - 1))
    sens.write_sens(path, header(6), fr)
    return [
        f"{path}: frame 1: colour payload is not a JPEG (no FF D8 start)",
        f"{path}: frame 2: colour JPEG does not end with FF D9 (cut short?)",
        f"{path}: frame 4: corrupt zlib depth payload (Error -3 while decompressing data: "
        "incorrect header check)",
        f"{path}: frame 5: colour JPEG does not end with FF D9 (cut short?); depth inflates to "
        "600 bytes, expected 640 (20x16x2)",
    ]


def test_check_passes_a_sound_file(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    write(p, 6, lost=(2,))
    result = sens.check_file(p)
    assert result.ok and result.frames == 6 and result.problems == []
    assert result.summary() == f"{p}: ok: 6 frames"


def test_check_reports_every_bad_frame_once(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    expected = corrupt_scan(p)
    seen: list[str] = []
    result = sens.check_file(p, on_problem=seen.append)
    assert result.problems == seen == expected
    assert result.bad_frames == [1, 2, 4, 5] and result.frames == 6 and not result.ok
    assert result.summary() == f"{p}: BAD: 4 of 6 frames"


def test_check_finds_a_bad_depth_that_export_does_not_read(tmp_path: Path, cli) -> None:
    """Without --depth an export never inflates depth; a check before the run does."""
    p = tmp_path / "a.sens"
    fr = frames(3)
    fr[1].depth_bytes = fr[1].depth_bytes[:-9]
    sens.write_sens(p, header(3), fr)
    cli("sens", "export", p, tmp_path / "out", "--stride", "1")
    assert sens.check_file(p).problems == [
        f"{p}: frame 1: corrupt zlib depth payload (stream is truncated)"]


def test_check_of_a_truncated_file_lists_the_bad_frames_before_the_cut(tmp_path: Path) -> None:
    """Every bad frame the file still holds, then the cut: not the first problem alone."""
    p = tmp_path / "a.sens"
    expected = corrupt_scan(p)  # frames 1, 2, 4 and 5 bad
    with SensReader(p, check_jpeg_start=False) as r:
        cut_at = r.frame_info(5)["offset"] + 50
    p.write_bytes(p.read_bytes()[:cut_at])
    result = sens.check_file(p)
    assert result.problems[:3] == expected[:3], result.problems
    assert len(result.problems) == 4 and result.problems[3].startswith(
        f"{p}: frame 5: truncated file (frame head at offset "), result.problems
    assert result.bad_frames == [1, 2, 4] and result.frames == 5 and result.missing == 1
    assert result.summary() == f"{p}: BAD: truncated after 5 of 6 frames, 3 of them bad"
    with pytest.raises(ClipbertError, match="frame 5: truncated file"):
        SensReader(p, check_jpeg_start=False)


def test_check_notes_what_it_cannot_or_need_not_read(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    write(p, 2, depth_compression=2)
    p.write_bytes(p.read_bytes() + b"\0" * 3)
    result = sens.check_file(p)
    assert result.ok
    assert result.summary() == (f"{p}: ok: 2 frames; 3 bytes after the IMU section ignored; "
                                "depth is occi (no public decoder): not checked")


def test_check_of_raw_and_png_colour(tmp_path: Path) -> None:
    p = tmp_path / "a.sens"
    rgb = np.zeros((CH, CW, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    d = sens.encode_depth(depth_image(0))
    sens.write_sens(p, header(2, color_compression=1), [
        SensFrame(pose(0), 1, 1, png.getvalue(), d), SensFrame(pose(1), 2, 2, b"GIF89a", d)])
    assert sens.check_file(p).problems == [
        f"{p}: frame 1: colour payload is not a PNG (no PNG signature)"]
    sens.write_sens(p, header(2, color_compression=0), [
        SensFrame(pose(0), 1, 1, rgb.tobytes(), d), SensFrame(pose(1), 2, 2, b"\0" * 9, d)])
    assert sens.check_file(p).problems == [
        f"{p}: frame 1: raw colour has 9 bytes, expected {CW * CH * 3}"]


def test_check_command(tmp_path: Path, cli) -> None:
    good, bad, cut = tmp_path / "good.sens", tmp_path / "bad.sens", tmp_path / "cut.sens"
    write(good, 3)
    expected = corrupt_scan(bad)
    cut.write_bytes(good.read_bytes()[:200])
    proc = cli("sens", "check", good, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{good}: ok: 3 frames\n", "")
    proc = cli("sens", "check", good, bad, cut, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.splitlines() == [
        f"{good}: ok: 3 frames", *expected, f"{bad}: BAD: 4 of 6 frames",
        f"{cut}: header: truncated file (292 bytes needed at offset 27, file has 200)",
        f"{cut}: BAD: unreadable", "1 of 3 files sound"]


def test_check_does_not_import_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import cli_env

    p = tmp_path / "a.sens"
    write(p, 2)
    code = ("import sys\nfrom clipbert.cli import main\n"
            f"assert main(['sens', 'check', {str(p)!r}]) == 0\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr
