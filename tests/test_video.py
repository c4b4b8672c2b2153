"""Encoding, probing, clip sampling and decoding (clipbert.video and `clipbert video`)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from clipbert import video
from clipbert.errors import ClipbertError


def scene_frame(k: int, w: int, h: int) -> np.ndarray:
    """A smooth picture with a bright block whose place depends on k (frames are told apart)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 200, w, dtype=np.uint8)[None]
    a[..., 1] = np.linspace(0, 200, h, dtype=np.uint8)[:, None]
    a[..., 2] = 60
    x = (k * w // 7) % (w - w // 3)
    a[h // 4: h // 4 + h // 3, x: x + w // 3] = (250, 250, 40)
    return a


def make_scene(d: Path, n: int = 8, w: int = 96, h: int = 72, extras: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(scene_frame(k, w, h)).save(d / f"frame-{k}.color.jpg", quality=95)
    if extras:
        (d / "index.json").write_text("{}")
        (d / "frame-0.depth.png").write_bytes(b"not looked at")
        (d / "frame-0.pose.txt").write_text("1 0 0 0\n")
    return d


def expected(path: Path, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR))


def decode_all(mp4: Path) -> np.ndarray:
    with av.open(str(mp4)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_encode_probe_and_content(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "scene0000_00")
    out = tmp_path / "v" / "scene0000_00.mp4"
    info = video.encode_video(scene, out, size=(48, 40))
    assert info == {"n_frames": 8, "width": 48, "height": 40, "fps": 20, "codec": "mpeg4"}
    probe = video.probe_video(out)
    assert probe == {"width": 48, "height": 40, "fps": 20.0, "codec": "mpeg4", "n_frames": 8}
    assert video.probe_video(out.read_bytes()) == probe
    frames = decode_all(out)
    assert frames.shape == (8, 40, 48, 3)
    refs = [expected(scene / f"frame-{k}.color.jpg", (48, 40)).astype(float) for k in range(8)]
    for k in range(8):
        errs = [np.abs(frames[k] - r).mean() for r in refs]
        assert errs[k] < 6, errs
        assert int(np.argmin(errs)) == k  # frames are in index order
    assert [p.name for p in out.parent.iterdir()] == ["scene0000_00.mp4"]


def test_cli_encode_default_preset(tmp_path: Path, cli) -> None:
    scene = make_scene(tmp_path / "s", n=3, w=80, h=60)
    out = tmp_path / "s.mp4"
    r = cli("video", "encode", scene, out)
    assert json.loads(r.stdout)["width"] == 224
    probe = json.loads(cli("video", "probe", out).stdout)
    assert probe == {"width": 224, "height": 224, "fps": 20.0, "codec": "mpeg4", "n_frames": 3}


def test_draft_downscale_matches_full_decode(tmp_path: Path, monkeypatch) -> None:
    scene = make_scene(tmp_path / "s", n=2, w=320, h=240, extras=False)
    calls = []
    orig = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = orig(self, mode, size)
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = tmp_path / "s.mp4"
    video.encode_video(scene, out, size=(64, 48))
    # 320x240 -> 64x48 is 5x smaller: libjpeg decodes at 1/4 scale (80x60) before the resize
    assert calls and all(got == (80, 60) for _, got in calls)
    frames = decode_all(out)
    for k in range(2):
        ref = expected(scene / f"frame-{k}.color.jpg", (64, 48))
        assert np.abs(frames[k].astype(float) - ref).mean() < 6


def test_keep_aspect_pads_right_bottom_black(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s", n=2, w=96, h=48, extras=False)
    out = tmp_path / "s.mp4"
    video.encode_video(scene, out, size=(64, 64), keep_aspect=True)
    f = decode_all(out)[0].astype(float)
    assert f[36:].mean() < 12  # rows 32..63 are padding
    ref = expected(scene / "frame-0.color.jpg", (64, 32))
    assert np.abs(f[:30] - ref[:30]).mean() < 8


def test_odd_size_and_gop(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s", n=10, extras=False)
    out = tmp_path / "odd.mp4"
    video.encode_video(scene, out, size=(45, 33), gop=3)
    p = video.probe_video(out)
    assert (p["width"], p["height"], p["n_frames"]) == (45, 33, 10)
    with av.open(str(out)) as c:
        keys = [pk.is_keyframe for pk in c.demux(video=0) if pk.size]
    assert keys[0] and keys[3] and keys[6] and keys[9]
    assert decode_all(out).shape == (10, 33, 45, 3)


def _assert_cli_error(cli, tmp_path: Path, args: list, *needles: str) -> None:
    out = tmp_path / "out" / "v.mp4"
    r = cli("video", "encode", *args, out, check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_cli_bad_inputs(tmp_path: Path, cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".gitkeep").write_text("")
    _assert_cli_error(cli, tmp_path, [empty], str(empty), "no frame-")

    gap = make_scene(tmp_path / "gap", n=4, extras=False)
    (gap / "frame-2.color.jpg").unlink()
    _assert_cli_error(cli, tmp_path, [gap], "frame-2.color.jpg is missing")

    png = make_scene(tmp_path / "png", n=4, extras=False)
    Image.fromarray(scene_frame(2, 96, 72)).save(png / "frame-2.color.jpg", format="PNG")
    _assert_cli_error(cli, tmp_path, [png], str(png / "frame-2.color.jpg"), "not a JPEG")

    junk = make_scene(tmp_path / "junk", n=4, extras=False)
    (junk / "frame-3.color.jpg").write_bytes(b"\xff\xd8 not really")
    _assert_cli_error(cli, tmp_path, [junk], str(junk / "frame-3.color.jpg"))

    mixed = make_scene(tmp_path / "mixed", n=4, extras=False)
    Image.fromarray(scene_frame(1, 64, 48)).save(mixed / "frame-1.color.jpg", quality=90)
    _assert_cli_error(cli, tmp_path, [mixed], str(mixed / "frame-1.color.jpg"), "64x48", "96x72")

    padded = tmp_path / "padded"
    padded.mkdir()
    Image.fromarray(scene_frame(0, 96, 72)).save(padded / "frame-000000.color.jpg")
    _assert_cli_error(cli, tmp_path, [padded], "frame-000000.color.jpg", "zero-padded")

    good = make_scene(tmp_path / "good", n=2, extras=False)
    _assert_cli_error(cli, tmp_path, [good, "--codec", "libx264", "--size", "45x33"],
                      "libx264", "45x33")
    _assert_cli_error(cli, tmp_path, [good, "--codec", "no-such-codec"], "no-such-codec")
    _assert_cli_error(cli, tmp_path, [tmp_path / "absent"], "absent")

    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    r = cli("video", "probe", text, check=False)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and str(text) in r.stderr


def test_encode_replaces_existing_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old")
    bad = make_scene(tmp_path / "bad", n=3, extras=False)
    (bad / "frame-1.color.jpg").write_bytes(b"garbage")
    with pytest.raises(ClipbertError):
        video.encode_video(bad, out, size=(32, 32))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "v.mp4"]


@pytest.mark.parametrize(
    ("n", "n_clips", "expect"),
    [
        # clip_size = 2 / 2 * 20 = 20 frames; delta = n - 20
        (100, 1, [[0, 19]]),
        (100, 2, [[0, 19], [40, 59]]),  # starts 80*0/2, 80*1/2
        (100, 3, [[0, 19], [26, 45], [53, 72]]),  # 26.67 -> 26, 45.67 -> 45, 53.33, 72.33
        (20, 2, [[0, 19], [0, 19]]),  # delta 0
        (5, 1, [[0, 4]]),  # shorter than one clip: clamped to the last frame
        (1, 2, [[0, 0], [0, 0]]),
    ],
)
def test_clip_indices_evaluation(n: int, n_clips: int, expect: list) -> None:
    assert video.clip_frame_indices(n, 20, 2, 2, n_clips, train=False) == expect


def test_clip_indices_more_frames_and_rates() -> None:
    # num_frm 4 at fps 1 of a 10 fps video: clip of 40 frames, linspace(0, 39, 4) = 0, 13, 26, 39
    assert video.clip_frame_indices(50, 10, 4, 1, 1, train=False) == [[0, 13, 26, 39]]
    # the same on a 30-frame video: 26 and 39 are clamped to 29
    assert video.clip_frame_indices(30, 10, 4, 1, 1, train=False) == [[0, 13, 26, 29]]
    # one frame per clip
    assert video.clip_frame_indices(60, 20, 1, 2, 2, train=False) == [[0], [25]]


def test_clip_indices_training_matches_uniform_draws() -> None:
    n, clips = 83, 8
    got = video.clip_frame_indices(n, 20, 2, 2, clips, train=True,
                                   rng=np.random.default_rng(7))
    starts = np.random.default_rng(7).uniform(0, 63, size=clips)
    want = [[int(s), int(np.floor(s + 19))] for s in starts]
    assert got == want
    assert len({tuple(c) for c in got}) > 1
    short = video.clip_frame_indices(7, 20, 2, 2, 3, train=True, rng=np.random.default_rng(0))
    assert short == [[0, 6]] * 3


def test_clip_indices_reject_empty_video() -> None:
    with pytest.raises(ClipbertError):
        video.clip_frame_indices(0, 20, 2, 2, 1, train=False)


def test_decode_frames_order_repeats_and_errors(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s", n=8, extras=False)
    out = tmp_path / "s.mp4"
    video.encode_video(scene, out, size=(48, 48))
    every = decode_all(out)
    got = video.decode_frames(out.read_bytes(), [5, 1, 5, 0])
    assert got.dtype == np.uint8 and got.shape == (4, 48, 48, 3)
    assert np.array_equal(got, every[[5, 1, 5, 0]])
    assert np.array_equal(video.decode_frames(out, [7]), every[[7]])
    with pytest.raises(ClipbertError, match="ends after 8 frames"):
        video.decode_frames(out, [8])
    with pytest.raises(ClipbertError, match="cannot open video"):
        video.decode_frames(b"\x00" * 100, [0])
    data = out.read_bytes()
    with pytest.raises(ClipbertError):
        video.decode_frames(data[: len(data) // 3], [7])


def test_sample_clips_shape(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "s", n=30, extras=False)
    out = tmp_path / "s.mp4"
    video.encode_video(scene, out, size=(32, 32))
    every = decode_all(out)
    clips = video.sample_clips(out, num_frm=2, fps=2, video_fps=20, n_clips=2, train=False)
    assert clips.shape == (2, 2, 32, 32, 3)
    assert np.array_equal(clips[0], every[[0, 19]]) and np.array_equal(clips[1], every[[5, 24]])
