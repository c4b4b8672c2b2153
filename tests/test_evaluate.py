"""Inference and scoring (clipbert.evaluate): hand-computed accuracies, the files infer writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from test_checkpoints import UPSTREAM_EXTRAS, upstream_layout
from test_train import SMALL, env1, make_data

from clipbert import evaluate, modelfile, qa, vislmdb
from clipbert.checkpoints import MODEL_FILE
from clipbert.config import TrainConfig, make_config
from clipbert.errors import ClipbertError
from clipbert.fsutil import read_jsonl
from clipbert.model import BlindQA, ClipBert
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
    # Every accuracy file names its metric and says what made it (clipbert.provenance).
    assert saved["metric"] == rescored["metric"] == qa.METRIC
    assert "top-1 exact match" in saved["metric"] and "'unknown'" in saved["metric"]
    env = saved["environment"]
    assert env["pyav_ffmpeg"]["libavcodec"] == ".".join(map(str, av.library_versions[
        "libavcodec"]))
    assert env["cpu"]["threads"] == 1
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert isinstance(env["lock"]["matches"], bool)
    # The model file carries the record of the environment that wrote it, readable safely.
    assert modelfile.read_model_file(setup["model"])["environment"]["python"] == env["python"]


def test_loader_workers_are_capped_at_the_job_cpus(setup: dict, monkeypatch) -> None:
    """The faithful preset's 4 workers on a 2-CPU job: 2 workers, and no PyTorch warning about
    the suggested maximum number of workers; torch's threads are capped there too."""
    import warnings

    from clipbert import data, runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    threads = torch.get_num_threads()
    try:
        runtime.set_threads(16)  # the rule's threads of `--cores 16`, on 2 CPUs
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # threads do not lift the cap
    assert runtime.loader_workers(4) == 2 and runtime.loader_workers(0) == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a job of one thread
    assert runtime.loader_workers(4) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    m = modelfile.load_for_inference(setup["model"])
    cfg = dataclasses.replace(m.cfg, num_workers=4)
    rows = read_jsonl(setup["data_dir"] / "test.jsonl")[:8]
    dataset = data.dataset_for(cfg, rows, setup["lmdb_dir"], m.ans2label, train=False)
    collate = data.make_collate(m.tokenizer, cfg.max_txt_len, cfg.pad_to_max)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        labels = evaluate.predict(m.model, dataset, collate, torch.device("cpu"), cfg)
    assert len(labels) == 8
    assert not [w for w in seen if "number of worker" in str(w.message)], seen


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


def test_infer_refuses_a_model_with_non_finite_weights(setup: dict, tmp_path: Path) -> None:
    """A diverged training's model (NaN weights answer one word to everything) is refused,
    naming the file and its first bad tensor, and nothing is written."""
    obj = modelfile.read_model_file(setup["model"])
    obj["state_dict"] = {k: v.clone() for k, v in obj["state_dict"].items()}
    obj["state_dict"]["transformer.classifier.2.weight"][0, :3] = float("nan")
    obj["state_dict"]["transformer.classifier.2.bias"][1] = float("inf")
    bad = tmp_path / "diverged.pt"
    torch.save(obj, bad)
    with pytest.raises(ClipbertError) as info:
        evaluate.infer(bad, setup["data_dir"] / "test.jsonl", setup["lmdb_dir"],
                       tmp_path / "p.jsonl", tmp_path / "a.json")
    assert str(info.value) == (f"{bad}: 4 weights are NaN or infinite (3 in "
                               "transformer.classifier.2.weight and 1 more tensor): the training "
                               "that wrote it diverged; not scored")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.pt"]


@pytest.mark.slow
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
    assert err == f"error: {junk}: not a model file (text); a model file here is {MODEL_FILE}\n"
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "a.json").exists()
    no_lmdb = [a for a in map(str, common) if a not in ("--lmdb", str(setup["lmdb_dir"]))]
    assert main(["infer", "--model", str(setup["model"]), *no_lmdb]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {setup['model']}: a video model: give the video LMDB\n"
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "a.json").exists()


# ---- fine-tuned files of every layout ---------------------------------------------------------


PIXEL_EXTRAS = {"cnn.feature.pixel_mean": (3, 1, 1), "cnn.feature.pixel_std": (3, 1, 1)}


@pytest.mark.parametrize(("content", "looks"), [
    (b"my notes on the run\n", "text"), (b'{"answers": [1, 2]}', "JSON"), (b"", "an empty file"),
    (bytes(range(256)) * 4, "other binary data")])
def test_not_a_model_file_says_what_one_is(tmp_path: Path, content: bytes, looks: str) -> None:
    """A text or JSON file given as the model: one line saying what a model file is here, not
    torch's `IndexError: pop from empty list` or `Unsupported operand 91`."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    for call in (lambda: modelfile.check_model_file(path),
                 lambda: modelfile.load_for_inference(path)):
        with pytest.raises(ClipbertError) as info:
            call()
        msg = str(info.value)
        assert msg == f"{path}: not a model file ({looks}); a model file here is {MODEL_FILE}"
        assert "IndexError" not in msg and "operand" not in msg and "\n" not in msg


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path: Path) -> None:
    """A torch file whose pickle would call a function is refused by weights_only=True; the
    function never runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "y": Planted(str(marker))}, path)
    with pytest.raises(ClipbertError, match=r"not loadable as plain tensors \(weights_only=True "
                       r"refused it: .*\); pickled objects .* are not accepted"):
        modelfile.check_model_file(path)
    assert not marker.exists()


def test_a_file_of_another_preset_names_the_preset_that_fits(tmp_path: Path) -> None:
    """SQA3D's faithful-sized file checked against the tiny preset (and the reverse): the error
    names the preset whose sizes fit, in the words of the caller (`hint`). Only names and
    shapes are read."""
    faithful = standin_checkpoint(tmp_path / "clipbert.pt")
    assert faithful.stat().st_size < 2_000_000
    hint = "set train.preset: {preset}"
    with pytest.raises(ClipbertError) as info:
        modelfile.check_model_file(faithful, preset="tiny", hint=hint)
    assert str(info.value) == (
        f"{faithful}: tensor module.cnn.feature.backbone.stem.conv1.weight is [64, 3, 7, 7] in "
        "the file but [16, 3, 7, 7] in the clipbert model of preset 'tiny': the settings do not "
        "fit this file (the file fits preset 'faithful' (also 'improved'); set train.preset: "
        "faithful)")
    assert modelfile.check_model_file(faithful, preset="faithful", variant="clipbert",
                                      n_answers=706) == (
        f"{faithful}: upstream state dict, clipbert model of preset 'faithful', 481 tensors, "
        "answer head of 1500 rows")
    with pytest.raises(ClipbertError, match=r"the answer head \(module.transformer.classifier.2."
                       r"weight\) has 1500 rows, fewer than the 1600 answers$"):
        modelfile.check_model_file(faithful, n_answers=1600)
    with pytest.raises(ClipbertError, match="a 'clipbert' model .*'blind' one is needed"):
        modelfile.check_model_file(faithful, variant="blind")
    tiny = standin_checkpoint(tmp_path / "tiny.pt", "tiny", head_rows=20, vocab_size=50)
    with pytest.raises(ClipbertError, match=r"\(the file fits preset 'tiny'; --preset tiny with "
                       r"clipbert infer, train.preset: tiny in the workflow\)$"):
        modelfile.check_model_file(tiny)


class Planted:
    """Unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def upstream_state(native: dict[str, torch.Tensor], mcfg, dtype=torch.float16,
                   prefix: str = "module.", extras: bool = True) -> dict[str, torch.Tensor]:
    """An upstream-layout fine-tuned state dict of a native model, as upstream's trainer saves
    one: key names from the spec's patterns (`upstream_layout`, not the code under test),
    `dtype`, the detector heads, `pixel_mean`/`pixel_std` and pre-training extras, a DDP prefix."""
    layout = upstream_layout({
        "depths": mcfg.depths, "stem_width": mcfg.stem_width, "widths": mcfg.widths,
        "hidden_size": mcfg.hidden_size, "num_layers": mcfg.num_layers,
        "intermediate_size": mcfg.intermediate_size, "vocab_size": mcfg.vocab_size,
        "max_position_embeddings": mcfg.max_position_embeddings, "num_labels": mcfg.num_labels})
    assert {n for n, _ in layout.values()} == {
        k for k in native if not k.endswith("num_batches_tracked")}
    out = {up: native[n].to(dtype) for up, (n, _) in layout.items()}
    if extras:
        g = torch.Generator().manual_seed(3)
        out.update({k: torch.randn(shape, generator=g).to(dtype)
                    for k, shape in {**UPSTREAM_EXTRAS, **PIXEL_EXTRAS}.items()})
    return {prefix + k: v for k, v in out.items()}


def standin_checkpoint(path: Path, preset: str = "faithful", overrides: dict | None = None,
                       head_rows: int = 1500, vocab_size: int = 30522,
                       dtype: torch.dtype = torch.float16, prefix: str = "module.",
                       blind: bool = False) -> Path:
    """A stand-in for SQA3D's `clipbert.pt`: upstream key names at `preset`'s sizes, fp16, a
    1500-row head, a DDP prefix, detector heads and `pixel_mean`. Each tensor is one value
    expanded (stride 0), so the file is a few hundred KB whatever the sizes: for the checks of
    names and shapes, not for answering. `blind`: a native blind model's state dict."""
    m = dataclasses.replace(make_config(preset, overrides).model, vocab_size=vocab_size,
                            num_labels=head_rows)
    if blind:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in BlindQA(m).state_dict().items()}
    else:
        layout = upstream_layout({
            "depths": m.depths, "stem_width": m.stem_width, "widths": m.widths,
            "hidden_size": m.hidden_size, "num_layers": m.num_layers,
            "intermediate_size": m.intermediate_size, "vocab_size": vocab_size,
            "max_position_embeddings": m.max_position_embeddings, "num_labels": head_rows})
        shapes = {**{k: shape for k, (_, shape) in layout.items()}, **UPSTREAM_EXTRAS,
                  **PIXEL_EXTRAS}
    torch.save({prefix + k: torch.full((), 0.01, dtype=dtype).expand(shape)
                for k, shape in shapes.items()}, path)
    return path


def extra_keys() -> list[str]:
    """The extras' names as the loader lists them (the DDP prefix is gone by then)."""
    return list({**UPSTREAM_EXTRAS, **PIXEL_EXTRAS})


@pytest.fixture(scope="module")
def native(setup: dict) -> dict:
    """The setup model file's weights, settings and the files a bare state dict needs."""
    obj = modelfile.read_model_file(setup["model"])
    return {"state": obj["state_dict"], "mcfg": TrainConfig.from_dict(obj["train_config"]).model,
            "answers": setup["data_dir"] / "train_ans2label.json", "vocab": setup["vocab"]}


def bare_args(native: dict) -> dict:
    return {"answers": native["answers"], "vocab": native["vocab"], "preset": "tiny",
            "overrides": SMALL}


@pytest.mark.parametrize("case", ["model file", "native", "native in model entry",
                                  "upstream fp32", "upstream fp16 DDP extras"])
def test_every_layout_loads_the_same_weights(setup: dict, native: dict, tmp_path: Path,
                                             case: str) -> None:
    """Each layout a user meets loads every tensor of the native model into its place (fp16
    rounded, computed in fp32), and lists the extras it does not use."""
    path, state, kw = tmp_path / "ft.pt", native["state"], bare_args(native)
    fp16 = case.endswith("extras")
    if case == "model file":
        path, kw = setup["model"], {}
    elif case.startswith("native"):
        torch.save({"model": state, "step": 3} if "entry" in case else state, path)
    else:
        torch.save(upstream_state(state, native["mcfg"], torch.float16 if fp16 else torch.float32,
                                  prefix="module." if fp16 else "", extras=fp16), path)
    got = modelfile.load_for_inference(path, **kw)
    assert got.layout == {"model file": "native model file", "native": "native",
                          "native in model entry": "native"}.get(case, "upstream")
    loaded = got.model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        want = v.half().float() if fp16 else v
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], want), k
    assert got.unused == (["module." + k for k in extra_keys()] if fp16 else [])
    assert [n for n in got.notes if "beside the weights" in n] == (
        [f"model: not used: entries of {path} beside the weights: step"] if "entry" in case
        else [])
    assert got.dtypes == (["float16"] if fp16 else ["float32"])
    assert got.head_rows == len(setup["ans2label"]) + 3 and got.ans2label == setup["ans2label"]
    assert got.cfg.model == native["mcfg"] and got.cfg.preset == "tiny"
    assert not got.model.training and got.model.needs_video


def test_upstream_file_scores_like_the_native_one(setup: dict, native: dict, tmp_path: Path,
                                                  capsys) -> None:
    """An upstream fp32 file of the native model gives the very same predictions, and the
    accuracy file says where the model came from."""
    torch.set_num_threads(1)
    test = setup["data_dir"] / "test.jsonl"
    ref = evaluate.infer(setup["model"], test, setup["lmdb_dir"], tmp_path / "p0.jsonl",
                         tmp_path / "a0.json")
    assert ref["trained_here"] is True and ref["checkpoint_layout"] == "native model file"
    up = tmp_path / "clipbert.pt"
    torch.save(upstream_state(native["state"], native["mcfg"], torch.float32), up)
    capsys.readouterr()
    acc = evaluate.infer(up, test, setup["lmdb_dir"], tmp_path / "p1.jsonl",
                         tmp_path / "a1.json", **bare_args(native))
    out = capsys.readouterr().err
    assert [p["predicted"] for p in read_jsonl(tmp_path / "p1.jsonl")] == [
        p["predicted"] for p in read_jsonl(tmp_path / "p0.jsonl")]
    assert acc["overall"] == ref["overall"]
    assert acc["trained_here"] is False and acc["checkpoint_name"] == "clipbert.pt"
    assert acc["checkpoint_sha256"] == hashlib.sha256(up.read_bytes()).hexdigest()
    assert (acc["checkpoint_layout"], acc["head_rows"], acc["n_answers"]) == (
        "upstream", len(setup["ans2label"]) + 3, len(setup["ans2label"]))
    assert acc["checkpoint_dtypes"] == ["float32"] and acc["preset"] == "tiny"
    unused = [line for line in out.splitlines() if "not used" in line]
    assert len(unused) == 1 and all(k in unused[0] for k in extra_keys())


def test_predictions_come_only_from_rows_with_answers(setup: dict, native: dict,
                                                      tmp_path: Path) -> None:
    """Rows past the vocabulary never win, however large their logits, and row k is the answer
    labelled k (in `answer_dict.json` order, which `train_ans2label.json` keeps)."""
    n = len(setup["ans2label"])
    k = n - 2
    state = dict(native["state"])
    bias = state["transformer.classifier.2.bias"].clone()
    bias[n:] = 1e4
    bias[k] = 1e3
    state["transformer.classifier.2.bias"] = bias
    torch.save(upstream_state(state, native["mcfg"]), tmp_path / "ft.pt")
    label2ans = {v: a for a, v in setup["ans2label"].items()}
    for answers in (native["answers"], setup["root"] / "demo/sqa_task/answer_dict.json"):
        evaluate.infer(tmp_path / "ft.pt", setup["data_dir"] / "test.jsonl", setup["lmdb_dir"],
                       tmp_path / "p.jsonl", tmp_path / "a.json",
                       **{**bare_args(native), "answers": answers})
        assert {p["predicted"] for p in read_jsonl(tmp_path / "p.jsonl")} == {label2ans[k]}


def test_blind_state_dict_and_variant_check(setup: dict, native: dict, tmp_path: Path) -> None:
    """A bare blind state dict loads as the blind model; a slot that needs the other variant
    refuses it, naming the file."""
    mcfg = dataclasses.replace(native["mcfg"], variant="blind")
    torch.manual_seed(1)
    torch.save({"module." + k: v for k, v in BlindQA(mcfg).state_dict().items()},
               tmp_path / "blind.pt")
    got = modelfile.load_for_inference(tmp_path / "blind.pt", **bare_args(native),
                                       variant="blind")
    assert not got.model.needs_video and got.cfg.model.variant == "blind"
    with pytest.raises(ClipbertError, match=f"^{tmp_path}/blind.pt: a 'blind' model "
                       r"\(model.variant\), but a 'clipbert' one is needed here$"):
        modelfile.load_for_inference(tmp_path / "blind.pt", **bare_args(native),
                                     variant="clipbert")
    with pytest.raises(ClipbertError, match="a 'clipbert' model .*'blind' one is needed"):
        modelfile.load_for_inference(setup["model"], variant="blind")


def _bad_inputs(case: str, setup: dict, native: dict, tmp: Path) -> tuple[list[str], str]:
    """(extra clipbert infer arguments, the one-line error) of one bad input."""
    path = tmp / "ft.pt"
    bare = ["--model", str(path), "--answers", str(native["answers"]), "--vocab",
            str(native["vocab"]), "--preset", "tiny",
            *[f"--set={k}={json.dumps(v)}" for k, v in SMALL.items()]]
    n = len(setup["ans2label"])
    up = upstream_state(native["state"], native["mcfg"])
    if case == "not a state dict":
        torch.save([torch.zeros(2), 3], path)
        return bare, f"{path}: expected a state dict, found a list"
    if case == "too few head rows":
        small = dataclasses.replace(native["mcfg"], num_labels=n - 1)
        torch.manual_seed(0)
        torch.save(upstream_state(ClipBert(small).state_dict(), small), path)
        return bare, (f"{path}: the answer head (module.transformer.classifier.2.weight) has "
                      f"{n - 1} rows, fewer than the {n} answers of {native['answers']}")
    if case == "missing tensor":
        del up["module.transformer.bert.encoder.layer.1.output.dense.weight"]
        torch.save(up, path)
        return bare, (f"{path}: missing tensor module.transformer.bert.encoder.layer.1.output."
                      "dense.weight, needed by the clipbert model of preset 'tiny'")
    if case == "missing backbone tensors":
        up = {k: v for k, v in up.items() if ".res3." not in k}
        torch.save(up, path)
        return bare, (f"{path}: missing tensor module.cnn.feature.backbone.res3.0.conv1.weight "
                      "(and 19 more), needed by the clipbert model of preset 'tiny'")
    if case == "pretrained, not fine-tuned":
        torch.save({k: v for k, v in up.items() if ".classifier." not in k}, path)
        return bare, (f"{path}: missing tensor module.transformer.classifier.2.weight (the answer "
                      "head: a pretrained, not a fine-tuned, ClipBERT file?)")
    if case == "preset does not fit":
        torch.save(up, path)
        return (bare[:6] + ["--preset", "faithful"],
                f"{path}: tensor module.cnn.feature.backbone.stem.conv1.weight is [16, 3, 7, 7] "
                "in the file but [64, 3, 7, 7] in the clipbert model of preset 'faithful': the "
                "settings do not fit this file (choose them with train.preset / train.overrides "
                "in the workflow, --preset / --set with clipbert infer)")
    if case == "no answer map":
        torch.save(up, path)
        return ([a for a in bare if a not in ("--answers", str(native["answers"]))],
                f"{path}: a bare state dict (upstream layout) has no answer map: give "
                "train_ans2label.json or answer_dict.json (its head's row order)")
    if case == "video LMDB without a test scene":
        rows = read_jsonl(setup["data_dir"] / "test.jsonl")
        scenes = sorted({r["video_id"] for r in rows})
        vislmdb.pack_lmdb(tmp / "vis_db", [p for p in sorted((setup["root"] / "videos").iterdir())
                                           if p.stem != scenes[0]])
        n = sum(r["video_id"] == scenes[0] for r in rows)
        qids = [r["question_id"] for r in rows if r["video_id"] == scenes[0]]
        shown = ", ".join(map(str, qids[:3])) + (f" and {n - 3} more" if n > 3 else "")
        return (["--model", str(setup["model"]), "--lmdb", str(tmp / "vis_db")],
                f"{setup['data_dir'] / 'test.jsonl'}: {n} question{'s' if n > 1 else ''} (in 1 "
                f"scene) {'have' if n > 1 else 'has'} no video in {tmp / 'vis_db'}: {scenes[0]} "
                f"(question{'s' if n > 1 else ''} {shown}); encode the scene's video or remove "
                "its questions")
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "not a state dict", "too few head rows", "missing tensor", "missing backbone tensors",
    "pretrained, not fine-tuned", "preset does not fit", "no answer map",
    "video LMDB without a test scene"])
def test_bad_fine_tuned_inputs_fail_in_one_line(setup: dict, native: dict, tmp_path: Path,
                                                capsys, case: str) -> None:
    from clipbert.cli import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, message = _bad_inputs(case, setup, native, inputs)
    if "--lmdb" not in args:
        args += ["--lmdb", str(setup["lmdb_dir"])]
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    assert main(["infer", *args, "--jsonl", str(setup["data_dir"] / "test.jsonl"),
                 "--predictions", str(out / "p.jsonl"), "--out", str(out / "a.json")]) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert list(out.iterdir()) == []
