"""Frame export (stride, original JPEG bytes, depth/poses, atomic folder) and scene selection."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_SQA, needs_shared
from PIL import Image

from clipbert import frames, scannet, sens
from clipbert.errors import ClipbertError
from clipbert.sens import SensFrame, SensHeader

CW, CH, DW, DH = 32, 24, 16, 12


def jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (CH, CW, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def depth_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65535, (DH, DW), dtype=np.uint16)


def pose(i: int) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (0.1 * i, -0.25 * i, 1.5)
    m[1, 2] = 1 / 3
    return m


def make_scan(path: Path, n: int, lost: tuple[int, ...] = (),
              color: dict[int, bytes] | None = None, **kw) -> list[SensFrame]:
    """A scan of `n` frames; `color` replaces some frames' colour payloads."""
    k = np.array([[30.0, 0, 16, 0], [0, 30, 12, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    fr = [
        SensFrame(np.full((4, 4), -np.inf, np.float32) if i in lost else pose(i),
                  100 + 33_000 * i, 120 + 33_000 * i, (color or {}).get(i, jpeg(i)),
                  sens.encode_depth(depth_image(i)))
        for i in range(n)
    ]
    hdr = dict(intrinsic_color=k, intrinsic_depth=k / 2, color_width=CW, color_height=CH,
               depth_width=DW, depth_height=DH, num_frames=n)
    hdr.update(kw)
    sens.write_sens(path, SensHeader(**hdr), fr)
    return fr


def folder_files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


@pytest.mark.parametrize("n,stride,kept", [
    (10, 3, [0, 3, 6, 9]),      # F - 1 is a multiple of the stride
    (9, 3, [0, 3, 6]),          # F is a multiple of the stride
    (11, 3, [0, 3, 6, 9]),      # F not a multiple
    (7, 20, [0]),               # stride larger than F
    (5, 5, [0]),                # stride equal to F
    (4, 1, [0, 1, 2, 3]),       # every frame
    (1, 20, [0]),
])
def test_stride(tmp_path: Path, n: int, stride: int, kept: list[int]) -> None:
    src = tmp_path / "s.sens"
    fr = make_scan(src, n)
    out = tmp_path / "out"
    index = frames.export_frames(src, out, stride=stride)
    assert [e["frame"] for e in index["frames"]] == kept
    assert index["num_frames"] == len(kept) == -(-n // stride)
    assert folder_files(out) == {f"frame-{k}.color.jpg" for k in range(len(kept))} | {"index.json"}
    for k, i in enumerate(kept):
        assert (out / f"frame-{k}.color.jpg").read_bytes() == fr[i].color_bytes
    assert json.loads((out / "index.json").read_text()) == index


def test_index_contents(tmp_path: Path) -> None:
    src = tmp_path / "scene0001_00.sens"
    fr = make_scan(src, 7, lost=(2, 4))
    index = frames.export_frames(src, tmp_path / "out", stride=2)
    assert index["source"] == "scene0001_00.sens" and index["stride"] == 2
    assert index["num_source_frames"] == 7
    assert index["color"] == {"width": CW, "height": CH, "compression": "jpeg"}
    assert index["depth"]["width"] == DW and index["depth"]["shift"] == 1000.0
    assert index["intrinsic_color"][0] == [30.0, 0.0, 16.0, 0.0]
    assert index["intrinsic_depth"][0] == [15.0, 0.0, 8.0, 0.0]
    e = index["frames"]
    assert [x["k"] for x in e] == [0, 1, 2, 3] and [x["frame"] for x in e] == [0, 2, 4, 6]
    assert [x["lost"] for x in e] == [False, True, True, False]
    assert e[1]["pose"] is None
    assert e[3]["color_timestamp"] == fr[6].color_timestamp
    assert e[3]["depth_timestamp"] == fr[6].depth_timestamp
    np.testing.assert_array_equal(np.float32(e[3]["pose"]), pose(6))
    json.dumps(index, allow_nan=False)


def test_depth_and_poses(tmp_path: Path) -> None:
    src = tmp_path / "s.sens"
    make_scan(src, 6, lost=(3,))
    out = tmp_path / "out"
    index = frames.export_frames(src, out, stride=3, depth=True, poses=True)
    assert folder_files(out) == {
        "index.json", "frame-0.color.jpg", "frame-1.color.jpg", "frame-0.depth.png",
        "frame-1.depth.png", "frame-0.pose.txt", "frame-1.pose.txt", "intrinsic_color.txt",
        "intrinsic_depth.txt", "extrinsic_color.txt", "extrinsic_depth.txt",
    }
    for k, i in enumerate([0, 3]):
        with Image.open(out / f"frame-{k}.depth.png") as im:
            assert im.mode == "I;16" and im.size == (DW, DH)
            np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), depth_image(i))
        assert index["frames"][k]["depth"] == f"frame-{k}.depth.png"
        assert index["frames"][k]["pose_file"] == f"frame-{k}.pose.txt"
    np.testing.assert_array_equal(np.loadtxt(out / "frame-0.pose.txt", dtype=np.float32), pose(0))
    lost = np.loadtxt(out / "frame-1.pose.txt")
    assert lost.shape == (4, 4) and np.isneginf(lost).all()
    k = np.loadtxt(out / "intrinsic_color.txt", dtype=np.float32)
    np.testing.assert_array_equal(k[0], [30, 0, 16, 0])


def test_export_replaces_an_old_folder(tmp_path: Path, cli) -> None:
    src = tmp_path / "s.sens"
    make_scan(src, 5)
    out = tmp_path / "out"
    cli("sens", "export", src, out, "--stride", "1", "--depth")
    assert len(list(out.glob("*.depth.png"))) == 5
    proc = cli("sens", "export", src, out, "--stride", "2")
    assert proc.stdout.strip() == f"{out}: 3 frames"
    assert folder_files(out) == {"index.json", "frame-0.color.jpg", "frame-1.color.jpg",
                                 "frame-2.color.jpg"}
    assert folder_files(tmp_path) == {"s.sens", "out"}


@pytest.mark.parametrize("stride", ["0", "-3"])
def test_bad_stride(tmp_path: Path, cli, stride: str) -> None:
    src = tmp_path / "s.sens"
    make_scan(src, 3)
    proc = cli("sens", "export", src, tmp_path / "out", "--stride", stride, check=False)
    assert proc.returncode == 1 and "stride must be a positive integer" in proc.stderr
    assert folder_files(tmp_path) == {"s.sens"}
    for bad in (True, 2.0, "2"):
        with pytest.raises(ClipbertError, match="stride must be"):
            frames.export_frames(src, tmp_path / "out", stride=bad)
    assert frames.export_frames(src, tmp_path / "out", stride=np.int64(2))["num_frames"] == 2


def _corrupt(path: Path, kind: str) -> str:
    """Make one kind of bad file; return the pattern its error must match."""
    fr = make_scan(path, 6)
    data = bytearray(path.read_bytes())
    hdr = 304 + len("StructureSensor")
    offs, off = [], hdr
    for f in fr:
        offs.append(off)
        off += 96 + len(f.color_bytes) + len(f.depth_bytes)
    if kind == "truncated":
        path.write_bytes(bytes(data[: offs[4] + 40]))
        return "frame 4: truncated"
    if kind == "version":
        struct.pack_into("<I", data, 0, 5)
        pattern = "header: version 5"
    elif kind == "compression":
        struct.pack_into("<i", data, hdr - 36, 9)
        pattern = "unknown colour compression type 9"
    elif kind == "past_end":
        struct.pack_into("<Q", data, offs[5] + 88, 10**6)
        pattern = "frame 5: payload sizes"
    elif kind == "not_jpeg":
        data[offs[3] + 96] = 0
        pattern = "frame 3: colour payload is not a JPEG"
    elif kind == "zlib":
        # Frame 2 is exported at stride 2; overwrite its zlib stream head.
        d0 = offs[2] + 96 + len(fr[2].color_bytes)
        data[d0 : d0 + 4] = b"\x00\x01\x02\x03"
        pattern = "frame 2: corrupt zlib"
    elif kind == "depth_size":
        fr[4].depth_bytes = sens.encode_depth(np.zeros((DH, DW + 1), np.uint16))
        sens.write_sens(path, SensHeader(color_width=CW, color_height=CH, depth_width=DW,
                                         depth_height=DH, num_frames=6), fr)
        return f"frame 4: depth inflates to more than {DW * DH * 2} bytes"
    path.write_bytes(bytes(data))
    return pattern


@pytest.mark.parametrize("kind", ["truncated", "version", "compression", "past_end", "not_jpeg",
                                  "zlib", "depth_size"])
def test_bad_input_leaves_no_folder(tmp_path: Path, cli, kind: str) -> None:
    src = tmp_path / "scene0002_00.sens"
    pattern = _corrupt(src, kind)
    out = tmp_path / "frames" / "scene0002_00"
    proc = cli("sens", "export", src, out, "--stride", "2", "--depth", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {src}: ")
    assert pattern.split(":")[0] in lines[0]
    with pytest.raises(ClipbertError, match=pattern):
        frames.export_frames(src, out, stride=2, depth=True)
    assert not out.exists()
    assert not (tmp_path / "frames").exists() or list((tmp_path / "frames").iterdir()) == []


def test_colour_must_be_jpeg_to_export(tmp_path: Path) -> None:
    src = tmp_path / "s.sens"
    f = SensFrame(pose(0), 0, 0, b"\0" * (CW * CH * 3), sens.encode_depth(depth_image(0)))
    sens.write_sens(src, SensHeader(color_compression=0, color_width=CW, color_height=CH,
                                    depth_width=DW, depth_height=DH, num_frames=1), [f])
    with pytest.raises(ClipbertError, match="colour compression is raw, export needs jpeg"):
        frames.export_frames(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_scan_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "s.sens"
    sens.write_sens(src, SensHeader(num_frames=0), [])
    with pytest.raises(ClipbertError, match="no frames"):
        frames.export_frames(src, tmp_path / "out")
    assert folder_files(tmp_path) == {"s.sens"}


# ---- scene selection --------------------------------------------------------------------------


def _lists(tmp: Path) -> tuple[Path, Path]:
    all_list, test_list = tmp / "all.txt", tmp / "test.txt"
    all_list.write_text("scene0002_00\nscene0000_00\nscene0000_01\nscene0001_00\n"
                        "scene0001_02\nscene0003_00\n\n")
    test_list.write_text("scene0003_00\n")
    return all_list, test_list


def _questions(path: Path, scenes: list[str], key: str = "questions") -> Path:
    path.write_text(json.dumps({"info": "x", key: [{"scene_id": s, "question": "q"}
                                                   for s in scenes]}))
    return path


def test_select_scenes(tmp_path: Path) -> None:
    a, t = _lists(tmp_path)
    assert scannet.select_scenes(a, t) == ["scene0000_00", "scene0001_00", "scene0002_00"]
    q1 = _questions(tmp_path / "q1.json", ["scene0002_00", "scene0002_00"])
    q2 = _questions(tmp_path / "q2.json", ["scene0000_00"], key="annotations")
    assert scannet.select_scenes(a, t, [q1]) == ["scene0002_00"]
    assert scannet.select_scenes(a, t, [q1, q2]) == ["scene0000_00", "scene0002_00"]


@pytest.mark.parametrize("content,pattern", [
    ({"questions": [{"scene_id": "scene0003_00"}]}, "1 scene.* not among .*scene0003_00"),
    ({"questions": [{"scene_id": "scene0000_00"}, {"question": "?"}]}, "item 1: no scene_id"),
    ({"other": []}, "expected a 'questions'"),
    ("{not json", "not valid JSON"),
])
def test_bad_question_files(tmp_path: Path, content, pattern: str) -> None:
    a, t = _lists(tmp_path)
    q = tmp_path / "q.json"
    q.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ClipbertError, match=pattern) as e:
        scannet.select_scenes(a, t, [q])
    assert str(q) in str(e.value)


def test_missing_list(tmp_path: Path) -> None:
    with pytest.raises(ClipbertError, match="nope.txt: cannot read scene list"):
        scannet.select_scenes(tmp_path / "nope.txt", tmp_path / "nope.txt")


def test_check_scans_lists_every_missing_scene(tmp_path: Path, cli) -> None:
    scans = tmp_path / "scans"
    for s in ("scene0000_00", "scene0002_00"):
        (scans / s).mkdir(parents=True)
    (scans / "scene0000_00" / "scene0000_00.sens").write_bytes(b"")
    with pytest.raises(ClipbertError) as e:
        scannet.check_scans(scans, ["scene0000_00", "scene0001_00", "scene0002_00"])
    msg = str(e.value)
    assert "2 of 3" in msg and "scene0001_00" in msg and "scene0002_00" in msg
    assert "scene0000_00" not in msg.split(":", 1)[1]
    scannet.check_scans(scans, ["scene0000_00"])
    a, t = _lists(tmp_path)
    proc = cli("sens", "scenes", a, t, "--scans", scans, check=False)
    assert proc.returncode == 1 and "scene0001_00, scene0002_00" in proc.stderr
    out = tmp_path / "scenes.txt"
    cli("sens", "scenes", a, t, "--out", out)
    assert out.read_text() == "scene0000_00\nscene0001_00\nscene0002_00\n"


@needs_shared
def test_real_lists_give_707_scenes(cli) -> None:
    a, t = SHARED_SQA / "scannetv2.txt", SHARED_SQA / "scannetv2_test.txt"
    scenes = scannet.select_scenes(a, t)
    assert len(scenes) == 707 and scenes[0] == "scene0000_00"
    split = json.loads((SHARED_SQA / "scene_split.json").read_text())
    assert set(scenes) == {s for v in split.values() for s in v}
    q = SHARED_SQA / "v1_balanced_questions_test_scannetv2.json"
    used = scannet.select_scenes(a, t, [q])
    assert len(used) == 67 and set(used) <= set(scenes)
    assert cli("sens", "scenes", a, t, "--questions", q).stdout.splitlines() == used


def test_a_corrupt_jpeg_is_blamed_on_the_scans_frame(tmp_path: Path) -> None:
    """A kept JPEG cut short stops the export naming the scan's own frame number (10 at stride
    10, not kept frame 1); one damaged inside, its markers intact, is copied out and stops the
    encode, which names the scan's frame through the folder's index.json, not the copy alone."""
    from clipbert import video

    good = jpeg(10)
    scan, out = tmp_path / "scene0002_00.sens", tmp_path / "frames"
    make_scan(scan, 12, color={10: good[:-40]})
    with pytest.raises(ClipbertError) as e:
        frames.export_frames(scan, out, stride=10)
    assert str(e.value) == f"{scan}: frame 10: colour JPEG does not end with FF D9 (cut short?)"
    assert not out.exists()
    make_scan(scan, 12, color={10: good[:2] + bytes(len(good) - 4) + good[-2:]})
    frames.export_frames(scan, out, stride=10)
    with pytest.raises(ClipbertError) as e:
        video.encode_video(out, tmp_path / "v.mp4", size=(32, 24))
    message = str(e.value)
    assert message.startswith("scene0002_00.sens: frame 10: cannot decode JPEG ("), message
    assert message.endswith(f"; exported as {out / 'frame-1.color.jpg'}"), message
    assert not (tmp_path / "v.mp4").exists()
