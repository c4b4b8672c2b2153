"""One scene's job (issue 23): the same index, frames and video as the three stages run apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_frames import make_scan

from clipbert import frames, scene, sens, video
from clipbert.errors import ClipbertError

SETTINGS = {"stride": 3, "depth": True, "poses": True}


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("preset", ["faithful", "improved"])
def test_one_job_makes_what_the_three_stages_make(tmp_path: Path, preset: str) -> None:
    scan = tmp_path / "scene0001_00.sens"
    make_scan(scan, 10)
    one, apart = tmp_path / "one", tmp_path / "apart"
    info = scene.build_scene(scan, one / "index.json", one / "frames", one / "v.mp4",
                             size=(40, 32), preset=preset, **SETTINGS)
    sens.write_index(scan, apart / "index.json")
    frames.export_frames(scan, apart / "frames", **SETTINGS)
    video.encode_video(apart / "frames", apart / "v.mp4", size=(40, 32), preset=preset)
    assert (one / "index.json").read_bytes() == (apart / "index.json").read_bytes()
    assert files(one / "frames") == files(apart / "frames")
    assert (one / "v.mp4").read_bytes() == (apart / "v.mp4").read_bytes()
    assert info["source_frames"] == 10 and info["n_frames"] == 4 and info["preset"] == preset


def test_a_bad_setting_leaves_the_stages_before_it(tmp_path: Path) -> None:
    """Each output is written atomically in turn: a video that cannot be made leaves no mp4
    and no temporary file (Snakemake then removes the job's other outputs)."""
    scan = tmp_path / "s.sens"
    make_scan(scan, 4)
    with pytest.raises(ClipbertError, match="cannot encode 41x33"):  # odd: not for libx264
        scene.build_scene(scan, tmp_path / "i.json", tmp_path / "f", tmp_path / "v.mp4",
                          size=(41, 33), codec="libx264")
    assert (tmp_path / "i.json").is_file() and not (tmp_path / "v.mp4").exists()
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*"))
