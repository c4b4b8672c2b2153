"""SQA3D -> ClipBERT jsonl: exact rows, statistics, validation before writing, idempotent reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_SQA, needs_shared

from clipbert import sqa
from clipbert.errors import ClipbertError

ANSWERS = ["piano", "left", "right", "two", "TV"]
EARLY = SHARED_SQA / "first_commit_993bd04"


def answer_dict(answers=ANSWERS) -> list:
    return [{a: i for i, a in enumerate(answers)}, {str(i): a for i, a in enumerate(answers)}]


def qrec(qid, scene, question, situation="I am facing the desk.") -> dict:
    return {"scene_id": scene, "situation": situation, "alternative_situation": ["x"],
            "question": question, "question_id": qid}


def arec(qid, scene, answer) -> dict:
    return {"scene_id": scene, "question_type": "N/A", "answer_type": "other",
            "question_id": qid, "answers": [{"answer": answer, "answer_confidence": "yes",
                                             "answer_id": 1}],
            "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1}, "position": {"x": 0, "y": 0, "z": 0}}


SYNTH = {
    "train": [
        (1, "scene0000_00", "What instrument is here?", "piano"),
        (2, "scene0000_00", "Is the door open?", "yes"),
        (3, "scene0001_00", "which way to the sink?", "left"),
    ],
    "val": [
        (10, "scene0002_00", "How many chairs?", "two"),
        (11, "scene0002_01", "What's on my left?", "TV"),
    ],
    "test": [
        (20, "scene0003_00", "Can I sit?", "no"),
        (21, "scene0004_00", "Where is the TV?", "right"),
        (22, "scene0004_00", "  WHAT color is it?", "red"),
    ],
}


def write_release(root: Path, splits: dict, answers: list | None = None, flat=False) -> Path:
    """A folder laid out as the SQA3D release (`balanced/` unless `flat`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "answer_dict.json").write_text(json.dumps(answer_dict(answers or ANSWERS)))
    sub = root if flat else root / "balanced"
    sub.mkdir(exist_ok=True)
    for split, (qs, anns) in splits.items():
        (sub / sqa.questions_name(split)).write_text(json.dumps(
            {"info": {}, "license": {}, "questions": qs}))
        (sub / sqa.annotations_name(split)).write_text(json.dumps(
            {"info": {}, "annotations": anns}))
    return root


def synth_release(root: Path, flat=False) -> Path:
    splits = {s: ([qrec(q, sc, text) for q, sc, text, _ in rows],
                  [arec(q, sc, ans) for q, sc, _, ans in rows]) for s, rows in SYNTH.items()}
    return write_release(root, splits, flat=flat)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_answer_type():
    assert sqa.answer_type("What is it?") == "what"
    assert sqa.answer_type("WHICH  way?") == "which"
    # upstream's first word is before the first single space: a leading one makes it empty
    assert sqa.answer_type(" What is it?") == "others"
    assert sqa.answer_type("What\tis it?") == "others"
    assert sqa.answer_type("Is it?") == "is"
    assert sqa.answer_type("how many?") == "how"
    assert sqa.answer_type("Can I?") == "can"
    assert sqa.answer_type("What's that?") == "others"
    assert sqa.answer_type("Where is it?") == "others"
    assert sqa.answer_type("") == "others"


def test_convert_synthetic(tmp_path):
    src = synth_release(tmp_path / "sqa")
    out = tmp_path / "out"
    stats = sqa.convert(src, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "stats.json", "test.jsonl", "train.jsonl", "train_ans2label.json", "val.jsonl"]
    rows = lines(out / "test.jsonl")
    assert [list(r) for r in rows] == [["answer", "question", "video_id", "answer_type",
                                        "question_id"]] * 3
    assert rows[0] == {"answer": "unknown", "question": "I am facing the desk. Can I sit?",
                       "video_id": "scene0003_00", "answer_type": "can", "question_id": 20}
    assert [r["answer"] for r in rows] == ["unknown", "right", "unknown"]
    # "  WHAT color": upstream's first word of split(' ') is empty, so the type is `others`
    assert [r["answer_type"] for r in rows] == ["can", "others", "others"]
    assert [r["answer"] for r in lines(out / "val.jsonl")] == ["two", "TV"]
    assert [r["question_id"] for r in lines(out / "train.jsonl")] == [1, 2, 3]
    assert json.loads((out / "train_ans2label.json").read_text()) == answer_dict()[0]
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["test"] == {
        "questions": 3, "scenes": 2,
        "answer_types": {"what": 0, "is": 0, "how": 0, "can": 1, "which": 0, "others": 2},
        "unknown": 2, "unknown_percent": 66.67, "accuracy_ceiling": 33.33}
    assert stats["val"]["scenes"] == 2 and stats["val"]["unknown"] == 0
    assert stats["train"]["answer_types"]["which"] == 1


def test_flat_layout_and_answer_dict_override(tmp_path):
    flat = synth_release(tmp_path / "flat", flat=True)
    out = tmp_path / "out"
    sqa.convert(flat, out, splits=["val"])
    assert [r["question_id"] for r in lines(out / "val.jsonl")] == [10, 11]
    other = tmp_path / "vocab.json"
    other.write_text(json.dumps(answer_dict(["two"])))
    (flat / "answer_dict.json").unlink()
    stats = sqa.convert(flat, out, splits=["val"], answer_dict=other)
    assert stats["val"]["unknown"] == 1
    assert json.loads((out / "train_ans2label.json").read_text()) == {"two": 0}


def test_rerun_is_byte_identical_and_leaves_other_files(tmp_path, cli):
    src = synth_release(tmp_path / "sqa")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not mine")
    cli("sqa", "convert", src, out)
    first = snapshot(out)
    cli("sqa", "convert", src, out)
    assert snapshot(out) == first
    assert len(lines(out / "train.jsonl")) == 3
    # A partial rerun replaces only what it converts; stats.json describes that run.
    cli("sqa", "convert", src, out, "--splits", "test")
    assert snapshot(out)["train.jsonl"] == first["train.jsonl"]
    assert set(json.loads((out / "stats.json").read_text())) == {"test"}
    assert (out / "keep.txt").read_text() == "not mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _mutate(case: str, q: list, a: list) -> tuple[str, str]:
    """Break one split of the synthetic release; return (file kind, question id) to expect."""
    if case == "no_annotation":
        del a[1]
        return "questions", "2"
    if case == "no_question":
        del q[2]
        return "annotations", "3"
    if case == "dup_question":
        q.append(dict(q[0]))
        return "questions", "1"
    if case == "dup_annotation":
        a.append(dict(a[1]))
        return "annotations", "2"
    if case == "bad_scene":
        q[1]["scene_id"] = "scene12_00"
        return "questions", "2"
    if case == "bad_scene_annotation":
        a[2]["scene_id"] = "scene0001_0"
        return "annotations", "3"
    if case == "scene_mismatch":
        a[2]["scene_id"] = "scene0009_00"
        return "annotations", "3"
    if case == "empty_question":
        q[2]["question"] = "   "
        return "questions", "3"
    if case == "no_answers":
        a[0]["answers"] = []
        return "annotations", "1"
    if case == "bad_qid":
        q[1]["question_id"] = None
        return "questions", "entry 1"
    raise AssertionError(case)


BAD_CASES = ["no_annotation", "no_question", "dup_question", "dup_annotation", "bad_scene",
             "bad_scene_annotation", "scene_mismatch", "empty_question", "no_answers", "bad_qid"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_record_via_cli(tmp_path, cli, case):
    q = [qrec(i, sc, t) for i, sc, t, _ in SYNTH["train"]]
    a = [arec(i, sc, ans) for i, sc, _, ans in SYNTH["train"]]
    kind, qid = _mutate(case, q, a)
    src = write_release(tmp_path / "sqa", {"train": (q, a), "test": ([qrec(20, "scene0003_00",
                                                                          "Can I?")],
                                                                    [arec(20, "scene0003_00",
                                                                          "no")])})
    out = tmp_path / "out"
    proc = cli("sqa", "convert", src, out, "--splits", "test,train", check=False)
    assert proc.returncode == 1
    msg = proc.stderr.strip()
    assert msg.count("\n") == 0 and msg.startswith("error: ")
    name = sqa.questions_name("train") if kind == "questions" else sqa.annotations_name("train")
    assert str(src / "balanced" / name) in msg
    assert (f"question {qid}" if qid.isdigit() else qid) in msg
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("value, shown", [(42, "'answer' is a int (42), not text"),
                                           (["no"], "'answer' is a list (['no']), not text"),
                                           ("  ", "empty or missing 'answer'")])
def test_answer_that_is_not_text_names_its_type(tmp_path, value, shown):
    """An answer given as a number is a mis-fed file, reported as what it is, not as absent."""
    q = [qrec(i, sc, t) for i, sc, t, _ in SYNTH["test"]]
    a = [arec(i, sc, ans) for i, sc, _, ans in SYNTH["test"]]
    a[1]["answers"][0]["answer"] = value
    src = write_release(tmp_path / "sqa", {"test": (q, a)})
    with pytest.raises(ClipbertError) as info:
        sqa.convert(src, tmp_path / "out", splits=("test",))
    assert str(info.value) == (f"{src / 'balanced' / sqa.annotations_name('test')}: "
                               f"question 21: {shown}")


@pytest.mark.parametrize("missing", ["answer_dict", "questions", "annotations"])
def test_missing_file_keeps_previous_outputs(tmp_path, cli, missing):
    src = synth_release(tmp_path / "sqa")
    out = tmp_path / "out"
    cli("sqa", "convert", src, out)
    before = snapshot(out)
    victim = {"answer_dict": src / "answer_dict.json",
              "questions": src / "balanced" / sqa.questions_name("val"),
              "annotations": src / "balanced" / sqa.annotations_name("val")}[missing]
    victim.unlink()
    proc = cli("sqa", "convert", src, out, check=False)
    assert proc.returncode == 1
    assert victim.name in proc.stderr and proc.stderr.count("\n") == 1
    assert snapshot(out) == before


def test_malformed_json_and_structure(tmp_path, cli):
    src = synth_release(tmp_path / "sqa")
    qfile = src / "balanced" / sqa.questions_name("test")
    qfile.write_text('{"questions": [')
    proc = cli("sqa", "convert", src, tmp_path / "out", check=False)
    assert proc.returncode == 1 and f"{qfile}: not valid JSON" in proc.stderr
    qfile.write_text('{"items": []}')
    with pytest.raises(ClipbertError, match="'questions' list"):
        sqa.convert(src, tmp_path / "out")
    qfile.write_text('{"questions": []}')
    with pytest.raises(ClipbertError, match="no questions"):
        sqa.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_split_names(tmp_path):
    src = synth_release(tmp_path / "sqa")
    for splits in (["../x"], ["test", "test"], []):
        with pytest.raises(ClipbertError):
            sqa.convert(src, tmp_path / "out", splits=splits)
    with pytest.raises(ClipbertError, match="SQA3D folder not found"):
        sqa.convert(tmp_path / "nope", tmp_path / "out")


def test_load_answer_dict(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(answer_dict()))
    assert sqa.load_answer_dict(p) == {"piano": 0, "left": 1, "right": 2, "two": 3, "TV": 4}
    p.write_text(json.dumps({"b": 1, "a": 0}))
    assert list(sqa.load_answer_dict(p)) == ["a", "b"]
    bad = [
        [{"a": 0}, {"0": "b"}],          # reverse map disagrees
        [{"a": 0, "b": 2}, {"0": "a", "2": "b"}],  # gap in labels
        [{"a": 0}],                      # one element
        {"a": True},                     # not an integer label
        {},                              # empty
        "answers",                       # wrong type
    ]
    for obj in bad:
        p.write_text(json.dumps(obj))
        with pytest.raises(ClipbertError, match=str(p)):
            sqa.load_answer_dict(p)


def test_scenes_and_video_check(tmp_path, cli):
    src = synth_release(tmp_path / "sqa")
    out = tmp_path / "out"
    sqa.convert(src, out)
    test = out / "test.jsonl"
    assert sqa.split_scenes(test) == ["scene0003_00", "scene0004_00"]
    sqa.check_videos(test, ["scene0003_00", "scene0004_00", "scene0100_00"])
    with pytest.raises(ClipbertError) as e:
        sqa.check_videos(test, ["scene0003_00"])
    assert str(e.value) == (f"{test}: 2 questions (in 1 scene) have no video: scene0004_00 "
                            "(questions 21, 22); encode the scene's video or remove its questions")

    proc = cli("sqa", "scenes", test, out / "val.jsonl")
    assert proc.stdout.split() == ["scene0002_00", "scene0002_01", "scene0003_00",
                                   "scene0004_00"]
    cli("sqa", "scenes", test, "--out", tmp_path / "scenes.txt")
    assert (tmp_path / "scenes.txt").read_text() == "scene0003_00\nscene0004_00\n"

    videos = tmp_path / "mp4"
    videos.mkdir()
    (videos / "scene0003_00.mp4").write_bytes(b"x")
    proc = cli("sqa", "check", test, "--videos", videos, check=False)
    assert proc.returncode == 1 and "scene0004_00" in proc.stderr
    (videos / "scene0004_00.mp4").write_bytes(b"x")
    cli("sqa", "check", test, "--videos", videos)
    proc = cli("sqa", "check", test, "--videos", tmp_path / "scenes.txt")
    assert "every scene has a video" in proc.stdout
    with pytest.raises(ClipbertError, match="file not found"):
        sqa.split_scenes(out / "nope.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"answer": "x"}\n')
    with pytest.raises(ClipbertError, match="record 1: missing video_id"):
        sqa.split_scenes(tmp_path / "bad.jsonl")


def test_available_videos_from_lmdb(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for key in ("scene0003_00", "scene0004_00"):
            txn.put(key.encode(), b"mp4 bytes")
    env.close()
    assert sqa.available_videos(tmp_path / "db") == {"scene0003_00", "scene0004_00"}
    with pytest.raises(ClipbertError, match="no such video"):
        sqa.available_videos(tmp_path / "missing")


# ---- the real SQA3D files -------------------------------------------------------------------

REAL_TEST = {"questions": 3519, "scenes": 67,
             "answer_types": {"what": 1144, "is": 652, "how": 465, "can": 338, "which": 351,
                              "others": 569},
             "unknown": 95, "unknown_percent": 2.7, "accuracy_ceiling": 97.3}


@needs_shared
def test_real_test_split(tmp_path, cli):
    out = tmp_path / "out"
    proc = cli("sqa", "convert", SHARED_SQA, out, "--splits", "test")
    assert json.loads(proc.stdout) == {"test": REAL_TEST}
    rows = lines(out / "test.jsonl")
    assert len(rows) == 3519 and len({r["question_id"] for r in rows}) == 3519
    assert rows[0] == {
        "answer": "piano",
        "question": "I am standing by the ottoman on my right facing a couple of toolboxes. "
                    "What instrument in front of me is ebony and ivory?",
        "video_id": "scene0050_00", "answer_type": "what", "question_id": 220602000002}
    assert len(sqa.split_scenes(out / "test.jsonl")) == 67
    vocab = json.loads((out / "train_ans2label.json").read_text())
    assert len(vocab) == 706 and "unknown" not in vocab and sorted(vocab.values()) == list(
        range(706))
    first = snapshot(out)
    cli("sqa", "convert", SHARED_SQA, out, "--splits", "test")
    assert snapshot(out) == first


@needs_shared
def test_real_early_commit_set(tmp_path):
    stats = sqa.convert(EARLY, tmp_path / "out", splits=("val", "test"),
                        answer_dict=SHARED_SQA / "answer_dict.json")
    assert stats["val"] == REAL_TEST
    assert stats["test"]["questions"] == 3261 and stats["test"]["scenes"] == 65
    assert sum(stats["test"]["answer_types"].values()) == 3261
    assert (tmp_path / "out" / "val.jsonl").read_bytes() != (tmp_path / "out" /
                                                             "test.jsonl").read_bytes()


def _real(name: str) -> tuple[list, list]:
    q = json.loads((SHARED_SQA / sqa.questions_name(name)).read_text())["questions"]
    a = json.loads((SHARED_SQA / sqa.annotations_name(name)).read_text())["annotations"]
    return q, a


@needs_shared
def test_real_release_layout_with_train(tmp_path, cli):
    """train is not shipped in shared/: build one from real records in the release layout."""
    q, a = _real("test")
    src = tmp_path / "sqa_task"
    (src / "balanced").mkdir(parents=True)
    shutil.copy(SHARED_SQA / "answer_dict.json", src)
    for split, (qs, an) in {"train": (q[:300], a[:300]), "val": (q[300:400], a[300:400]),
                            "test": (q, a)}.items():
        (src / "balanced" / sqa.questions_name(split)).write_text(json.dumps({"questions": qs}))
        (src / "balanced" / sqa.annotations_name(split)).write_text(
            json.dumps({"annotations": an}))
    out = tmp_path / "out"
    stats = json.loads(cli("sqa", "convert", src, out).stdout)
    assert [stats[s]["questions"] for s in ("train", "val", "test")] == [300, 100, 3519]
    assert stats["test"] == REAL_TEST
    assert lines(out / "train.jsonl") == lines(out / "test.jsonl")[:300]


@needs_shared
@pytest.mark.parametrize("case", ["drop_annotation", "empty_question", "bad_scene"])
def test_real_bad_inputs(tmp_path, cli, case):
    q, a = _real("test")
    victim = q[1234]
    qid = victim["question_id"]
    if case == "drop_annotation":
        a = [x for x in a if x["question_id"] != qid]
    elif case == "empty_question":
        victim["question"] = ""
    else:
        victim["scene_id"] = "scene0050"
    src = tmp_path / "sqa"
    src.mkdir()
    shutil.copy(SHARED_SQA / "answer_dict.json", src)
    (src / sqa.questions_name("test")).write_text(json.dumps({"questions": q}))
    (src / sqa.annotations_name("test")).write_text(json.dumps({"annotations": a}))
    out = tmp_path / "out"
    proc = cli("sqa", "convert", src, out, "--splits", "test", check=False)
    assert proc.returncode == 1
    assert f"{src / sqa.questions_name('test')}: question {qid}:" in proc.stderr
    assert not out.exists()
