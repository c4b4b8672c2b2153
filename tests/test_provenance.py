"""The provenance record (clipbert.provenance): what it holds, `clipbert env`, the report's table,
and the video recipe keyed on the library versions that decide a video's bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import av
import pytest

from clipbert import demo, provenance, report, video
from clipbert.errors import ClipbertError


def test_the_record_names_what_decides_a_result() -> None:
    rec = provenance.record(threads=3)
    json.dumps(rec)  # JSON-ready, for every result file
    assert rec["python"].startswith("3.")
    assert set(rec["torch"]) == {"version", "cuda", "cudnn", "devices"} and rec["torch"]["devices"]
    for name in ("torchvision", "transformers", "av", "opencv-python-headless", "numpy", "lmdb",
                 "snakemake", "snakemake-executor-plugin-slurm"):
        assert rec["packages"][name] == version(name), name
    libs = av.library_versions
    assert rec["pyav_ffmpeg"]["libavcodec"] == ".".join(map(str, libs["libavcodec"]))
    assert rec["pyav_ffmpeg"]["libavformat"] == ".".join(map(str, libs["libavformat"]))
    assert set(rec["opencv"]) == {"version", "libavcodec", "libavformat", "libswscale"}
    assert rec["clipbert"]["version"] == "0.1.0" and "dirty" in rec["clipbert"]
    assert rec["cpu"]["threads"] == 3 and rec["cpu"]["model"] and rec["cpu"]["cores"] >= 1
    assert rec["lock"]["file"] == "envs/requirements.lock"
    assert isinstance(rec["lock"]["matches"], bool)
    assert rec["lock"]["matches"] or rec["lock"]["why"]


def test_commit_and_dirty_flag(tmp_path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    state = provenance.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"commit": state["commit"], "dirty": True}


def test_clipbert_env_prints_the_record(cli) -> None:
    table = cli("env").stdout
    libavcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    assert any(line.split() == ["pyav_ffmpeg.libavcodec", libavcodec]
               for line in table.splitlines()), table
    assert "lock.matches" in table and "clipbert.commit" in table
    proc = cli("env", "--json", "--check", check=False)
    rec = json.loads(proc.stdout)
    assert rec["pyav_ffmpeg"]["libavcodec"] == libavcodec
    assert proc.returncode == (0 if rec["lock"]["matches"] else 1)  # --check: the lock's or not


def test_the_reports_table_of_an_accuracy_file(tmp_path) -> None:
    acc = tmp_path / "test_acc.json"
    rec = provenance.record()
    acc.write_text(json.dumps({"overall": 50.0, "environment": rec}))
    line = report.environment_table(acc, tmp_path / "env.tsv")
    rows = [r.split("\t") for r in (tmp_path / "env.tsv").read_text().splitlines()]
    assert rows[0] == ["key", "value"]
    assert ["pyav_ffmpeg.libavcodec", rec["pyav_ffmpeg"]["libavcodec"]] in rows
    assert ["lock.matches", str(rec["lock"]["matches"])] in rows
    assert rec["pyav_ffmpeg"]["libavcodec"] in line
    acc.write_text(json.dumps({"overall": 50.0}))
    with pytest.raises(ClipbertError, match=f"^{acc}: top level: missing key 'environment'"):
        report.environment_table(acc, tmp_path / "again.tsv")
    assert not (tmp_path / "again.tsv").exists()


@pytest.mark.parametrize("preset", ["faithful", "improved"])
def test_a_new_libavcodec_changes_the_scene_rules_encoder(monkeypatch, preset) -> None:
    """A PyAV release with another FFmpeg changes the `scene` rule's `encoder` param, so that
    Snakemake re-encodes every video (tests/test_workflow.py shows it on a finished run)."""
    key = video.encoder_key(preset)
    assert key.startswith(video.ENCODERS[preset] + " libavcodec ")
    frames = "opencv-python-headless" if preset == "faithful" else "pillow"
    assert key.endswith(f" {frames.split('-')[0]} {version(frames)}")
    monkeypatch.setitem(av.library_versions, "libavcodec", (99, 1, 100))
    faked = video.encoder_key(preset)
    assert faked != key and " libavcodec 99.1.100 " in faked


def test_the_demos_maker_names_pillow_and_numpy() -> None:
    assert demo.maker_key() == f"pillow {version('pillow')} numpy {version('numpy')}"


def test_the_record_needs_neither_opencv_nor_pyav(monkeypatch) -> None:
    """The GPU check's environment has no OpenCV: a model file saved there still records what
    it can, and says OpenCV is absent."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setitem(sys.modules, "av", None)
    assert provenance.opencv_ffmpeg() == {"version": None}
    assert provenance.pyav_libraries() == {}
