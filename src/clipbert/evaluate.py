"""Inference and scoring: predictions per question, accuracy overall and per answer type, the
`unknown` ceiling and the majority-answer baseline on the same questions."""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import torch

from clipbert import data, provenance, runtime
from clipbert.config import TrainConfig
from clipbert.errors import ClipbertError
from clipbert.fsutil import file_sha256, write_json, write_jsonl
from clipbert.modelfile import load_for_inference
from clipbert.progress import progress
from clipbert.qa import ANSWER_TYPES, METRIC, UNKNOWN, answer_type, prediction_row, read_rows
from clipbert.sqa import available_videos, check_videos


def pct(correct: int, total: int) -> float:
    return round(100.0 * correct / total, 2) if total else 0.0


def score(rows: list[dict], predicted: list[str]) -> dict:
    """Top-1 exact match against the jsonl answers; `unknown` gold answers are always wrong.

    Percentages are rounded to two decimals; `counts` and `correct` keep the raw numbers so that
    any figure can be recomputed. Types outside the six SQA3D ones are kept, after them.
    """
    if len(rows) != len(predicted):
        raise ValueError(f"{len(rows)} questions but {len(predicted)} predictions")
    right: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for row, pred in zip(rows, predicted, strict=True):
        t = answer_type(row)
        count[t] += 1
        if row["answer"] != UNKNOWN and pred == row["answer"]:
            right[t] += 1
    types = [t for t in ANSWER_TYPES if count[t]] + sorted(set(count) - set(ANSWER_TYPES))
    n = len(rows)
    return {
        "metric": METRIC,
        "overall": pct(sum(right.values()), n),
        "per_type": {t: pct(right[t], count[t]) for t in types},
        "counts": {t: count[t] for t in types},
        "correct": {t: right[t] for t in types},
        "n_questions": n,
        "n_correct": sum(right.values()),
    }


def majority_baseline(rows: list[dict]) -> dict:
    """The most frequent answer of each type, chosen on these very questions: the strongest
    possible blind answer-prior, so a model must beat it by looking."""
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        if row["answer"] != UNKNOWN:
            by_type[answer_type(row)][row["answer"]] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    preds = [majority.get(answer_type(row), "") for row in rows]
    result = score(rows, preds)
    return {"overall": result["overall"], "per_type": result["per_type"], "answers": majority}


def label_answers(labels: list[int], ans2label: dict[str, int]) -> list[str]:
    """Map predicted labels back to answers; a never-used label (>= vocabulary) maps to ''."""
    label2ans = {v: k for k, v in ans2label.items()}
    return [label2ans.get(int(i), "") for i in labels]


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, collate, device: torch.device,
            cfg: TrainConfig, n_answers: int | None = None) -> list[int]:
    """Argmax label for every example of `dataset`, in order (no shuffling, no substitution).

    The model aggregates its per-clip logits with the training `score_agg_func`, so evaluation
    scores clips exactly as the loss did. With `n_answers` the argmax runs over the first
    `n_answers` logits only: the head's rows past the answer vocabulary (upstream sizes it to at
    least 1500) have no answer, so they can never be the prediction. An undecodable video is an
    error here, never skipped.
    """
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate,
        num_workers=runtime.loader_workers(cfg.num_workers),
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0))  # leaves the training RNG streams alone
    out: list[torch.Tensor] = []
    for batch in progress(loader, "evaluation", unit="batches"):
        logits = runtime.forward_batch(model, batch, cfg, device)
        out.append(logits[:, :n_answers].argmax(dim=-1))
    model.train(was_training)
    return torch.cat(out).tolist() if out else []


def infer(model_path, jsonl, lmdb_dir, predictions, out, n_clips: int | None = None,
          device: str | None = None, *, answers=None, vocab=None, preset: str = "faithful",
          overrides: dict | None = None, variant: str | None = None,
          trained_here: bool | None = None, threads: int | None = None) -> dict:
    """Answer every question of `jsonl` and write predictions and the accuracy json (the blind
    baseline's model reads no video: `lmdb_dir` may then be None).

    `model_path` is any fine-tuned file `modelfile.load_for_inference` reads: a bare upstream
    or native state dict takes its settings from `preset` + `overrides`, its answer map from
    `answers` and its tokenizer from `vocab`. `trained_here` (recorded; default: whether the
    file is a native model file) says whether this project's training made the model.
    `threads` fixes the CPU threads (None: torch's default).
    """
    runtime.set_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_for_inference(model_path, dev, answers=answers, vocab=vocab, preset=preset,
                                overrides=overrides, variant=variant)
    model, cfg, ans2label = loaded.model, loaded.cfg, loaded.ans2label
    if not model.needs_video:
        lmdb_dir = None
    elif lmdb_dir is None:
        raise ClipbertError(f"{model_path}: a video model: give the video LMDB")
    if n_clips is not None:
        cfg = dataclasses.replace(cfg, inference_n_clips=n_clips)
    rows = read_rows(jsonl)
    if not rows:
        raise ClipbertError(f"{jsonl}: no questions")
    if lmdb_dir is not None:  # before the first batch: a wrong LMDB fails at once
        check_videos(jsonl, available_videos(lmdb_dir))
    numerics = runtime.set_numerics(cfg, dev)
    # The log's lines, on stderr (`clipbert infer` prints JSON on stdout), once the inputs are
    # known to be good: a bad one is the only line.
    for line in [*loaded.notes, numerics] if numerics else loaded.notes:
        print(line, file=sys.stderr, flush=True)
    dataset = data.dataset_for(cfg, rows, lmdb_dir, ans2label, train=False)
    collate = data.make_collate(loaded.tokenizer, cfg.max_txt_len, cfg.pad_to_max)
    labels = predict(model, dataset, collate, dev, cfg, n_answers=len(ans2label))
    answers_out = label_answers(labels, ans2label)
    write_jsonl(predictions, (prediction_row(r, a)
                              for r, a in zip(rows, answers_out, strict=True)))
    result = score(rows, answers_out)
    n_unknown = sum(r["answer"] == UNKNOWN for r in rows)
    result.update({
        "n_unknown": n_unknown,
        "ceiling": pct(len(rows) - n_unknown, len(rows)),
        "majority_baseline": majority_baseline(rows),
        "preset": cfg.preset,
        "inference_n_clips": cfg.inference_n_clips,
        "score_agg_func": cfg.model.score_agg_func,
        "variant": cfg.model.variant,
        "blind": not model.needs_video,
        "bf16": runtime.bf16_on(cfg, dev),
        "checkpoint": str(model_path),
        "checkpoint_name": Path(model_path).name,
        "checkpoint_sha256": file_sha256(model_path),
        "checkpoint_layout": loaded.layout,
        "checkpoint_dtypes": loaded.dtypes,
        "head_rows": loaded.head_rows,
        "n_answers": len(ans2label),
        "trained_here": (loaded.layout == "native model file" if trained_here is None
                         else trained_here),
        "split": Path(jsonl).stem,
        "environment": provenance.record(),
    })
    write_json(out, result)
    return result
