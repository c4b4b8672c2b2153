"""The ClipBERT model: ResNet trunk -> grid encoder -> temporal mean -> visual embeddings, fused
with BERT text embeddings in one BERT encoder, pooled, and answered by a two-layer QA head.

Module names are chosen so that state-dict keys line up with the checkpoints users hold:
`cnn.backbone.*` uses torchvision ResNet names, `cnn.grid_encoder.0.weight` and
`transformer.bert.*` / `transformer.classifier.*` are the upstream ClipBERT names, and
`transformer.bert` is a Hugging Face `BertModel`. Key maps to other layouts live in
`checkpoints.py`.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import BertConfig, BertModel
from transformers.masking_utils import create_bidirectional_mask

from clipbert.config import ModelConfig, TrainConfig
from clipbert.errors import ClipbertError


def bert_config(cfg: ModelConfig) -> BertConfig:
    """The Hugging Face configuration of the text side (BERT's own names)."""
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=1e-12,
        attn_implementation=cfg.attn_implementation,
        initializer_range=cfg.initializer_range,
    )


class FrozenBN(FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm, but the output keeps the input's dtype (as detectron2's
    does): under bf16 autocast the fp32 statistics would otherwise promote every activation of
    the trunk to fp32. Same buffers and state-dict names as `FrozenBatchNorm2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)


def _norm(cfg: ModelConfig, channels: int) -> nn.Module:
    return FrozenBN(channels, eps=1e-5) if cfg.frozen_bn else nn.BatchNorm2d(channels)


class Bottleneck(nn.Module):
    """ResNet bottleneck with the MSRA/detectron2 stride placement: the stride sits on the 1x1
    `conv1`, not on the 3x3 `conv2` as in torchvision (the weights are the same shape, the
    features are not)."""

    def __init__(self, cfg: ModelConfig, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * cfg.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=stride, bias=False)
        self.bn1 = _norm(cfg, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = _norm(cfg, width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _norm(cfg, out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _norm(cfg, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetTrunk(nn.Module):
    """Stem + four stages, output stride 32, no pooling head; torchvision parameter names."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(cfg, cfg.stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = cfg.stem_width
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(Bottleneck(cfg, in_ch, width, stride))
                in_ch = width * cfg.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = in_ch
        self.num_stages = len(cfg.depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class GridCNN(nn.Module):
    """Backbone plus ClipBERT's grid encoder (3x3 conv to the hidden size, 2x2 max-pool, ReLU)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = ResNetTrunk(cfg)
        self.grid_encoder = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, cfg.hidden_size, 3, padding=1, bias=False),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(inplace=True),
        )
        if cfg.freeze_stem:
            for module in (self.backbone.conv1, self.backbone.bn1, self.backbone.layer1):
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised BGR -> (N, h, w, hidden) grid features."""
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            # Weights converted by `place_model`: give cuDNN NHWC input too, no layout copies.
            images = images.contiguous(memory_format=torch.channels_last)
        return self.grid_encoder(self.backbone(images)).permute(0, 2, 3, 1)


class VisualEmbeddings(nn.Module):
    """Learned row and column embeddings, a visual token type, LayerNorm and dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.row_position_embeddings = nn.Embedding(cfg.max_grid_positions, cfg.hidden_size)
        self.col_position_embeddings = nn.Embedding(cfg.max_grid_positions, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(1, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, h, w, D) -> (N, h*w, D), row-major."""
        n, h, w, d = grid.shape
        rows = self.row_position_embeddings.weight[:h].view(1, h, 1, d)
        cols = self.col_position_embeddings.weight[:w].view(1, 1, w, d)
        tokens = (grid + rows + cols).reshape(n, h * w, d)
        tokens = tokens + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(tokens))


class ClipBertTransformer(nn.Module):
    """BERT over [text ; visual] tokens, pooled [CLS], QA head (text alone without `visual`)."""

    def __init__(self, cfg: ModelConfig, visual: bool = True) -> None:
        super().__init__()
        self.bert = BertModel(bert_config(cfg), add_pooling_layer=True)
        self.visual_embeddings = VisualEmbeddings(cfg) if visual else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.hidden_size * 2),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden_size * 2, cfg.num_labels),
        )
        for module in (self.visual_embeddings, self.classifier):
            if module is not None:
                module.apply(functools.partial(_bert_init, std=cfg.initializer_range))

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused sequence output (N, L + h*w, D) and pooled [CLS] (N, D). Separate from the head
        so tests can check the text-only path (h = w = 0) against a plain `BertModel`; the
        blind model passes no grid at all."""
        text = self.bert.embeddings(input_ids=input_ids)
        hidden, mask = text, attention_mask
        if grid is not None:
            visual = self.visual_embeddings(grid).to(text.dtype)
            hidden = torch.cat([text, visual], dim=1)
            mask = torch.cat([attention_mask, attention_mask.new_ones(visual.shape[:2])], dim=1)
        mask4d = None  # shape-only (meta) passes cannot read the mask; shapes do not depend on it
        if not hidden.is_meta:
            # transformers drops an all-ones mask after `mask.all()`, which on a GPU makes the
            # host wait for the device every forward: there the mask is always built instead.
            mask4d = create_bidirectional_mask(
                config=self.bert.config, inputs_embeds=hidden, attention_mask=mask,
                allow_is_bidirectional_skip=not hidden.is_cuda,
            )
        hidden = self.bert.encoder(hidden, attention_mask=mask4d).last_hidden_state
        return hidden, self.bert.pooler(hidden)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, grid: torch.Tensor | None
    ) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(input_ids, attention_mask, grid)[1]))


def _bert_init(module: nn.Module, std: float) -> None:
    """BERT's initialisation (normal, std 0.02) for the parts BertModel does not own, as
    upstream did; PyTorch's N(0, 1) embeddings would drown the visual features."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def aggregate(logits: torch.Tensor, how: str) -> torch.Tensor:
    """Combine per-clip logits (B, clips, labels) into (B, labels): ClipBERT's score_agg_func."""
    if how == "lse":
        return torch.logsumexp(logits, dim=1)
    if how == "mean":
        return logits.mean(dim=1)
    if how == "max":
        return logits.max(dim=1).values
    raise ValueError(f"unknown score_agg_func {how!r} (lse, mean or max)")


def param_groups(model: nn.Module, lrs: dict[str, float], weight_decay: float) -> list[dict]:
    """AdamW groups: each top-level part of `model` (its first name component, a key of `lrs`)
    gets its learning rate; biases and norm weights (the 1-D parameters) get no weight decay.
    Frozen parameters are left out."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.split(".", 1)[0], p.ndim > 1), []).append(p)
    return [{"params": params, "lr": lrs[part], "name": part,
             "weight_decay": weight_decay if decay else 0.0}
            for (part, decay), params in sorted(groups.items())]


class ClipBert(nn.Module):
    """The whole model. Input frames are already resized, padded and normalised
    (see `data.preprocess_frames`), shape (B, clips, T, 3, S, S).

    What every model variant provides (see `VARIANTS`): `needs_video` (whether examples carry
    frames), `param_groups(train_config)` (its optimizer groups) and `forward(frames,
    input_ids, attention_mask)` -> (B, labels) logits, `frames` None when no video is needed.
    """

    needs_video = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.cnn = GridCNN(cfg)
        self.transformer = ClipBertTransformer(cfg)

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """The CNN and the transformer each get their own learning rate."""
        return param_groups(self, {"cnn": cfg.cnn_lr, "transformer": cfg.lr}, cfg.weight_decay)

    def clip_logits(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-clip logits (B, clips, labels): one full forward pass per clip."""
        b, c, t = frames.shape[:3]
        grid = self.cnn(frames.flatten(0, 2))
        grid = grid.view(b * c, t, *grid.shape[1:]).mean(dim=1)
        ids = input_ids.repeat_interleave(c, dim=0)
        mask = attention_mask.repeat_interleave(c, dim=0)
        return self.transformer(ids, mask, grid).view(b, c, -1)

    def forward(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        logits = self.clip_logits(frames, input_ids, attention_mask)
        return aggregate(logits.float(), self.config.score_agg_func)


class BlindQA(nn.Module):
    """The blind (question-only) baseline: ClipBERT's transformer and head without the CNN and
    the visual tokens, so the honest floor shares the video model's text side and key names."""

    needs_video = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = ClipBertTransformer(cfg, visual=False)

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return param_groups(self, {"transformer": cfg.lr}, cfg.weight_decay)

    def forward(
        self, frames: None, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.transformer(input_ids, attention_mask, None).float()


# The model classes a config's `model.variant` names.
VARIANTS: dict[str, type[nn.Module]] = {"clipbert": ClipBert, "blind": BlindQA}


def variant_class(cfg: ModelConfig) -> type[nn.Module]:
    """The class `cfg.variant` names (its `needs_video` is known before building it)."""
    cls = VARIANTS.get(cfg.variant)
    if cls is None:
        raise ClipbertError(f"unknown model variant {cfg.variant!r} (one of "
                            f"{', '.join(VARIANTS)})")
    return cls


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.variant`, freshly initialised."""
    return variant_class(cfg)(cfg)


def place_model(model: nn.Module, device: torch.device, channels_last: bool = False,
                compile: bool = False) -> nn.Module:
    """Move the model to `device`; optionally put its convolutions in channels-last layout
    (NHWC, the layout cuDNN's bf16 tensor-core convolutions want, so no transposes are spent
    on each layer; only 4-D weights change) and compile the model in place
    (`nn.Module.compile`: state-dict keys unchanged). Neither changes the arithmetic beyond
    rounding."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def summary(cfg: ModelConfig, max_img_size: int = 448, num_frm: int = 2, n_clips: int = 1,
            txt_len: int = 100) -> dict:
    """Parameter counts per part and output shapes of one dummy forward pass (batch 1).

    Built and run on the meta device: counts and shapes are exact, no memory is allocated and
    no arithmetic is done (a real faithful pass costs ~30 s on two CPU cores). Settings that
    cannot work together are a ClipbertError naming them, before anything is built."""
    _check_sizes(cfg, max_img_size, txt_len)
    with torch.device("meta"), warnings.catch_warnings():
        # num_labels 0 (sized from the answers at training) makes an empty head: not a problem.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        model = build_model(cfg).eval()
    tr, cnn = model.transformer, getattr(model, "cnn", None)
    parts = {
        "backbone": cnn and cnn.backbone,
        "grid_encoder": cnn and cnn.grid_encoder,
        "visual_embeddings": tr.visual_embeddings,
        "bert": tr.bert,
        "head": tr.classifier,
    }
    counts = {
        name: {"total": count_parameters(m), "trainable": count_parameters(m, True)}
        for name, m in parts.items() if m is not None
    }
    shapes: dict[str, list[int]] = {}

    def keep(name: str):
        return lambda _module, _inputs, output: shapes.__setitem__(name, list(output.shape))

    hooks = [] if cnn is None else [cnn.backbone.register_forward_hook(keep("backbone")),
                                    cnn.register_forward_hook(keep("grid"))]
    frames = torch.zeros(1, n_clips, num_frm, 3, max_img_size, max_img_size, device="meta")
    ids = torch.zeros(1, txt_len, dtype=torch.long, device="meta")
    mask = torch.ones(1, txt_len, dtype=torch.long, device="meta")
    with torch.no_grad():
        logits = model(frames if model.needs_video else None, ids, mask)
    for hook in hooks:
        hook.remove()
    h, w = shapes["grid"][1:3] if cnn is not None else (0, 0)
    return {
        "parameters": counts,
        "total": count_parameters(model),
        "trainable": count_parameters(model, True),
        "shapes": {
            **({} if cnn is None else {"frames": list(frames.shape),
                                       "backbone": shapes["backbone"], "grid": shapes["grid"]}),
            "tokens": [1, txt_len + h * w, cfg.hidden_size],
            "logits": list(logits.shape),
        },
    }


def _grid_side(cfg: ModelConfig, image_size: int) -> int:
    """Side of the visual grid for square `image_size` input: the stem (7x7 conv and 3x3 max-pool,
    both stride 2), a stride-2 1x1 conv at the start of every stage after the first, then the
    grid encoder's 2x2 max-pool."""
    side = (image_size - 1) // 2 + 1  # conv1: kernel 7, stride 2, padding 3
    side = (side - 1) // 2 + 1  # max-pool: kernel 3, stride 2, padding 1
    for _ in cfg.depths[1:]:
        side = (side - 1) // 2 + 1
    return side // 2


def _check_sizes(cfg: ModelConfig, max_img_size: int, txt_len: int) -> None:
    """The size constraints a forward pass would otherwise break with a shape error."""
    if cfg.num_heads < 1 or cfg.hidden_size % cfg.num_heads:
        raise ClipbertError(f"model.hidden_size {cfg.hidden_size} is not a multiple of "
                            f"model.num_heads {cfg.num_heads}: change one of them")
    if len(cfg.depths) != len(cfg.widths) or not cfg.depths:
        raise ClipbertError(f"model.depths {list(cfg.depths)} and model.widths "
                            f"{list(cfg.widths)} need one entry per ResNet stage each")
    if not 1 <= txt_len <= cfg.max_position_embeddings:
        raise ClipbertError(f"max_txt_len {txt_len} is outside 1..model.max_position_embeddings "
                            f"({cfg.max_position_embeddings}): lower max_txt_len or raise "
                            "model.max_position_embeddings")
    if cfg.variant != "clipbert":
        return
    side = _grid_side(cfg, max_img_size)
    if side < 1:
        raise ClipbertError(f"max_img_size {max_img_size} is too small: the visual grid would be "
                            "empty; raise max_img_size")
    if side > cfg.max_grid_positions:
        raise ClipbertError(f"max_img_size {max_img_size} gives a {side}x{side} visual grid, more "
                            f"than model.max_grid_positions {cfg.max_grid_positions}: lower "
                            "max_img_size or raise model.max_grid_positions")
