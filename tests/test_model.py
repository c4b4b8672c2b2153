"""The ClipBERT model: exact parameter counts, MSRA backbone equivalence, BERT equivalence,
masking, aggregation, bf16 autocast and channels-last."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbert.checkpoints import load_pretrained
from clipbert.config import ModelConfig, make_config
from clipbert.model import ClipBert, aggregate, bert_config, build_model, place_model

# ---- exact counts of the faithful model, by formula from the architecture (spec §1) ----------


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k  # no bias: every conv of the trunk is followed by a frozen BN


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def faithful_counts() -> dict[str, tuple[int, int]]:
    """(total, trainable) per part; frozen BN affine/statistics are buffers, not parameters."""
    stem = _conv(3, 64, 7)
    stages = []
    cin = 64
    for depth, width in zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True):
        n = 0
        for i in range(depth):
            n += _conv(cin, width, 1) + _conv(width, width, 3) + _conv(width, 4 * width, 1)
            if i == 0:
                n += _conv(cin, 4 * width, 1)  # projection shortcut
            cin = 4 * width
        stages.append(n)
    backbone = stem + sum(stages)
    frozen = stem + stages[0]  # stem and res2 do not train
    grid = _conv(2048, 768, 3)
    h, v, p, inter = 768, 30522, 512, 3072
    embeddings = v * h + p * h + 2 * h + 2 * h
    layer = 4 * _linear(h, h) + 2 * h + _linear(h, inter) + _linear(inter, h) + 2 * h
    bert = embeddings + 12 * layer + _linear(h, h)
    visual = 100 * h + 100 * h + 1 * h + 2 * h
    head = _linear(h, 2 * h) + _linear(2 * h, 1500)
    return {"backbone": (backbone, backbone - frozen), "grid_encoder": (grid, grid),
            "visual_embeddings": (visual, visual), "bert": (bert, bert), "head": (head, head)}


@pytest.mark.slow
def test_faithful_summary_counts_and_shapes(cli):
    out = json.loads(cli("model", "summary", "--preset", "faithful").stdout)
    expected = faithful_counts()
    for part, (total, trainable) in expected.items():
        assert out["parameters"][part] == {"total": total, "trainable": trainable}, part
    assert out["total"] == sum(t for t, _ in expected.values())
    assert out["trainable"] == sum(t for _, t in expected.values())
    # the spec's rounded figures, as a cross-check of the formula itself
    assert round(expected["bert"][0] / 1e6, 1) == 109.5
    assert round(expected["grid_encoder"][0] / 1e6, 1) == 14.2
    assert round(expected["head"][0] / 1e6, 1) == 3.5
    assert out["shapes"] == {
        "frames": [1, 1, 2, 3, 448, 448], "backbone": [2, 2048, 14, 14], "grid": [2, 7, 7, 768],
        "tokens": [1, 149, 768], "logits": [1, 1500],
    }


# ---- a small model for behaviour tests -------------------------------------------------------

SMALL = dict(depths=(2, 1, 2, 1), stem_width=8, widths=(4, 8, 16, 32), hidden_size=32,
             num_layers=2, num_heads=4, intermediate_size=64, vocab_size=100,
             max_position_embeddings=64, num_labels=11)


def small_model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **kw})).eval()


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial frozen statistics, so a misplaced or ignored BN buffer shows."""
    g = torch.Generator().manual_seed(1)
    for name, buf in model.named_buffers():
        if name.endswith(("running_var", "weight")):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bias")):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)


def test_backbone_structure_frozen_and_msra_stride():
    model = small_model()
    bb = model.cnn.backbone
    for i in (2, 3, 4):
        block = getattr(bb, f"layer{i}")[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert not any(p.requires_grad for m in (bb.conv1, bb.bn1, bb.layer1) for p in m.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    model.train()
    model.cnn(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_frozen_bn_off_gives_trainable_batchnorm():
    model = small_model(frozen_bn=False, freeze_stem=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.cnn.backbone.modules())
    assert all(p.requires_grad for p in model.cnn.parameters())


# ---- equivalence with a detectron2-style ResNet (stride in the 1x1 conv, frozen BN) ----------


class D2FrozenBN(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                           ("running_var", 1.0)):
            self.register_buffer(name, torch.full((c,), fill))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=1e-5)


class D2Conv(nn.Conv2d):
    """detectron2's Conv2d: the norm lives inside the conv (`conv1.norm.*`)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.norm = D2FrozenBN(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class D2Block(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, stride_in_1x1: bool):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = D2Conv(cin, cout, 1, stride) if cin != cout else None
        self.conv1 = D2Conv(cin, width, 1, s1)
        self.conv2 = D2Conv(width, width, 3, s3)
        self.conv3 = D2Conv(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class D2Stem(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = D2Conv(3, c, 7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class D2ResNet(nn.Module):
    def __init__(self, cfg: dict, stride_in_1x1: bool = True) -> None:
        super().__init__()
        self.stem = D2Stem(cfg["stem_width"])
        cin = cfg["stem_width"]
        self.stages = []
        for i, (depth, width) in enumerate(zip(cfg["depths"], cfg["widths"], strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(D2Block(cin, width, 4 * width, 2 if i and not j else 1,
                                      stride_in_1x1))
                cin = 4 * width
            setattr(self, f"res{i + 2}", nn.Sequential(*blocks))
            self.stages.append(f"res{i + 2}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return x


class D2Wrapper(nn.Module):
    def __init__(self, cfg: dict, stride_in_1x1: bool = True) -> None:
        super().__init__()
        self.backbone = D2ResNet(cfg, stride_in_1x1)


def test_backbone_equals_detectron2_resnet(tmp_path):
    torch.manual_seed(3)
    ref = D2Wrapper(SMALL).eval()
    _randomise_bn(ref)
    state = ref.state_dict()
    assert "backbone.res3.0.shortcut.norm.running_var" in state  # the layout we claim to read
    torch.save({"model": state, "iteration": 7}, tmp_path / "grid_feat.pth")
    model = small_model()
    report = load_pretrained(model, detectron2=tmp_path / "grid_feat.pth", verbose=False)
    src = report["sources"][0]
    assert src["missing"] == [] and src["unexpected"] == [] and src["shape_mismatch"] == []
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours, theirs = model.cnn.backbone(x), ref.backbone(x)
        assert ours.shape == (2, 128, 3, 3)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        # the comparison can tell the two stride placements apart
        tv_style = D2Wrapper(SMALL, stride_in_1x1=False).eval()
        tv_style.load_state_dict(state)
        assert not torch.allclose(tv_style.backbone(x), theirs, atol=1e-3)


# ---- BERT part equals transformers.BertModel on text-only input -----------------------------


def test_text_only_path_equals_bert_model(tmp_path):
    from transformers import BertModel

    model = small_model()
    torch.manual_seed(5)
    ref = BertModel(bert_config(model.config), add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path / "bert")
    load_pretrained(model, bert=tmp_path / "bert", verbose=False)
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    empty = torch.zeros(3, 0, 0, 32)
    with torch.no_grad():
        seq, pooled = model.transformer.encode(ids, mask, empty)
        out = ref(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(seq, out.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_blind_model_answers_from_the_question_alone(cli):
    """The blind baseline: no CNN and no visual tokens; its logits are the head over the text-only
    pooled output of the same weights, and frames, if given, change nothing."""
    video = small_model()
    blind = small_model(variant="blind")
    assert not blind.needs_video and not hasattr(blind, "cnn")
    assert blind.transformer.visual_embeddings is None
    missing = blind.load_state_dict(video.state_dict(), strict=False).missing_keys
    assert missing == []
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        got = blind(None, ids, mask)
        ignored = blind(torch.randn(2, 3, 2, 3, 64, 64), ids, mask)
        pooled = video.transformer.encode(ids, mask, torch.zeros(2, 0, 0, 32))[1]
        ref = video.transformer.classifier(pooled)
    assert got.shape == (2, 11)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(got, ignored)
    out = json.loads(cli("model", "summary", "--preset", "faithful", "--set",
                         "model.variant=blind").stdout)
    assert set(out["parameters"]) == {"bert", "head"}
    assert out["shapes"] == {"tokens": [1, 100, 768], "logits": [1, 1500]}


def test_padding_is_masked():
    model = small_model()
    frames = torch.randn(2, 2, 2, 3, 64, 64) * 60
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    pad = torch.zeros(2, 9, dtype=torch.long)
    with torch.no_grad():
        short = model(frames, ids, mask)
        long = model(frames, torch.cat([ids, pad], 1), torch.cat([mask, pad], 1))
    assert short.shape == (2, 11)
    torch.testing.assert_close(short, long, rtol=1e-4, atol=1e-5)


def test_text_attends_to_visual_tokens():
    model = small_model()
    ids = torch.randint(1, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    grid, other = torch.randn(2, 3, 3, 32), torch.randn(2, 3, 3, 32)
    with torch.no_grad():
        seq, pooled = model.transformer.encode(ids, mask, grid)
        seq2, pooled2 = model.transformer.encode(ids, mask, other)
    assert seq.shape == (2, 6 + 9, 32)
    # [CLS] sees the video, also in the example whose text is padded
    assert (pooled - pooled2).abs().amax(dim=1).min() > 1e-3


def test_clip_logits_each_clip_separately():
    model = small_model()
    frames = torch.randn(1, 3, 2, 3, 64, 64)
    ids, mask = torch.randint(1, 100, (1, 5)), torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad():
        per_clip = model.clip_logits(frames, ids, mask)
        single = model.clip_logits(frames[:, 1:2], ids, mask)
    torch.testing.assert_close(per_clip[:, 1:2], single, rtol=1e-4, atol=1e-5)


def test_aggregate():
    logits = torch.tensor([[[1.0, 0.0], [3.0, -1.0]]])
    torch.testing.assert_close(aggregate(logits, "mean"), torch.tensor([[2.0, -0.5]]))
    torch.testing.assert_close(aggregate(logits, "max"), torch.tensor([[3.0, 0.0]]))
    lse = torch.log(torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(3.0)))
    assert aggregate(logits, "lse")[0, 0].item() == pytest.approx(lse.item(), rel=1e-6)
    with pytest.raises(ValueError, match="score_agg_func"):
        aggregate(logits, "sum")


# ---- bf16 autocast and channels-last ---------------------------------------------------------


def test_bf16_autocast_and_channels_last_on_cpu():
    model = ClipBert(make_config("tiny", {"model.num_labels": 9}).model).eval()
    torch.manual_seed(0)
    frames = torch.randn(2, 2, 2, 3, 64, 64)
    ids, mask = torch.randint(1, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        ref = model(frames, ids, mask)
        place_model(model, torch.device("cpu"), channels_last=True)
        assert model.cnn.backbone.layer1[0].conv2.weight.is_contiguous(
            memory_format=torch.channels_last)
        images = frames.flatten(0, 2)
        seen = []
        hook = model.cnn.backbone.register_forward_hook(lambda _m, inp, out: seen.append(
            inp[0].is_contiguous(memory_format=torch.channels_last)
            and out.is_contiguous(memory_format=torch.channels_last)))
        cl = model(frames, ids, mask)  # NCHW input: the CNN converts it itself
        hook.remove()
        assert seen == [True]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feat16 = model.cnn.backbone(images)
            bf = model(frames, ids, mask)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    assert feat16.dtype == torch.bfloat16  # frozen BN keeps the autocast dtype
    assert bf.dtype == torch.float32 and bf.shape == ref.shape and torch.isfinite(bf).all()
    assert (bf - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.slow(seconds=240)),  # 55 s with a warm cache
])
def test_compiled_model_matches_eager_and_keeps_its_keys(monkeypatch, backend):
    """`compile: true` must give the eager numbers (dropout off: compiled RNG differs) and the
    same checkpoint keys, or a compiled run could not be resumed or loaded without it.
    `aot_eager` traces the graph and its backward as inductor does, without generating and
    building C++ kernels (inductor, the default: 2-9 minutes on two cores, a slow test)."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: compile_module(self, backend=backend, **kw))
    cfg = make_config("tiny", {"model.num_labels": 9}).model
    torch.manual_seed(0)
    eager = ClipBert(cfg).eval()
    compiled = ClipBert(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    place_model(compiled, torch.device("cpu"), compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    frames = torch.randn(2, 2, 2, 3, 64, 64)
    ids, mask = torch.randint(1, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    labels = torch.tensor([1, 3])
    for model in (eager, compiled):
        F.cross_entropy(model(frames, ids, mask), labels).backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
