"""The embedded demo: deterministic, SQA3D-shaped, and answerable only by looking."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest
from conftest import SHARED_SQA, needs_shared, run_cli

from clipbert import demo, sens


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_cli("demo", "make", out, "--scenes", "10", "--frames", "12", "--seed", "3")
    return out


def load(path):
    return json.loads(path.read_text())


def test_layout_and_scans(demo_dir):
    for scene in demo.scene_ids(10):
        path = demo_dir / "scans" / scene / f"{scene}.sens"
        with sens.SensReader(path) as r:
            assert r.num_frames == 12
            assert r.header.color_compression == 2 and r.header.depth_compression == 1
            assert r.imu_count == 4
            assert r.color_bytes(0)[:2] == b"\xff\xd8"
            assert r.depth(5).shape == (r.header.depth_height, r.header.depth_width)
    for split in ("train", "val", "test"):
        for kind in ("questions", "sqa_annotations"):
            assert (demo_dir / "sqa_task" / "balanced" /
                    f"v1_balanced_{kind}_{split}_scannetv2.json").is_file()
    assert (demo_dir / "vocab.txt").read_text().startswith("[PAD]\n")


def test_deterministic(demo_dir, tmp_path):
    again = tmp_path / "again"
    run_cli("demo", "make", again, "--scenes", "10", "--frames", "12", "--seed", "3")
    for path in demo_dir.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(demo_dir)).read_bytes(), path
    other = tmp_path / "other"
    run_cli("demo", "make", other, "--scenes", "10", "--frames", "12", "--seed", "4")
    name = "scans/scene0000_00/scene0000_00.sens"
    assert (other / name).read_bytes() != (demo_dir / name).read_bytes()


def test_splits_are_by_scene(demo_dir):
    scenes = {}
    for split in ("train", "val", "test"):
        qs = load(demo_dir / "sqa_task/balanced" / f"v1_balanced_questions_{split}_scannetv2.json")
        scenes[split] = {q["scene_id"] for q in qs["questions"]}
    assert scenes["train"] and scenes["val"] and scenes["test"]
    assert not (scenes["train"] & scenes["test"]) and not (scenes["train"] & scenes["val"])


@needs_shared
def test_same_schema_as_real_sqa3d(demo_dir):
    real_dir = SHARED_SQA
    for kind, key in (("questions", "questions"), ("sqa_annotations", "annotations")):
        real = load(real_dir / f"v1_balanced_{kind}_test_scannetv2.json")
        ours = load(demo_dir / "sqa_task/balanced" / f"v1_balanced_{kind}_test_scannetv2.json")
        assert set(ours) == set(real)
        assert set(ours[key][0]) == set(real[key][0])
    real_dict = load(real_dir / "answer_dict.json")
    ours_dict = load(demo_dir / "sqa_task" / "answer_dict.json")
    assert isinstance(ours_dict, list) and len(ours_dict) == len(real_dict) == 2


def strip_situation(question: str) -> str:
    return re.sub(r"^I am .*? behind me\. ", "", question)


def test_text_alone_does_not_give_the_answer(tmp_path):
    """Across many scenes, no question wording fixes its answer, and no answer type is
    dominated by one answer: a blind model cannot do much better than the majority."""
    out = tmp_path / "demo"
    demo.make_demo(out, scenes=40, seed=0, frames=2)
    by_text: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for split in ("train", "val", "test"):
        qs = load(out / "sqa_task/balanced" / f"v1_balanced_questions_{split}_scannetv2.json")
        anns = load(out / "sqa_task/balanced" /
                    f"v1_balanced_sqa_annotations_{split}_scannetv2.json")
        answer = {a["question_id"]: a["answers"][0]["answer"] for a in anns["annotations"]}
        for q in qs["questions"]:
            by_text[strip_situation(q["question"])][answer[q["question_id"]]] += 1
    frequent = {t: c for t, c in by_text.items() if sum(c.values()) >= 20}
    assert len(frequent) >= 8
    for text, counts in frequent.items():
        top = counts.most_common(1)[0][1] / sum(counts.values())
        assert top < 0.7, (text, counts)


def test_attributes_are_balanced_and_distinct():
    rooms = demo.draw_rooms(np.random.default_rng(0), 12)
    for attr, values in (("wall", demo.COLORS), ("cabinet_side", ("left", "right")),
                         ("n_boxes", (1, 2, 3))):
        counts = collections.Counter(getattr(r, attr) for r in rooms)
        assert set(counts) == set(values), attr
        assert max(counts.values()) - min(counts.values()) <= 1, (attr, counts)
    for r in rooms:
        assert len({r.wall, r.floor, r.cabinet}) == 3


def test_too_few_scenes_is_an_error(tmp_path):
    proc = run_cli("demo", "make", tmp_path / "d", "--scenes", "2", check=False)
    assert proc.returncode != 0
    assert not (tmp_path / "d").exists()
