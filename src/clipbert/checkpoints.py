"""Pretrained weights: key maps between the checkpoint layouts users hold and the native model.

Layouts:
- `upstream`: ClipBERT's end-to-end state dict (`cnn.feature.backbone.*` detectron2 names,
  `cnn.grid_encoder.*`, `transformer.bert.*` incl. `visual_embeddings`, `transformer.classifier.*`);
- `native`: this project's `ClipBert.state_dict()` (torchvision ResNet names under
  `cnn.backbone.`, `transformer.visual_embeddings.`), flat or inside a model file;
- `detectron2`: a grid-feat checkpoint `{"model": {"backbone.res2.0.conv1.weight": ...}}`;
- `torchvision`: a ResNet-50 state dict (`conv1`, `bn1`, `layer1..4`, `fc`);
- `bert`: a Hugging Face BERT folder or file (`[bert.]embeddings...`, maybe `gamma`/`beta`).

Everything is read with `weights_only=True` (or safetensors): a checkpoint is data, and unpickling
arbitrary objects would run code. Nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path

_BERT_FILES = ("model.safetensors", "pytorch_model.bin")
# Part of the native model each kind of `config.WEIGHT_KINDS` is expected to fill (for its
# "missing" list).
_COVERS = {"clipbert": "", "detectron2": "cnn.backbone.", "resnet": "cnn.backbone.",
           "bert": "transformer.bert."}
_SHOW = 8  # keys listed per category in printed reports
DDP_PREFIX = "module."


# ---- key maps -------------------------------------------------------------------------------


def d2_to_torchvision(name: str) -> str | None:
    """Detectron2 ResNet name (relative to the backbone) -> torchvision name; None if it is
    not a ResNet trunk tensor."""
    m = re.fullmatch(r"stem\.conv1(\.norm)?\.(\w+)", name)
    if m:
        return ("bn1." if m[1] else "conv1.") + m[2]
    m = re.fullmatch(r"res(\d+)\.(\d+)\.(?:conv([123])|(shortcut))(\.norm)?\.(\w+)", name)
    if not m or int(m[1]) < 2:
        return None
    prefix = f"layer{int(m[1]) - 1}.{m[2]}."
    if m[4]:
        part = "downsample.1" if m[5] else "downsample.0"
    else:
        part = f"bn{m[3]}" if m[5] else f"conv{m[3]}"
    return f"{prefix}{part}.{m[6]}"


def torchvision_to_d2(name: str) -> str | None:
    """Inverse of `d2_to_torchvision`."""
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
    if m:
        return ("stem.conv1.norm." if m[1] == "bn1" else "stem.conv1.") + m[2]
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(?:(conv|bn)([123])|downsample\.([01]))\.(\w+)", name)
    if not m:
        return None
    prefix = f"res{int(m[1]) + 1}.{m[2]}."
    if m[5] is not None:
        part = "shortcut.norm" if m[5] == "1" else "shortcut"
    else:
        part = f"conv{m[4]}.norm" if m[3] == "bn" else f"conv{m[4]}"
    return f"{prefix}{part}.{m[6]}"


def _layernorm_names(name: str) -> str:
    """Old BERT files call the LayerNorm affine `gamma`/`beta`."""
    return re.sub(r"(LayerNorm)\.gamma$", r"\1.weight", re.sub(r"(LayerNorm)\.beta$", r"\1.bias",
                                                               name))


# Tensors a layout holds that the model has no use for: ignored without complaint.
_IGNORED = {
    "upstream": re.compile(
        r"cnn\.feature\.(proposal_generator|roi_heads)\..*|cnn\.feature\.pixel_(mean|std)"
        r"|transformer\.cls\..*|transformer\.bert\.visual_embeddings\.position_embeddings\..*"
        r"|transformer\.bert\.embeddings\.(position_ids|token_type_ids)|.*\.num_batches_tracked"),
    "native": re.compile(r".*\.num_batches_tracked"),
    "detectron2": re.compile(
        r"(proposal_generator|roi_heads)\..*|pixel_(mean|std)|.*\.num_batches_tracked"),
    "torchvision": re.compile(r"fc\..*|.*\.num_batches_tracked"),
    "bert": re.compile(r"cls\..*|(bert\.)?embeddings\.(position_ids|token_type_ids)"),
}


# BatchNorm's step counters: buffers, not weights (they scale nothing while a momentum is set),
# and every layout's files leave them out. A model part without them is not "random".
_COUNTERS = re.compile(r".*\.num_batches_tracked")


def is_weight(key: str) -> bool:
    """Whether a model's state-dict entry is a weight a checkpoint should fill."""
    return not _COUNTERS.fullmatch(key)


def to_native(layout: str, key: str) -> str | None:
    """The native name of a checkpoint key, or None if the layout has no such tensor (keys
    matched by `is_ignored` should be dropped before asking)."""
    if layout == "native":
        return key
    if layout == "upstream":
        if key.startswith("cnn.feature.backbone."):
            tv = d2_to_torchvision(key.removeprefix("cnn.feature.backbone."))
            return None if tv is None else "cnn.backbone." + tv
        if key.startswith("transformer.bert.visual_embeddings."):
            return "transformer.visual_embeddings." + _layernorm_names(
                key.removeprefix("transformer.bert.visual_embeddings."))
        if key.startswith(("cnn.grid_encoder.", "transformer.classifier.")):
            return key
        if key.startswith("transformer.bert."):
            return _layernorm_names(key)
        return None
    if layout == "detectron2":
        tv = d2_to_torchvision(key.removeprefix("backbone."))
        return None if tv is None else "cnn.backbone." + tv
    if layout == "torchvision":
        return "cnn.backbone." + key if re.match(r"(conv1|bn1|layer\d+)\.", key) else None
    if layout == "bert":
        key = _layernorm_names(key.removeprefix("bert."))
        return "transformer.bert." + key if key.startswith(("embeddings.", "encoder.",
                                                            "pooler.")) else None
    raise ValueError(f"unknown layout {layout!r}")


def native_to_upstream(key: str) -> str | None:
    """Native name -> upstream ClipBERT name (None for a key upstream has no place for)."""
    if key.startswith("cnn.backbone."):
        d2 = torchvision_to_d2(key.removeprefix("cnn.backbone."))
        return None if d2 is None else "cnn.feature.backbone." + d2
    if key.startswith("transformer.visual_embeddings."):
        return "transformer.bert." + key.removeprefix("transformer.")
    if key.startswith(("cnn.grid_encoder.", "transformer.bert.", "transformer.classifier.")):
        return key
    return None


def is_ignored(layout: str, key: str) -> bool:
    return bool(_IGNORED[layout].fullmatch(key))


# ---- writing --------------------------------------------------------------------------------


def save_tensors(obj: object, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically, through a file object. Given a path, torch names
    the folder inside its zip after the file (`model/`, or `archive/` for a name with a
    non-ASCII character, as in a folder named with `é`), so the bytes depended on where the file
    was written; given a file object it always writes `archive/`, and a rerun anywhere gives the
    same bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


# ---- reading --------------------------------------------------------------------------------


# What a model file is here, for the error that says a file is none.
MODEL_FILE = ("a torch state dict (upstream's fine-tuned ClipBERT, a pretrained checkpoint) or "
              "this project's model file, as torch.save writes them")


def _looks_like(path: Path) -> str:
    """What a file that torch cannot read seems to be, from its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "an empty file"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "other binary data"
    return "text"


def load_tensors(path: str | os.PathLike) -> object:
    """torch.load with `weights_only=True`, memory-mapped where the file allows it (torch's zip
    format): tensors are then read from disk only when used, so a 600 MB file's names and shapes
    cost milliseconds. A file torch cannot read is a one-line ClipbertError saying what a model
    file is (not torch's `pop from empty list`)."""
    path = Path(path)
    if not path.is_file():
        raise ClipbertError(f"{path}: no such file")
    zipped = zipfile.is_zipfile(path)
    with open(path, "rb") as fh:
        pickled = fh.read(1) == b"\x80"  # torch's legacy format: a pickle, protocol 2 or later
    if not (zipped or pickled):
        raise ClipbertError(f"{path}: not a model file ({_looks_like(path)}); a model file here "
                            f"is {MODEL_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        raise ClipbertError(
            f"{path}: not loadable as plain tensors (weights_only=True refused it: "
            f"{_weights_only_gist(e)}); pickled objects (detectron2 .pkl files too) are not "
            f"accepted, only {MODEL_FILE}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ClipbertError(f"{path}: a damaged or unreadable torch file ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]})") from None


def _weights_only_gist(e: Exception) -> str:
    """The gist of torch's weights-only refusal, which comes with a page of advice."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
    return " ".join(text.split())[:200] or type(e).__name__


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own (Rust) error type
        raise ClipbertError(f"{path}: cannot read the safetensors file ({e})") from None


def _inner_key(obj: dict) -> str | None:
    """The entry holding the tensors of a wrapped checkpoint (`state_dict`, `model`), if any."""
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return key
    return None


def split_state(obj: object, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The flat name -> tensor mapping inside what torch.load returned (a native model file's
    `state_dict`, a detectron2/trainer checkpoint's `model`, or a bare state dict), its names
    without a DDP `module.` prefix, and that prefix ("" if none): messages name keys as the
    file spells them, prefix and all."""
    if not isinstance(obj, dict):
        raise ClipbertError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    key = _inner_key(obj)
    if key is not None:
        obj = obj[key]
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ClipbertError(f"{path}: no tensors in this file")
    if all(k.startswith(DDP_PREFIX) for k in state):  # saved from a DistributedDataParallel
        return {k.removeprefix(DDP_PREFIX): v for k, v in state.items()}, DDP_PREFIX
    return state, ""


def unwrap_state(obj: object, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`split_state` without the prefix."""
    return split_state(obj, path)[0]


def other_entries(obj: dict) -> list[str]:
    """The entries of a loaded checkpoint that `unwrap_state` leaves out: everything beside the
    wrapped state dict (`step`, `optimizer`, ...), or the non-tensor values of a bare one."""
    key = _inner_key(obj)
    if key is not None:
        return [str(k) for k in obj if k != key]
    return [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]


def read_state_prefixed(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Name -> tensor from a checkpoint file, or from a Hugging Face model folder, and the DDP
    prefix its names had (see `split_state`)."""
    path = Path(path)
    if path.is_dir():
        for name in _BERT_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ClipbertError(f"{path}: folder has neither {' nor '.join(_BERT_FILES)}")
    if not path.is_file():
        raise ClipbertError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return _load_safetensors(path), ""
    return split_state(load_tensors(path), path)


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Name -> tensor from a checkpoint file, or from a Hugging Face model folder."""
    return read_state_prefixed(path)[0]


def detect_layout(state: dict[str, torch.Tensor], path: str | os.PathLike | None = None) -> str:
    """Which layout (upstream, native, detectron2, torchvision, bert) a state dict is in, from
    its key names."""
    keys = list(state)

    def any_start(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if any_start("cnn.feature.", "transformer.bert.visual_embeddings.", "transformer.cls."):
        return "upstream"
    if any_start("cnn.", "transformer."):
        return "native"
    if any_start("backbone.stem.", "backbone.res", "stem.conv1.", "res2."):
        return "detectron2"
    if any_start("layer1.", "conv1.weight"):
        return "torchvision"
    if any_start("embeddings.", "bert.", "encoder.layer."):
        return "bert"
    where = f"{path}: " if path is not None else ""
    raise ClipbertError(f"{where}unrecognised checkpoint layout (keys like "
                        f"{', '.join(keys[:3])})")


# ---- loading into a model -------------------------------------------------------------------


_KIND_LAYOUT = {"detectron2": "detectron2", "resnet": "torchvision", "bert": "bert"}
_LAYOUT_KIND = {"detectron2": "detectron2", "torchvision": "resnet", "bert": "bert"}


def _kind_layout(kind: str, state: dict, path: Path) -> str:
    """The layout a source of this kind is read in; a ClipBERT file may be upstream or native."""
    if kind != "clipbert":
        return _KIND_LAYOUT[kind]
    layout = detect_layout(state, path)
    if layout not in ("upstream", "native"):
        raise ClipbertError(f"{path}: a {layout} checkpoint, not a ClipBERT one (give it as "
                            f"{_LAYOUT_KIND[layout]}=PATH)")
    return layout


@dataclass
class _Plan:
    """Where each tensor of a pretrained checkpoint goes in a model of known shapes."""

    layout: str
    keys: dict[str, str]  # native name -> the file's key (prefix removed), shapes that fit
    unexpected: list[str]
    mismatch: list[dict]
    ignored: int


def _plan(kind: str, path: Path, shapes: dict[str, tuple[int, ...]], prefix: str,
          target: dict[str, tuple[int, ...]]) -> _Plan:
    """Match a checkpoint's tensor `shapes` (file key -> shape, DDP `prefix` removed) to the
    model's `target` shapes; no tensor that fits is a ClipbertError naming the file. Only names
    and shapes are used, so that a run's start can check a weight file without reading it."""
    layout = _kind_layout(kind, shapes, path)
    plan = _Plan(layout, {}, [], [], 0)
    # The blind model has no video side: a ClipBERT checkpoint's CNN is of no use, not a surprise.
    absent = tuple(p for p in ("cnn.", "transformer.visual_embeddings.")
                   if not any(k.startswith(p) for k in target))
    for key, shape in shapes.items():
        if is_ignored(layout, key):
            plan.ignored += 1
            continue
        name = to_native(layout, key)
        if absent and name is not None and name.startswith(absent):
            plan.ignored += 1
            continue
        if name is None or name not in target or name in plan.keys:
            plan.unexpected.append(prefix + key)
        elif tuple(shape) != tuple(target[name]):
            plan.mismatch.append({"key": name, "file_key": prefix + key,
                                  "checkpoint": list(shape), "model": list(target[name])})
        else:
            plan.keys[name] = key
    if not plan.keys:
        mismatch = plan.mismatch
        detail = (f"; shapes differ, e.g. {mismatch[0]['file_key']} {mismatch[0]['checkpoint']} in "
                  f"the file vs {mismatch[0]['model']} in the model" if mismatch else "")
        raise ClipbertError(f"{path}: no tensor of this {kind} checkpoint ({layout} layout) fits "
                            f"the model ({len(plan.unexpected)} unexpected keys{detail})")
    return plan


def check_pretrained(kind: str, path: str | os.PathLike,
                     target: dict[str, tuple[int, ...]]) -> str:
    """Check, without reading its weights, that `path` is a `kind` checkpoint (`config.
    WEIGHT_KINDS`) that training can start from: readable as plain tensors, in the layout of its
    kind, with tensors at the shapes of the model `target` describes (native name -> shape).
    The workflow calls it before any job, so that a wrong or damaged file stops the run (`-n`
    too) before a job deletes the last results. Returns a one-line summary."""
    path = Path(path)
    if kind not in _COVERS:
        raise ClipbertError(f"{path}: unknown kind of weights {kind!r} (one of "
                            f"{', '.join(_COVERS)})")
    shapes, prefix = _shapes_of(path)
    if not any(k.startswith(_COVERS[kind]) for k in target):  # as `unused_weights` drops it
        return f"{path}: {kind} weights, not used: the model has no part they fill"
    plan = _plan(kind, path, shapes, prefix, target)
    return (f"{path}: {kind} weights ({plan.layout} layout), {len(plan.keys)} tensors fit the "
            f"model, {len(plan.mismatch)} of another shape")


def _shapes_of(path: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """Name -> shape of a checkpoint, and its DDP prefix, reading no tensor data: safetensors
    from its header, torch's zip format memory-mapped (its legacy format is read whole)."""
    file = path
    if path.is_dir():
        file = next((path / n for n in _BERT_FILES if (path / n).is_file()), path)
    if file.suffix == ".safetensors" and file.is_file():
        try:
            with safe_open(str(file), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}, ""  # noqa: SIM118
        except Exception as e:  # safetensors raises its own (Rust) error type
            raise ClipbertError(f"{file}: cannot read the safetensors file ({e})") from None
    state, prefix = read_state_prefixed(path)
    return {k: tuple(v.shape) for k, v in state.items()}, prefix


def _load_one(model: nn.Module, kind: str, path: Path, target: dict[str, torch.Tensor]) -> dict:
    state, prefix = read_state_prefixed(path)
    plan = _plan(kind, path, {k: tuple(v.shape) for k, v in state.items()}, prefix,
                 {k: tuple(v.shape) for k, v in target.items()})
    layout, unexpected, mismatch, ignored = (plan.layout, plan.unexpected, plan.mismatch,
                                             plan.ignored)
    mapped = {name: state[key].float() if state[key].is_floating_point() else state[key]
              for name, key in plan.keys.items()}
    result = model.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # filtered against target above
    cover = _COVERS[kind]
    bad = {m["key"] for m in mismatch}
    missing = [k for k in target if k.startswith(cover) and k not in mapped and k not in bad
               and is_weight(k)]
    return {"kind": kind, "path": str(path), "layout": layout, "loaded": sorted(mapped),
            "missing": missing, "unexpected": unexpected, "shape_mismatch": mismatch,
            "ignored": ignored}


def _listing(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _groups(keys: list[str]) -> str:
    """Keys summarised by module: `cnn.grid_encoder (1 tensor), ...`."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        group = ".".join(parts[:2] if parts[0] in ("cnn", "transformer") else parts[:1])
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g} ({n} tensor{'s' if n > 1 else ''})" for g, n in counts.items())


def format_report(report: dict) -> list[str]:
    """Human-readable lines of a `load_pretrained` report."""
    if not report["sources"]:
        return ["model: WARNING: starting from RANDOM weights: no pretrained weights given "
                "(config weights.clipbert/detectron2/resnet/bert or train --init KIND=PATH)"]
    lines = []
    for s in report["sources"]:
        lines.append(f"weights: {s['kind']} {s['path']} ({s['layout']} layout): "
                     f"{len(s['loaded'])} tensors loaded, {s['ignored']} ignored")
        if s["missing"]:
            lines.append(f"weights:   missing {len(s['missing'])}: {_listing(s['missing'])}")
        if s["unexpected"]:
            lines.append(f"weights:   WARNING unexpected {len(s['unexpected'])}: "
                         f"{_listing(s['unexpected'])}")
        for m in s["shape_mismatch"][:_SHOW]:
            lines.append(f"weights:   WARNING shape mismatch {m['file_key']}: checkpoint "
                         f"{m['checkpoint']} vs model {m['model']} (not loaded)")
        if len(s["shape_mismatch"]) > _SHOW:
            lines.append(f"weights:   ... {len(s['shape_mismatch']) - _SHOW} more mismatches")
        if s["layout"] == "torchvision":
            lines.append("weights:   note: torchvision ResNets put the stride on conv2 and take "
                         "RGB /255 std-normalised input; this backbone uses the MSRA stride and "
                         "BGR 0..255 input, so the features differ until fine-tuned")
    if report["random"]:
        lines.append(f"model: {len(report['random'])} tensors start from RANDOM weights: "
                     f"{_groups(report['random'])}")
    else:
        lines.append("model: every tensor comes from the pretrained weights")
    return lines


def unused_weights(model: nn.Module, weights: dict[str, str | os.PathLike]) -> list[str]:
    """The kinds of `weights` that have nothing to give `model`, since the part they fill is not
    in it (a ResNet for the blind baseline, which has no CNN)."""
    keys = list(model.state_dict())
    return [kind for kind, path in weights.items() if path is not None
            and not any(k.startswith(_COVERS[kind]) for k in keys)]


def load_pretrained(
    model: nn.Module,
    *,
    clipbert: str | os.PathLike | None = None,
    detectron2: str | os.PathLike | None = None,
    resnet: str | os.PathLike | None = None,
    bert: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict:
    """Load the given checkpoints into `model` in the order clipbert, detectron2, resnet, bert
    (later ones override earlier ones) and report, per source, the tensors loaded, the model
    tensors of its part it lacked (`missing`), its keys the model has no place for
    (`unexpected`) and shape mismatches (not loaded); `random` lists what no source filled."""
    target = model.state_dict()
    paths = {"clipbert": clipbert, "detectron2": detectron2, "resnet": resnet, "bert": bert}
    sources = [_load_one(model, kind, Path(p), target) for kind, p in paths.items()
               if p is not None]
    filled = {k for s in sources for k in s["loaded"]}
    report = {"sources": sources,
              "random": [k for k in target if k not in filled and is_weight(k)]}
    if verbose:
        for line in format_report(report):
            print(line, flush=True)
    return report


# ---- conversion -----------------------------------------------------------------------------


def convert(in_path: str | os.PathLike, out_path: str | os.PathLike, to: str) -> dict:
    """Rename a checkpoint's tensors into the `native` or `upstream` layout and save them as a
    flat state dict. Values and dtypes are kept, so upstream -> native -> upstream gives back
    every tensor the model uses bit for bit; ignored heads and unknown keys are dropped (and
    reported)."""
    if to not in ("native", "upstream"):
        raise ClipbertError(f"unknown target layout {to!r} (native or upstream)")
    state = read_state(in_path)
    layout = detect_layout(state, in_path)
    out: dict[str, torch.Tensor] = {}
    ignored, dropped = [], []
    for key, tensor in state.items():
        if is_ignored(layout, key):
            ignored.append(key)
            continue
        name = to_native(layout, key)
        if name is not None and to == "upstream":
            name = native_to_upstream(name)
        if name is None or name in out:
            dropped.append(key)
            continue
        out[name] = tensor
    if not out:
        raise ClipbertError(f"{in_path}: no tensor of this {layout} checkpoint maps to {to}")
    save_tensors(out, out_path)
    return {"from": layout, "to": to, "written": len(out), "ignored": len(ignored),
            "dropped": dropped}
