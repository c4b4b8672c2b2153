"""The model file: one self-contained file per trained model, written by training and read by
evaluation, so that inference needs nothing but the file and the data.

It holds the weights (fp32), the full training configuration, the answer map and the tokenizer's
vocabulary, plus a few facts about the run (step, validation accuracy, which weights were kept).
It is read with `weights_only=True`: a model file is data, and unpickling objects would run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipbert import runtime
from clipbert.config import TrainConfig
from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path
from clipbert.model import build_model
from clipbert.tokenizer import load_tokenizer

FORMAT = "clipbert-native-1"


def vocab_tokens(tokenizer: Any) -> list[str]:
    """The vocabulary in id order, stored in the model file so inference needs no vocab path."""
    return [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]


def tokenizer_from_tokens(tokens: list[str]) -> Any:
    """Rebuild the tokenizer stored inside a model file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(t + "\n" for t in tokens))
        return load_tokenizer(path)


def save_model_file(path: str | os.PathLike, model: nn.Module, cfg: TrainConfig,
                    ans2label: dict[str, int], tokens: list[str], extra: dict) -> None:
    """Write the model file atomically: weights (fp32), configs, answer map, vocabulary."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "train_config": cfg.to_dict(), "state_dict": state,
           "ans2label": ans2label, "vocab": tokens, **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_model_file(path: str | os.PathLike) -> dict:
    """The raw contents of a model file (tensors on the CPU); a one-line error otherwise."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ClipbertError(f"{path}: not a readable model file ({_one_line(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ClipbertError(f"{path}: not a clipbert model file (no 'format' key)")
    return obj


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, TrainConfig, dict[str, int], Any]:
    """Load a model file for inference: (model in eval mode on `device`, its training config,
    ans2label, tokenizer)."""
    obj = read_model_file(path)
    cfg = TrainConfig.from_dict(obj["train_config"])
    model = build_model(cfg.model)
    model.load_state_dict(obj["state_dict"])
    runtime.place(model, cfg, torch.device(device))
    model.eval()
    return model, cfg, obj["ans2label"], tokenizer_from_tokens(obj["vocab"])


def _one_line(e: Exception) -> str:
    """The gist of a torch.load error: its weights-only complaint is a page of advice."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
    return f"{type(e).__name__}: {' '.join(text.split())[:200]}"
