"""Inference and scoring (clipbert.evaluate): hand-computed accuracies, the files infer writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import SMALL, env1, make_data

from clipbert import evaluate, modelfile
from clipbert.config import make_config
from clipbert.errors import ClipbertError
from clipbert.fsutil import read_jsonl
from clipbert.model import ClipBert
from clipbert.tokenizer import load_tokenizer


def row(answer: str, t: str, i: int = 0) -> dict:
    return {"answer": answer, "answer_type": t, "question": f"q{i}", "video_id": "s",
            "question_id": i}


def test_score_by_hand() -> None:
    rows = [row("red", "what"), row("two", "what"), row("unknown", "what"), row("chair", "what"),
            row("yes", "is"), row("no", "is"), row("yes", "is"), row("unknown", "others")]
    # 'unknown' is wrong even when predicted; '' is what a never-used label maps to
    preds = ["red", "three", "unknown", "", "yes", "yes", "yes", "unknown"]
    got = evaluate.score(rows, preds)
    assert got["overall"] == 37.5  # 3 of 8
    assert got["per_type"] == {"what": 25.0, "is": 66.67, "others": 0.0}
    assert got["counts"] == {"what": 4, "is": 3, "others": 1}
    assert got["correct"] == {"what": 1, "is": 2, "others": 0}
    assert (got["n_questions"], got["n_correct"]) == (8, 3)
    assert list(got["per_type"]) == ["what", "is", "others"]  # the paper's order
    with pytest.raises(ValueError, match="8 questions but 7 predictions"):
        evaluate.score(rows, preds[:-1])


def test_percent_has_two_decimals() -> None:
    assert evaluate.pct(1, 3) == 33.33 and evaluate.pct(2, 3) == 66.67
    assert evaluate.pct(1522, 3519) == 43.25 and evaluate.pct(0, 0) == 0.0


def test_never_used_label_maps_to_a_wrong_answer() -> None:
    ans2label = {"red": 0, "blue": 1}
    assert evaluate.label_answers([1, 0, 1499, 2], ans2label) == ["blue", "red", "", ""]


def test_majority_baseline_by_hand() -> None:
    rows = [row("red", "what"), row("red", "what"), row("blue", "what"), row("unknown", "what"),
            row("unknown", "what"), row("no", "is"), row("yes", "is"), row("no", "is")]
    got = evaluate.majority_baseline(rows)
    # 'unknown' is never the majority answer: it cannot score
    assert got["answers"] == {"what": "red", "is": "no"}
    assert got["per_type"] == {"what": 40.0, "is": 66.67}
    assert got["overall"] == 50.0  # 2 + 2 of 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The small demo data and a model file (random weights: inference does not need skill)."""
    root = tmp_path_factory.mktemp("eval")
    ds = make_data(root)
    cfg = make_config("tiny", SMALL)
    ans2label = json.loads((ds["data_dir"] / "train_ans2label.json").read_text())
    tokens = modelfile.vocab_tokens(load_tokenizer(ds["vocab"]))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=len(tokens), num_labels=len(ans2label) + 3))
    torch.manual_seed(0)
    model_path = root / "model.pt"
    modelfile.save_model_file(model_path, ClipBert(cfg.model), cfg, ans2label, tokens,
                          {"step": 0, "val_accuracy": None})
    return {**ds, "model": model_path, "root": root, "ans2label": ans2label}


def test_infer_writes_predictions_and_accuracy(setup: dict, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    test = setup["data_dir"] / "test.jsonl"
    preds_path, acc_path = tmp_path / "pred.jsonl", tmp_path / "acc.json"
    result = evaluate.infer(setup["model"], test, setup["lmdb_dir"], preds_path, acc_path,
                            n_clips=3)
    rows, preds = read_jsonl(test), read_jsonl(preds_path)
    assert [list(p) for p in preds[:1]] == [
        ["answer", "question", "video_id", "answer_type", "question_id", "predicted"]]
    assert [{k: v for k, v in p.items() if k != "predicted"} for p in preds] == rows
    known = set(setup["ans2label"]) | {""}
    assert all(p["predicted"] in known for p in preds)
    saved = json.loads(acc_path.read_text())
    assert saved == result
    rescored = evaluate.score(rows, [p["predicted"] for p in preds])
    for key in ("overall", "per_type", "counts", "correct", "n_questions"):
        assert saved[key] == rescored[key]
    n_unknown = sum(r["answer"] == "unknown" for r in rows)
    assert saved["n_unknown"] == n_unknown
    assert saved["ceiling"] == evaluate.pct(len(rows) - n_unknown, len(rows))
    assert saved["majority_baseline"] == evaluate.majority_baseline(rows)
    assert saved["preset"] == "tiny" and saved["inference_n_clips"] == 3
    assert saved["checkpoint_sha256"] == hashlib.sha256(setup["model"].read_bytes()).hexdigest()
    assert saved["split"] == "test" and saved["bf16"] is False


def test_infer_clip_count_changes_the_scores_seen(setup: dict, tmp_path: Path) -> None:
    """More evaluation clips reach later frames: the logits must change (same model)."""
    from clipbert import data

    torch.set_num_threads(1)
    model, cfg, ans2label, tok = modelfile.load_model(setup["model"])
    rows = read_jsonl(setup["data_dir"] / "test.jsonl")[:4]
    outs = []
    for n in (1, 4):
        ds = data.VideoQADataset(rows, setup["lmdb_dir"], ans2label, n_clips=n)
        batch = data.make_collate(tok, cfg.max_txt_len, False)([ds[i] for i in range(4)])
        assert batch["frames"].shape[1] == n
        with torch.no_grad():
            outs.append(model(data.preprocess_frames(batch["frames"], cfg.max_img_size),
                              batch["input_ids"], batch["attention_mask"]))
    assert not torch.allclose(outs[0], outs[1])


def test_infer_refuses_missing_video_and_writes_nothing(setup: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    rows = read_jsonl(setup["data_dir"] / "test.jsonl")[:3]
    rows[1]["video_id"] = "scene9999_00"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ClipbertError, match="scene9999_00"):
        evaluate.infer(setup["model"], bad, setup["lmdb_dir"], tmp_path / "p.jsonl",
                       tmp_path / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_cli_infer_and_bad_model_file(setup: dict, tmp_path: Path, capsys) -> None:
    from clipbert.cli import main

    common = ["--jsonl", setup["data_dir"] / "val.jsonl", "--lmdb", setup["lmdb_dir"],
              "--predictions", tmp_path / "p.jsonl", "--out", tmp_path / "a.json"]
    ok = subprocess.run(
        [sys.executable, "-m", "clipbert", "infer", "--model", setup["model"], *common],
        env=env1(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    saved = json.loads((tmp_path / "a.json").read_text())
    assert json.loads(ok.stdout)["overall"] == saved["overall"] and saved["split"] == "val"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    (tmp_path / "p.jsonl").unlink()
    (tmp_path / "a.json").unlink()
    assert main(["infer", "--model", str(junk), *map(str, common)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {junk}: not a readable model file") and err.count("\n") == 1
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "a.json").exists()
    no_lmdb = [a for a in map(str, common) if a not in ("--lmdb", str(setup["lmdb_dir"]))]
    assert main(["infer", "--model", str(setup["model"]), *no_lmdb]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {setup['model']}: a video model: give the video LMDB\n"
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "a.json").exists()
