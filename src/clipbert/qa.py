"""The question-answer row: the seam between a dataset and the model.

A dataset converter (SQA3D's is `sqa.py`) writes one jsonl file per split, one JSON object per
question; training, evaluation and the report read nothing else of the dataset. The fields:

- `answer`: the gold answer, or `unknown` when it is outside the answer vocabulary (such a
  question can never be answered right: it counts against the accuracy ceiling);
- `question`: the text the model reads (SQA3D: the situation, a space, the question);
- `video_id`: the key of the question's video in the video LMDB (SQA3D: the ScanNet scene id);
- `answer_type`: one of `ANSWER_TYPES`, for the per-type scores (missing: `others`);
- `question_id`: the dataset's own id, kept through to the predictions (optional).

A prediction row is the same row plus `predicted`, the model's answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipbert.errors import ClipbertError
from clipbert.fsutil import read_jsonl

ANSWER_TYPES = ("what", "is", "how", "can", "which", "others")
UNKNOWN = "unknown"
# What every accuracy of this project is (evaluate.score): papers on SQA3D score differently (some
# count a refined match, some leave `unknown` out), so every accuracy file names its metric.
METRIC = ("top-1 exact match of the predicted answer string with the gold answer; a gold "
          "'unknown' answer always counts as wrong")
FIELDS = ("answer", "question", "video_id", "answer_type", "question_id")
# The answer map beside the splits: answer -> label, the order of the model's answer head
# (ClipBERT's name for it).
ANS2LABEL = "train_ans2label.json"
REQUIRED = ("answer", "question", "video_id")


@dataclass(frozen=True)
class TrainFiles:
    """The files a run learns from: questions to train on, to validate on (optional) and the
    answer map. The workflow names them; a folder of `clipbert sqa convert` holds them by name."""

    train: Path
    val: Path | None
    ans2label: Path

    @classmethod
    def in_folder(cls, data_dir: str | os.PathLike) -> TrainFiles:
        d = Path(data_dir)
        return cls(d / "train.jsonl", d / "val.jsonl", d / ANS2LABEL)

    @classmethod
    def of(cls, data: str | os.PathLike | TrainFiles) -> TrainFiles:
        return data if isinstance(data, TrainFiles) else cls.in_folder(data)


def check_rows(rows: list[dict], where: str) -> None:
    """Every row has the required fields; the first that lacks one is an error naming it."""
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ClipbertError(f"{where}: line {n}: expected a JSON object")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ClipbertError(f"{where}: line {n}: missing {', '.join(missing)}")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a jsonl split, checked."""
    rows = read_jsonl(path)
    check_rows(rows, str(path))
    return rows


def answer_type(row: dict) -> str:
    return row.get("answer_type", "others")


def prediction_row(row: dict, predicted: str) -> dict:
    """The row as evaluation writes it: the same fields, in order, plus the prediction."""
    out = {k: row[k] for k in FIELDS if k in row}
    out.setdefault("answer_type", "others")
    out["predicted"] = predicted
    return out
