"""Model files: the native one written by training, and every fine-tuned file inference meets.

The native model file is self-contained, so that inference needs nothing but the file and the
data: the weights (fp32), the full training configuration, the answer map and the tokenizer's
vocabulary, plus a few facts about the run (step, validation accuracy, which weights were kept).

A fine-tuned file from upstream ClipBERT (such as SQA3D's released `clipbert.pt`) is a bare
state dict (fp16 or fp32, maybe with a DDP `module.` prefix or inside a `model` entry) with no
settings, answers or vocabulary: `load_for_inference` takes those from a preset, the answer
file and the vocab file, and checks every size against the tensors. Everything is read with
`weights_only=True`: a model file is data, and unpickling objects would run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipbert import provenance, runtime
from clipbert.checkpoints import (
    detect_layout,
    is_ignored,
    load_tensors,
    native_to_upstream,
    other_entries,
    save_tensors,
    split_state,
    to_native,
)
from clipbert.config import PRESETS, TrainConfig, make_config
from clipbert.errors import ClipbertError
from clipbert.model import build_model
from clipbert.sqa import load_answer_dict
from clipbert.tokenizer import load_tokenizer

FORMAT = "clipbert-native-1"
# The tensors that size the two data-dependent settings of a bare state dict.
HEAD = "transformer.classifier.2.weight"
WORDS = "transformer.bert.embeddings.word_embeddings.weight"
# What the settings of a bare state dict are chosen with, for error messages.
_SETTINGS_HINT = ("choose them with train.preset / train.overrides in the workflow, --preset / "
                  "--set with clipbert infer")
# How to pick a preset that fits, by default (the workflow passes its own: `set train.preset`).
_PRESET_HINT = "--preset {preset} with clipbert infer, train.preset: {preset} in the workflow"


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
    """Write the model file atomically: weights (fp32), configs, answer map, vocabulary, and
    the provenance record of the training environment (`environment`)."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "train_config": cfg.to_dict(), "state_dict": state,
           "ans2label": ans2label, "vocab": tokens, "environment": provenance.record(), **extra}
    save_tensors(obj, path)


def _torch_load(path: str | os.PathLike) -> object:
    """The file's contents, tensors memory-mapped (read from disk only when used)."""
    return load_tensors(path)


def _model_file(obj: object, path: str | os.PathLike) -> dict:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ClipbertError(f"{path}: not a clipbert model file (no 'format' key)")
    return obj


def read_model_file(path: str | os.PathLike) -> dict:
    """The raw contents of a model file (tensors on the CPU); a one-line error otherwise."""
    return _model_file(_torch_load(path), path)


@dataclass
class InferenceModel:
    """A model ready to answer questions, and what a result should record about its file."""

    model: nn.Module
    cfg: TrainConfig
    ans2label: dict[str, int]
    tokenizer: Any
    layout: str  # "native model file", or the layout of a bare state dict: upstream, native
    head_rows: int  # rows of the answer head; only the first len(ans2label) have an answer
    dtypes: list[str]  # floating-point dtypes of the tensors loaded, as stored in the file
    unused: list[str]  # tensors of the file the model has no use for, in file order
    notes: list[str]  # what inference logs about the loading


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, TrainConfig, dict[str, int], Any]:
    """A model file for inference: (model in eval mode on `device`, its settings, ans2label,
    tokenizer)."""
    m = load_for_inference(path, device)
    return m.model, m.cfg, m.ans2label, m.tokenizer


@dataclass
class _Source:
    """What a file brings: settings, weights and their layout, answers and tokenizer."""

    cfg: TrainConfig
    state: dict[str, torch.Tensor]
    layout: str
    entries: list[str]
    ans2label: dict[str, int]
    tokenizer: Any
    notes: list[str]
    answers_name: str
    prefix: str = ""  # the DDP `module.` prefix of the file's names, kept in messages


def _native_file(obj: dict, path, answers, vocab) -> _Source:
    obj = _model_file(obj, path)
    cfg = TrainConfig.from_dict(obj["train_config"])
    notes = [f"model: settings, answer map and vocabulary from the model file (preset "
             f"{cfg.preset!r})" + "".join(f"; {name} {value} not used" for name, value in
                                           (("answers", answers), ("vocab", vocab)) if value)]
    return _Source(cfg, obj["state_dict"], "native model file", [], obj["ans2label"],
                   tokenizer_from_tokens(obj["vocab"]), notes, "the model file's own answer map")


def _bare_state(obj: object, path, answers, vocab, preset: str, overrides: dict | None,
                need_data: bool = True) -> _Source:
    """A bare state dict with the settings of `preset` + `overrides`; its answer map and
    tokenizer from `answers` and `vocab` (`need_data=False`: not read, for a check made before
    they exist)."""
    state, prefix = split_state(obj, path)
    entries = other_entries(obj)
    layout = detect_layout(state, path)
    if layout not in ("upstream", "native"):
        raise ClipbertError(f"{path}: a {layout} checkpoint (pretrained weights to train "
                            "from), not a fine-tuned ClipBERT model")
    cfg = _bare_settings(path, state, layout, preset, overrides, prefix)
    settings = (f"model: settings of preset {preset!r}"
                + (f" with overrides {json.dumps(overrides, sort_keys=True)}" if overrides else "")
                + f", sizes checked against the tensors: {cfg.model.variant} model, "
                f"{cfg.model.vocab_size} word embeddings")
    if not need_data:
        return _Source(cfg, state, layout, entries, {}, None, [settings], "", prefix)
    if answers is None:
        raise ClipbertError(f"{path}: a bare state dict ({layout} layout) has no answer map: "
                            "give train_ans2label.json or answer_dict.json (its head's row "
                            "order)")
    if vocab is None:
        raise ClipbertError(f"{path}: a bare state dict ({layout} layout) has no "
                            "vocabulary: give the WordPiece vocab.txt it was trained with")
    ans2label, tokenizer = load_answer_dict(answers), load_tokenizer(vocab)
    n_tokens = len(tokenizer.get_vocab())
    if n_tokens > cfg.model.vocab_size:
        raise ClipbertError(f"{vocab}: {n_tokens} tokens, but the word embeddings of {path} "
                            f"have {cfg.model.vocab_size} rows")
    notes = [f"{settings} ({n_tokens} tokens in {vocab})"]
    return _Source(cfg, state, layout, entries, ans2label, tokenizer, notes, str(answers),
                   prefix)


def _source(path, answers, vocab, preset: str, overrides: dict | None, variant: str | None,
            need_data: bool = True) -> tuple[_Source, bool]:
    """What the file brings, and whether it is a native model file."""
    obj = _torch_load(path)
    native = isinstance(obj, dict) and "format" in obj
    src = (_native_file(obj, path, answers, vocab) if native
           else _bare_state(obj, path, answers, vocab, preset, overrides, need_data))
    if variant is not None and src.cfg.model.variant != variant:
        raise ClipbertError(f"{path}: a {src.cfg.model.variant!r} model (model.variant), but a "
                            f"{variant!r} one is needed here")
    return src, native


def check_model_file(path: str | os.PathLike, *, preset: str = "faithful",
                     overrides: dict | None = None, variant: str | None = None,
                     n_answers: int | None = None, hint: str = "") -> str:
    """Check, without loading its weights, that `path` is a fine-tuned model file that
    `load_for_inference` will take with these settings: readable as plain tensors, its layout,
    its model variant, every tensor's shape against the model of `preset` + `overrides` (for a
    bare state dict), and an answer head of at least `n_answers` rows. The workflow calls it
    before any job. Only names and shapes are read (the file is memory-mapped): a 600 MB file
    takes well under a second. Returns a one-line summary; a problem is a ClipbertError.
    `hint` says how to choose a preset that fits (`{preset}` is replaced by its name)."""
    src, native = _source(path, None, None, preset, overrides, variant, need_data=False)
    _fit(path, src, "native" if native else src.layout, None if native else preset,
         overrides, load=False, hint=hint)
    rows = src.cfg.model.num_labels
    if n_answers is not None and rows < n_answers:
        raise ClipbertError(f"{path}: the answer head ({_file_name(src, HEAD)}) has {rows} "
                            f"rows, fewer than the {n_answers} answers")
    what = "native model file" if native else f"{src.layout} state dict"
    return (f"{path}: {what}, {src.cfg.model.variant} model of preset {src.cfg.preset!r}, "
            f"{len(src.state)} tensors, answer head of {rows} rows")


def load_for_inference(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    *,
    answers: str | os.PathLike | None = None,
    vocab: str | os.PathLike | None = None,
    preset: str = "faithful",
    overrides: dict | None = None,
    variant: str | None = None,
) -> InferenceModel:
    """Load any fine-tuned model file for inference: a native model file (which brings its own
    settings, answers and vocabulary: `answers`, `vocab`, `preset` and `overrides` are then not
    used), or a bare state dict in the upstream or native layout, whose settings are `preset`
    plus `overrides` with the vocabulary size and the head's row count taken from its tensors,
    whose answer map is `answers` (`train_ans2label.json` or `answer_dict.json`: the order of
    the head's rows) and whose tokenizer is `vocab`.

    Every tensor the model needs must be in the file, at the model's shape; a missing one, a
    shape that differs, a tensor of the model's kind the settings have no place for, or a head
    with fewer rows than answers is a ClipbertError naming it. Tensors the model has no use for
    (detector heads, `pixel_mean`/`pixel_std`, pre-training heads) are returned in `unused`.
    `variant`, when given, is the model variant the caller needs (`clipbert` or `blind`).
    """
    src, native = _source(path, answers, vocab, preset, overrides, variant)
    cfg, ans2label, notes = src.cfg, src.ans2label, src.notes
    loaded, unused = _fit(path, src, "native" if native else src.layout,
                          None if native else preset, overrides)
    head_rows = cfg.model.num_labels
    if head_rows < len(ans2label):
        raise ClipbertError(f"{path}: the answer head ({_file_name(src, HEAD)}) has {head_rows} "
                            f"rows, fewer than the {len(ans2label)} answers of "
                            f"{src.answers_name}")
    check_finite(path, loaded, src)
    model = build_model(cfg.model)
    result = model.load_state_dict(loaded, strict=False)
    assert not result.unexpected_keys and all(  # _fit checked both against the same model
        k.endswith("num_batches_tracked") for k in result.missing_keys), result
    runtime.place(model, cfg, torch.device(device))
    model.eval()
    skipped = set(unused)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for k, t in src.state.items()
                     if src.prefix + k not in skipped and t.is_floating_point()})
    notes.append(f"model: {path} ({src.layout}): {len(loaded)} tensors loaded, stored as "
                 f"{'/'.join(dtypes)}" + ("" if dtypes == ["float32"] else ", run in float32"))
    notes.append(f"model: answer head of {head_rows} rows for the {len(ans2label)} answers of "
                 f"{src.answers_name}: predictions come from the first {len(ans2label)} rows "
                 "only")
    if unused:
        notes.append(f"model: not used: {len(unused)} tensors of {path}: {', '.join(unused)}")
    if src.entries:
        notes.append(f"model: not used: entries of {path} beside the weights: "
                     f"{', '.join(src.entries)}")
    return InferenceModel(model=model, cfg=cfg, ans2label=dict(ans2label),
                          tokenizer=src.tokenizer, layout=src.layout, head_rows=head_rows,
                          dtypes=dtypes, unused=unused, notes=notes)


def check_finite(path: str | os.PathLike, tensors: dict[str, torch.Tensor], src: _Source) -> None:
    """A model with NaN or infinite weights (a diverged training) answers one word to every
    question: refused, naming the file and its first such tensor, rather than scored."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())}
    if bad:
        name, count = next(iter(bad.items()))
        more = len(bad) - 1
        others = f" and {more} more tensor{'s' if more > 1 else ''}" if more else ""
        raise ClipbertError(
            f"{path}: {sum(bad.values())} weights are NaN or infinite ({count} in "
            f"{_file_name(src, name)}{others}): the training that wrote it diverged; not scored")


def _bare_settings(path: str | os.PathLike, state: dict[str, torch.Tensor], layout: str,
                   preset: str, overrides: dict | None, prefix: str = "") -> TrainConfig:
    """The settings of a bare state dict: `preset` + `overrides`, with the variant, the
    vocabulary size and the head's row count read off the tensors (the three things training
    fills in from the data)."""
    names = {to_native(layout, k): k for k in state if not is_ignored(layout, k)}
    for name, what in ((HEAD, "the answer head: a pretrained, not a fine-tuned, ClipBERT file?"),
                       (WORDS, "the word embeddings")):
        if name not in names:
            raise ClipbertError(f"{path}: missing tensor {prefix}{_layout_name(layout, name)} "
                                f"({what})")
    video = layout == "upstream" or any(
        n is not None and n.startswith(("cnn.", "transformer.visual_embeddings."))
        for n in names)
    cfg = make_config(preset, overrides)
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, variant="clipbert" if video else "blind",
        vocab_size=state[names[WORDS]].shape[0], num_labels=state[names[HEAD]].shape[0]))


def model_shapes(cfg: TrainConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the model `cfg` builds (on the meta device: no memory, no
    arithmetic). A preset whose head is sized from the data (`model.num_labels: 0`, tiny) has
    an empty head until training fills it in: torch's warning about initialising it is noise."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return {k: tuple(v.shape) for k, v in build_model(cfg.model).state_dict().items()}


def _misfit(src: _Source, layout: str, shapes: dict[str, tuple[int, ...]], what: str
            ) -> tuple[str | None, dict[str, str], list[str]]:
    """Whether the file's tensors fit a model of these `shapes`: (the problem, or None;
    native name -> the file's key of each tensor used; the file's keys not used, as the file
    spells them)."""
    used: dict[str, str] = {}
    unused: list[str] = []
    unplaced: list[str] = []
    for key, tensor in src.state.items():
        name = to_native(layout, key)
        if name in shapes and name not in used:
            if tuple(tensor.shape) != shapes[name]:
                return (f"tensor {src.prefix}{key} is {list(tensor.shape)} in the file but "
                        f"{list(shapes[name])} in {what}", used, unused)
            used[name] = key
        elif name is None or name in used or is_ignored(layout, key):
            unused.append(src.prefix + key)
        else:
            unplaced.append(src.prefix + key)
    if unplaced:
        return (f"{len(unplaced)} tensors have no place in {what}, e.g. {unplaced[0]}", used,
                unused)
    missing = [k for k in shapes if k not in used and not k.endswith("num_batches_tracked")]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return (f"missing tensor {_file_name(src, missing[0])}{more}, needed by {what}", used,
                unused)
    return None, used, unused


def fitting_presets(path: str | os.PathLike, src: _Source, layout: str,
                    overrides: dict | None) -> list[str]:
    """The presets whose model (with `overrides`) every tensor of a bare state dict fits."""
    out = []
    for name in PRESETS:
        try:
            shapes = model_shapes(_bare_settings(path, src.state, layout, name, overrides,
                                            src.prefix))
        except (ClipbertError, ValueError):  # the overrides make no model of this preset
            continue
        if _misfit(src, layout, shapes, "")[0] is None:
            out.append(name)
    return out


def _fit(path: str | os.PathLike, src: _Source, layout: str, preset: str | None,
         overrides: dict | None, load: bool = True, hint: str = ""
         ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's tensors under their native names (floats as fp32; nothing read with
    `load=False`), checked against the shapes of the model of `src.cfg`, and the file's keys
    that are not used. When the settings do not fit, the error names a preset that does."""
    what = (f"the {src.cfg.model.variant} model of preset {preset!r}" if preset is not None
            else "the model of its own settings")
    problem, used, unused = _misfit(src, layout, model_shapes(src.cfg), what)
    if problem is not None:
        if preset is None:
            raise ClipbertError(f"{path}: {problem}")
        fits = [p for p in fitting_presets(path, src, layout, overrides) if p != preset]
        bare = "" if fits or not overrides else " without the overrides"
        if bare:
            fits = fitting_presets(path, src, layout, None)
        if fits:
            also = f" (also {', '.join(map(repr, fits[1:]))})" if fits[1:] else ""
            raise ClipbertError(
                f"{path}: {problem}: the settings do not fit this file (the file fits preset "
                f"{fits[0]!r}{also}{bare}; {(hint or _PRESET_HINT).format(preset=fits[0])})")
        if problem.startswith("missing tensor"):  # an incomplete file more likely than settings
            raise ClipbertError(f"{path}: {problem}")
        raise ClipbertError(f"{path}: {problem}: the settings do not fit this file "
                            f"({_SETTINGS_HINT})")
    if not load:
        return {}, unused
    loaded = {}
    for name, key in used.items():
        tensor = src.state[key]
        loaded[name] = tensor.float() if tensor.is_floating_point() else tensor
    return loaded, unused


def _layout_name(layout: str, native: str) -> str:
    """A native tensor name as the file's layout spells it."""
    return (native_to_upstream(native) or native) if layout == "upstream" else native


def _file_name(src: _Source, native: str) -> str:
    """A native tensor name as the file spells it, prefix included."""
    return src.prefix + _layout_name(src.layout if src.layout != "native model file"
                                     else "native", native)
