"""The training loop: presets, AdamW with warm-up/decay, multi-clip loss, resumable state, DDP.

Read top to bottom: `make_config` picks a preset, `train` builds data and model, then runs one
flat loop over global steps. Resumable state lives in `state_dir` (never a declared Snakemake
output, since Snakemake deletes those before a rerun), so a killed job resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path, read_jsonl
from clipbert.model import ClipBert, ModelConfig


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the faithful SQA3D recipe (`sqa_video_base_resnet50`)."""

    preset: str = "faithful"
    model: ModelConfig = field(default_factory=ModelConfig)
    max_img_size: int = 448
    max_txt_len: int = 100
    pad_to_max: bool = True
    num_frm: int = 2
    sample_fps: float = 2.0
    video_fps: float = 20.0
    train_n_clips: int = 8
    inference_n_clips: int = 1
    batch_size: int = 16
    eval_batch_size: int = 16
    epochs: float = 10
    lr: float = 5e-5
    cnn_lr: float = 5e-5
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    warmup_ratio: float = 0.1
    grad_clip: float = 5.0
    seed: int = 0
    bf16: bool = False
    reshuffle: bool = False
    val_every: float = 0.1
    select_best: bool = False
    checkpoint_every: int = 500
    log_every: int = 20
    num_workers: int = 4

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        d["betas"] = tuple(d.get("betas", (0.9, 0.98)))
        return cls(**d)


PRESETS: dict[str, dict] = {
    # Upstream as published: one clip at the start of the video for evaluation, a shuffle that
    # never changes between epochs, fp32, the last checkpoint, text padded to 100 tokens.
    "faithful": {},
    # The same model with what upstream gets wrong fixed.
    "improved": {
        "reshuffle": True,
        "inference_n_clips": 16,
        "select_best": True,
        "bf16": True,
        "pad_to_max": False,
    },
    # Minutes on two CPU cores: a narrow 4-block ResNet at 128 px and a 2-layer 128-wide BERT.
    "tiny": {
        "model.depths": [1, 1, 1, 1],
        "model.stem_width": 16,
        "model.widths": [16, 32, 64, 128],
        "model.freeze_stem": False,
        "model.hidden_size": 128,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 256,
        "model.max_position_embeddings": 64,
        "model.num_labels": 0,
        "max_img_size": 128,
        "max_txt_len": 40,
        "pad_to_max": False,
        "train_n_clips": 2,
        "inference_n_clips": 2,
        "epochs": 12,
        "lr": 5e-4,
        "cnn_lr": 5e-4,
        "weight_decay": 1e-2,
        "reshuffle": True,
        "select_best": True,
        "val_every": 0.1,
        "checkpoint_every": 50,
        "num_workers": 0,
    },
}


def make_config(preset: str, overrides: dict | None = None) -> TrainConfig:
    """A preset plus `overrides` (dotted keys such as `model.num_layers` reach the model)."""
    if preset not in PRESETS:
        raise ClipbertError(f"unknown preset {preset!r} (one of {', '.join(PRESETS)})")
    d = TrainConfig().to_dict()
    d["preset"] = preset
    for key, value in {**PRESETS[preset], **(overrides or {})}.items():
        target, name = d, key
        if key.startswith("model."):
            target, name = d["model"], key.removeprefix("model.")
        if name not in target or name == "model":
            raise ClipbertError(f"unknown training setting {key!r}")
        target[name] = value
    return TrainConfig.from_dict(d)


def fingerprint(cfg: TrainConfig) -> str:
    """What must match for a saved state to be resumed (everything but pure logging knobs)."""
    d = cfg.to_dict()
    for key in ("log_every", "checkpoint_every", "num_workers", "eval_batch_size"):
        d.pop(key)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Linear warm-up over the first `warmup_ratio` of steps, then linear decay to zero."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


def param_groups(model: ClipBert, cfg: TrainConfig) -> list[dict]:
    """CNN and transformer get their own learning rate; biases and norm weights (the 1-D
    parameters) get no weight decay."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "cnn" if name.startswith("cnn.") else "transformer"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.cnn_lr if part == "cnn" else cfg.lr,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (part, decay), params in sorted(groups.items())
    ]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """One process per GPU under torchrun (gloo on CPU); a plain single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def load_vocab_tokens(path: str | os.PathLike) -> list[str]:
    from clipbert.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    vocab = tok.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def tokenizer_from_tokens(tokens: list[str]):
    """Rebuild the tokenizer stored inside a model file, so inference needs no vocab path."""
    from clipbert.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(t + "\n" for t in tokens))
        return load_tokenizer(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_order(n: int, epoch: int, cfg: TrainConfig) -> list[int]:
    """The example order of one epoch. Faithful: one shuffle reused every epoch (upstream never
    reshuffled); otherwise a new permutation per epoch."""
    rng = np.random.default_rng([cfg.seed, epoch if cfg.reshuffle else 0])
    return rng.permutation(n).tolist()


def epoch_batches(n: int, epoch: int, cfg: TrainConfig, d: Dist) -> list[list[int]]:
    """Global batches of one epoch, each cut into this rank's share (strided)."""
    order = epoch_order(n, epoch, cfg)
    gb = cfg.batch_size * d.world
    batches = [order[i : i + gb] for i in range(0, n, gb)]
    batches = [b for b in batches if len(b) >= d.world]
    return [b[d.rank :: d.world] for b in batches]


def save_model_file(path, model: ClipBert, cfg: TrainConfig, ans2label: dict, tokens: list[str],
                    extra: dict) -> None:
    """The self-contained model file: weights (fp32), configs, answer map, tokenizer vocab."""
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    obj = {"format": "clipbert-native-1", "train_config": cfg.to_dict(), "state_dict": state,
           "ans2label": ans2label, "vocab": tokens, **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(cfg: TrainConfig, data_dir, lmdb_dir, out, state_dir, metrics=None, vocab=None,
          weights: dict | None = None) -> dict:
    """Fine-tune on `{data_dir}/train.jsonl`, validate on `val.jsonl`, write the model to `out`."""
    from clipbert import data, evaluate
    from clipbert.checkpoints import load_pretrained
    from clipbert.tokenizer import load_tokenizer

    d, device = setup_distributed()
    data_dir, state_dir = Path(data_dir), Path(state_dir)
    if vocab is None:
        raise ClipbertError("no tokenizer vocabulary given (config weights.vocab)")
    tokenizer = load_tokenizer(vocab)
    tokens = load_vocab_tokens(vocab)
    ans2label = json.loads((data_dir / "train_ans2label.json").read_text())
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_path = data_dir / "val.jsonl"
    val_rows = read_jsonl(val_path) if val_path.exists() else []
    if not train_rows:
        raise ClipbertError(f"{data_dir / 'train.jsonl'}: no training questions")

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=len(tokens), num_labels=max(len(ans2label), cfg.model.num_labels)))
    seed_everything(cfg.seed)
    model = ClipBert(cfg.model)
    load_pretrained(model, **(weights or {}), verbose=d.main)
    model.to(device)
    ddp_model = model
    if d.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set = data.VideoQADataset(
        train_rows, lmdb_dir, ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.train_n_clips, train=True, seed=cfg.seed)
    val_set = data.VideoQADataset(
        val_rows, lmdb_dir, ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.inference_n_clips, train=False, seed=cfg.seed)
    collate = data.make_collate(tokenizer, cfg.max_txt_len, cfg.pad_to_max)

    steps_per_epoch = len(epoch_batches(len(train_rows), 0, cfg, d))
    total = math.ceil(cfg.epochs * steps_per_epoch)
    val_interval = max(1, round(total * cfg.val_every))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas, eps=cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, cfg.warmup_ratio))
    use_bf16 = cfg.bf16 and device.type == "cuda"

    state_dir.mkdir(parents=True, exist_ok=True)
    last, best = state_dir / "last.pt", state_dir / "best.pt"
    metrics_tmp = state_dir / "metrics.jsonl"
    step, best_acc, last_acc = 0, -1.0, None
    fp = fingerprint(cfg)
    if last.exists():
        st = torch.load(last, map_location="cpu", weights_only=False)
        if st["fingerprint"] != fp:
            raise ClipbertError(
                f"{last}: saved by a run with other settings; delete {state_dir} to start over")
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        step, best_acc = st["step"], st["best_acc"]
        if d.main:
            print(f"resuming from {last} at step {step}/{total}", flush=True)
    if d.main and metrics_tmp.exists():
        kept = [r for r in read_jsonl(metrics_tmp) if r["step"] <= step]
        metrics_tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def save_state() -> None:
        if not d.main:
            return
        st = {"fingerprint": fp, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
              "scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step,
              "best_acc": best_acc}
        with atomic_path(last) as tmp:
            torch.save(st, tmp)

    def log(row: dict) -> None:
        if d.main:
            print(json.dumps(row), flush=True)
            with open(metrics_tmp, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    if d.main:
        print(f"training {len(train_rows)} questions, {total} steps of global batch "
              f"{cfg.batch_size * d.world} ({d.world} process(es), {device})", flush=True)
    model.train()
    loss_sum, loss_n, t0, seen = 0.0, 0, time.perf_counter(), 0
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        train_set.epoch = epoch
        batches = epoch_batches(len(train_rows), epoch, cfg, d)[pos:]
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch in loader:
            if batch is None:  # every video of this batch failed to decode (logged by data)
                step += 1
                scheduler.step()
                continue
            frames = data.preprocess_frames(batch["frames"].to(device), cfg.max_img_size)
            labels = batch["labels"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = ddp_model(frames, batch["input_ids"].to(device),
                                   batch["attention_mask"].to(device))
            loss = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
            loss = loss / max(1, int((labels >= 0).sum()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum, loss_n, seen = loss_sum + float(loss.detach()), loss_n + 1, seen + len(labels)
            row = None
            if step % cfg.log_every == 0 or step % val_interval == 0 or step == total:
                dt = time.perf_counter() - t0
                row = {"step": step, "epoch": epoch, "loss": round(loss_sum / loss_n, 5),
                       "lr": scheduler.get_last_lr()[-1],
                       "examples_per_s": round(seen * d.world / dt, 2)}
                loss_sum, loss_n, t0, seen = 0.0, 0, time.perf_counter(), 0
            if (step % val_interval == 0 or step == total) and val_rows and d.main:
                preds = evaluate.predict(model, val_set, collate, device, cfg)
                acc = evaluate.score(val_rows, evaluate.label_answers(preds, ans2label))["overall"]
                row["val_acc"] = last_acc = acc
                if cfg.select_best and acc > best_acc:
                    best_acc = acc
                    save_model_file(best, model, cfg, ans2label, tokens,
                                    {"step": step, "val_accuracy": acc})
                model.train()
            if row is not None:
                log(row)
            if step % cfg.checkpoint_every == 0 or step % val_interval == 0 or step == total:
                save_state()
            if step >= total:
                break

    if d.main:
        if cfg.select_best and best.exists():
            with atomic_path(out) as tmp:
                shutil.copyfile(best, tmp)
        else:
            save_model_file(out, model, cfg, ans2label, tokens,
                            {"step": step, "val_accuracy": last_acc})
        if metrics:
            with atomic_path(metrics) as tmp:
                shutil.copyfile(metrics_tmp, tmp)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": total, "best_val_acc": best_acc}
