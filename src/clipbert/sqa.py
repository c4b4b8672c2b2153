"""SQA3D annotations -> ClipBERT jsonl, answer vocabulary and per-split statistics.

The published converter crashed, skipped the test split and appended on rerun; this one checks
every input before writing anything and replaces its outputs atomically, so a rerun is
byte-identical and a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path, read_json, read_jsonl
from clipbert.qa import ANS2LABEL, ANSWER_TYPES, UNKNOWN
from clipbert.vislmdb import VideoLMDB, key_of, mp4_name

SPLITS = ("train", "val", "test")
# SQA3D (Ma et al., ICLR 2023), Table 3, test split: the published ClipBERT baseline, and the
# blind (question-only) baseline of the same table, reported overall only.
PUBLISHED_CLIPBERT = {"overall": 43.31, "what": 30.24, "is": 60.12, "how": 38.71,
                      "can": 63.31, "which": 42.45, "others": 42.71}
PUBLISHED_BLIND = 43.65
SCENE_RE = re.compile(r"scene\d{4}_\d{2}")
_SPLIT_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")

ANSWER_DICT = "answer_dict.json"
STATS = "stats.json"


def questions_name(split: str) -> str:
    return f"v1_balanced_questions_{split}_scannetv2.json"


def annotations_name(split: str) -> str:
    return f"v1_balanced_sqa_annotations_{split}_scannetv2.json"


def answer_type(question: str) -> str:
    """The question's first word, lower-cased, if it is a tracked type, else `others`.

    The word is upstream's: the text before the first single space (`question.split(' ')[0]`),
    so a question with a leading space is `others`, as upstream counted it. Splitting on spaces
    (not letters) is what reproduces the published per-type counts: "What's" is `others`.
    """
    first = question.split(" ")[0].lower()
    return first if first in ANSWER_TYPES[:-1] else "others"


def _is_label(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_answer_dict(path: str | os.PathLike) -> dict[str, int]:
    """Answer -> label, ordered by label.

    Accepts the SQA3D `answer_dict.json` (`[answer->label, str(label)->answer]`) or a plain
    answer->label map such as a written `train_ans2label.json`. Labels must be 0..n-1 because
    they index the classifier's output.
    """
    path = Path(path)
    data = read_json(path)
    if isinstance(data, list):
        if len(data) != 2 or not all(isinstance(d, dict) for d in data):
            raise ClipbertError(f"{path}: expected [answer->label, label->answer], got a list "
                                f"of {len(data)}")
        ans2label, label2ans = data
    elif isinstance(data, dict):
        ans2label, label2ans = data, None
    else:
        raise ClipbertError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    if not ans2label:
        raise ClipbertError(f"{path}: the answer vocabulary is empty")
    for ans, label in ans2label.items():
        if not ans or not _is_label(label):
            raise ClipbertError(f"{path}: answer {ans!r}: label {label!r} is not an integer")
    labels = sorted(ans2label.values())
    if labels != list(range(len(labels))):
        raise ClipbertError(f"{path}: labels are not 0..{len(labels) - 1} without gaps or repeats")
    if label2ans is not None:
        for ans, label in ans2label.items():
            if label2ans.get(str(label)) != ans:
                raise ClipbertError(f"{path}: answer {ans!r}: label {label} maps back to "
                                    f"{label2ans.get(str(label))!r}")
        if len(label2ans) != len(ans2label):
            raise ClipbertError(f"{path}: {len(ans2label)} answers but {len(label2ans)} labels")
    return dict(sorted(ans2label.items(), key=lambda kv: kv[1]))


def _find(sqa_dir: Path, name: str) -> Path:
    """The release keeps split files under `balanced/`; a flat copy of them is accepted too."""
    for cand in (sqa_dir / "balanced" / name, sqa_dir / name):
        if cand.is_file():
            return cand
    raise ClipbertError(f"{sqa_dir / 'balanced' / name}: file not found (nor {sqa_dir / name})")


def _records(path: Path, key: str) -> list[dict]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ClipbertError(f"{path}: expected an object with a {key!r} list")
    return data[key]


def _qid(path: Path, i: int, rec: Any) -> int | str:
    if not isinstance(rec, dict):
        raise ClipbertError(f"{path}: entry {i}: expected an object, got {type(rec).__name__}")
    qid = rec.get("question_id")
    if not (_is_label(qid) or (isinstance(qid, str) and qid.strip())):
        raise ClipbertError(f"{path}: entry {i}: missing or invalid question_id {qid!r}")
    return qid


def _scene(path: Path, qid: int | str, rec: dict) -> str:
    scene = rec.get("scene_id")
    if not isinstance(scene, str) or not SCENE_RE.fullmatch(scene):
        raise ClipbertError(f"{path}: question {qid}: malformed scene id {scene!r} "
                            "(expected sceneNNNN_NN)")
    return scene


def _text(path: Path, qid: int | str, rec: dict, key: str) -> str:
    value = rec.get(key)
    if value is not None and not isinstance(value, str):
        # A number or a list is a mis-fed file, not an absent field: say what was there.
        raise ClipbertError(f"{path}: question {qid}: {key!r} is a {type(value).__name__} "
                            f"({str(value)[:40]}), not text")
    if value is None or not value.strip():
        raise ClipbertError(f"{path}: question {qid}: empty or missing {key!r}")
    return value


def _index(path: Path, records: list) -> dict[int | str, dict]:
    out: dict[int | str, dict] = {}
    for i, rec in enumerate(records):
        qid = _qid(path, i, rec)
        if qid in out:
            raise ClipbertError(f"{path}: question {qid}: duplicate question_id")
        out[qid] = rec
    return out


def convert_split(qpath: Path, apath: Path, vocab: dict[str, int]) -> list[dict]:
    """Validate one split's question/annotation pair and build its jsonl rows (question order)."""
    questions = _index(qpath, _records(qpath, "questions"))
    annotations = _index(apath, _records(apath, "annotations"))
    if not questions:
        raise ClipbertError(f"{qpath}: no questions")
    for qid in annotations:
        if qid not in questions:
            raise ClipbertError(f"{apath}: question {qid}: annotation without a question in "
                                f"{qpath.name}")
    rows = []
    for qid, q in questions.items():
        scene = _scene(qpath, qid, q)
        situation = q.get("situation")
        if not isinstance(situation, str):
            raise ClipbertError(f"{qpath}: question {qid}: missing 'situation'")
        question = _text(qpath, qid, q, "question")
        ann = annotations.get(qid)
        if ann is None:
            raise ClipbertError(f"{qpath}: question {qid}: no annotation in {apath.name}")
        if _scene(apath, qid, ann) != scene:
            raise ClipbertError(f"{apath}: question {qid}: scene {ann['scene_id']} differs from "
                                f"{scene} in {qpath.name}")
        answers = ann.get("answers")
        if not isinstance(answers, list) or not answers or not isinstance(answers[0], dict):
            raise ClipbertError(f"{apath}: question {qid}: no answers")
        answer = _text(apath, qid, answers[0], "answer")
        rows.append({
            "answer": answer if answer in vocab else UNKNOWN,
            "question": situation + " " + question,
            "video_id": scene,
            "answer_type": answer_type(question),
            "question_id": qid,
        })
    return rows


def split_stats(rows: Sequence[dict]) -> dict:
    """Counts for the log; the ceiling is the share of answers the classifier can ever output."""
    n = len(rows)
    types = Counter(r["answer_type"] for r in rows)
    unknown = sum(r["answer"] == UNKNOWN for r in rows)
    return {
        "questions": n,
        "scenes": len({r["video_id"] for r in rows}),
        "answer_types": {t: types.get(t, 0) for t in ANSWER_TYPES},
        "unknown": unknown,
        "unknown_percent": round(100.0 * unknown / n, 2) if n else 0.0,
        "accuracy_ceiling": round(100.0 * (n - unknown) / n, 2) if n else 0.0,
    }


def _check_splits(splits: Iterable[str]) -> list[str]:
    out = []
    for s in splits:
        if not isinstance(s, str) or not _SPLIT_NAME_RE.fullmatch(s):
            raise ClipbertError(f"split {s!r}: not a split name (letters, digits, _ and - only, "
                               "e.g. train,val,test)")
        if s in out:
            raise ClipbertError(f"split {s!r}: given twice; give each split once")
        out.append(s)
    if not out:
        raise ClipbertError("no splits given; name at least one, e.g. train,val,test")
    return out


def convert(
    sqa_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Iterable[str] = SPLITS,
    *,
    answer_dict: str | os.PathLike | None = None,
) -> dict:
    """Convert the SQA3D release in `sqa_dir` into ClipBERT's jsonl files in `out_dir`.

    Everything is read and validated before the first byte is written; then `{split}.jsonl`,
    `train_ans2label.json` and `stats.json` replace their previous versions (other files in
    `out_dir` are left alone). `answer_dict` overrides `sqa_dir/answer_dict.json` (the early
    commit's split files sit apart from it). Returns the statistics written to `stats.json`.
    """
    sqa_dir, out_dir = Path(sqa_dir), Path(out_dir)
    split_list = _check_splits(splits)
    if not sqa_dir.is_dir():
        raise ClipbertError(f"{sqa_dir}: SQA3D folder not found (the release's sqa_task folder: "
                           "answer_dict.json and balanced/)")
    vocab_path = Path(answer_dict) if answer_dict is not None else sqa_dir / ANSWER_DICT
    paths = {s: (_find(sqa_dir, questions_name(s)), _find(sqa_dir, annotations_name(s)))
             for s in split_list}
    return convert_files(paths, vocab_path, out_dir)


def convert_files(
    paths: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    answer_dict: str | os.PathLike,
    out_dir: str | os.PathLike,
) -> dict:
    """`convert` on named files: split -> (questions file, annotations file), and the answer
    vocabulary; what the workflow's rule calls with exactly its inputs."""
    out_dir = Path(out_dir)
    vocab = load_answer_dict(answer_dict)
    converted = {s: convert_split(Path(q), Path(a), vocab) for s, (q, a) in paths.items()}
    stats = {s: split_stats(rows) for s, rows in converted.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[Path, str] = {
        out_dir / f"{s}.jsonl": "".join(json.dumps(r) + "\n" for r in rows)
        for s, rows in converted.items()
    }
    outputs[out_dir / ANS2LABEL] = json.dumps(vocab, indent=2) + "\n"
    outputs[out_dir / STATS] = json.dumps(stats, indent=2) + "\n"
    # All files are written to temporaries first and renamed only once every write succeeded.
    with contextlib.ExitStack() as stack:
        for target, text in outputs.items():
            tmp = stack.enter_context(atomic_path(target))
            tmp.write_text(text, encoding="utf-8")
    return stats


def question_scenes(path: str | os.PathLike) -> set[str]:
    """Scene ids used by an SQA3D questions (or annotations) json file."""
    doc = read_json(path)
    items = None
    if isinstance(doc, dict):
        items = doc.get("questions", doc.get("annotations"))
    if not isinstance(items, list):
        raise ClipbertError(f"{path}: expected a 'questions' or 'annotations' list")
    scenes = set()
    for n, item in enumerate(items):
        scene = item.get("scene_id") if isinstance(item, dict) else None
        if not isinstance(scene, str) or not scene:
            raise ClipbertError(f"{path}: item {n}: no scene_id")
        scenes.add(scene)
    return scenes


def split_scenes(jsonl_path: str | os.PathLike) -> list[str]:
    """Sorted unique scene ids a split needs, so video work can be restricted to them."""
    return sorted({v for v, _ in _video_ids(Path(jsonl_path))})


def _video_ids(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise ClipbertError(f"{path}: file not found")
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        vid = row.get("video_id") if isinstance(row, dict) else None
        if not isinstance(vid, str) or not vid:
            raise ClipbertError(f"{path}: record {n}: missing video_id")
        out.append((vid, row.get("question_id", f"record {n}")))
    return out


_SHOW_SCENES = 20  # scenes listed by name when videos are missing
_SHOW_QIDS = 3  # question ids listed per scene


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def check_videos(jsonl_path: str | os.PathLike, available: Iterable[str],
                 where: str | os.PathLike | None = None) -> None:
    """Fail before training if any question's scene has no video, listing those scenes and a
    few of their question ids. `where` names the videos' place in the message (by default the
    one `available_videos` read them from)."""
    path = Path(jsonl_path)
    where = where if where is not None else getattr(available, "where", None)
    have = set(available)
    missing: dict[str, list] = {}
    for vid, qid in _video_ids(path):
        if vid not in have:
            missing.setdefault(vid, []).append(qid)
    if not missing:
        return
    n_q = sum(len(v) for v in missing.values())
    shown = sorted(missing)[:_SHOW_SCENES]

    def questions(qids: list) -> str:
        ids = ", ".join(map(str, qids[:_SHOW_QIDS]))
        more = f" and {len(qids) - _SHOW_QIDS} more" if len(qids) > _SHOW_QIDS else ""
        return f"{'question' if len(qids) == 1 else 'questions'} {ids}{more}"

    listing = ", ".join(f"{s} ({questions(missing[s])})" for s in shown)
    if len(missing) > len(shown):
        listing += f", and {_count(len(missing) - len(shown), 'more scene')}"
    todo = ("encode the scene's video or remove its questions" if len(missing) == 1
            else "encode the scenes' videos or remove their questions")
    raise ClipbertError(
        f"{path}: {_count(n_q, 'question')} (in {_count(len(missing), 'scene')}) "
        f"{'has' if n_q == 1 else 'have'} no video{f' in {where}' if where else ''}: {listing}; "
        f"{todo}")


class VideoSet(set):
    """The video ids found somewhere, and that place (`where`), for messages about the
    missing ones."""

    def __init__(self, ids: Iterable[str] = (), where: str | os.PathLike | None = None) -> None:
        super().__init__(ids)
        self.where = where


def available_videos(path: str | os.PathLike) -> VideoSet:
    """Video ids found at `path`: LMDB keys, `*.mp4` stems of a folder, or lines of a text file.

    The LMDB goes through `vislmdb.VideoLMDB`, the process's one shared read-only handle
    (py-lmdb refuses to open the same environment twice in a process).
    """
    path = Path(path)
    if path.is_dir() and (path / "data.mdb").is_file():
        return VideoSet(VideoLMDB(path).keys(), path)
    if path.is_dir():
        return VideoSet((key_of(p) for p in path.glob(mp4_name("*"))), path)
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            return VideoSet((line.strip() for line in fh if line.strip()), path)
    raise ClipbertError(f"{path}: no such video LMDB, folder or list of scene ids")
