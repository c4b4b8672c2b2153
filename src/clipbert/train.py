"""The training loop: presets, AdamW with warm-up/decay, multi-clip loss, resumable state, DDP.

Read top to bottom: `make_config` picks a preset, `train` builds data and model, then runs one
flat loop over global steps. Resumable state lives in `state_dir` (never a declared Snakemake
output, since Snakemake deletes those before a rerun), so a killed job resumes where it stopped.

Resuming is exact: the state holds model, optimizer, scheduler, every rank's RNG streams, the
step (which fixes the epoch and the position inside it) and the running log sums; the example
order and the clip starts are pure functions of (seed, epoch, index), and validation draws from
none of the training streams. On CPU a killed and resumed run therefore ends bit-identical to an
uninterrupted one (tested); on GPU cuDNN autotuning and atomics make runs only close.

Under torchrun every rank takes a strided share of each global batch (`batch_size` is per
process), the loss is scaled so that DDP's gradient average equals the single-process gradient of
the global batch, validation is sharded over the ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import subprocess
import sys
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
from clipbert.model import ClipBert, ModelConfig, place_model


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
    # Speed only (same arithmetic up to rounding): NHWC convolutions on CUDA, torch.compile.
    channels_last: bool = True
    compile: bool = False

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
        # From scratch there are no statistics to freeze: BatchNorm trains, the stem too.
        "model.frozen_bn": False,
        "model.freeze_stem": False,
        "model.hidden_size": 128,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 256,
        "model.max_position_embeddings": 64,
        # BERT's std 0.02 suits 768 wide; at 128 wide it leaves the fused signal too weak to
        # learn from in minutes.
        "model.initializer_range": 0.1,
        "model.num_labels": 0,
        "max_img_size": 128,
        "max_txt_len": 40,
        "pad_to_max": False,
        "train_n_clips": 2,
        "inference_n_clips": 2,
        "epochs": 16,
        "lr": 3e-4,
        "cnn_lr": 1e-3,
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
    """What must match for a saved state to be resumed (everything but logging and speed
    knobs)."""
    d = cfg.to_dict()
    for key in ("log_every", "checkpoint_every", "num_workers", "eval_batch_size",
                "channels_last", "compile"):
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
            "name": part,
        }
        for (part, decay), params in sorted(groups.items())
    ]


# Weight sources that hold only the CNN (the blind baseline has none).
CNN_WEIGHTS = ("detectron2", "resnet")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """One process per GPU under torchrun (NCCL; gloo on CPU); a plain single process otherwise.

    `CLIPBERT_DIST_BACKEND=gloo` lets several processes share the visible GPUs (NCCL refuses
    two ranks on one device): slow, but it runs the multi-GPU code paths (DDP on CUDA tensors,
    SyncBatchNorm) on a machine with a single GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.cuda.is_available()
    backend = os.environ.get("CLIPBERT_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ClipbertError(f"CLIPBERT_DIST_BACKEND={backend!r}: nccl or gloo")
    if cuda:
        n_gpus = torch.cuda.device_count()
        if d.local_rank >= n_gpus and backend == "nccl":
            raise ClipbertError(f"process {d.local_rank} of {world} has no GPU: only {n_gpus} "
                                "visible (CLIPBERT_DIST_BACKEND=gloo shares them)")
        device = torch.device("cuda", d.local_rank % n_gpus)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    return d, device


def vocab_tokens(tokenizer) -> list[str]:
    """The vocabulary in id order, stored in the model file so inference needs no vocab path."""
    return [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]


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


def train_args(preset: str, overrides: dict, data_dir, lmdb_dir, out, state_dir, metrics=None,
               vocab=None, weights: dict | None = None) -> list[str]:
    """The `clipbert train` arguments of a run: what each torchrun process is started with."""
    args = ["--preset", preset, "--data-dir", str(data_dir), "--out", str(out),
            "--state-dir", str(state_dir)]
    if lmdb_dir is not None:
        args += ["--lmdb", str(lmdb_dir)]
    if metrics is not None:
        args += ["--metrics", str(metrics)]
    if vocab is not None:
        args += ["--vocab", str(vocab)]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    for kind, path in (weights or {}).items():
        if path:
            args += ["--init", f"{kind}={path}"]
    return args


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m clipbert train ARGS`, through this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "clipbert", "train", *args]


def launch_torchrun(nproc: int, args: list[str], log=None) -> None:
    """Run `clipbert train ARGS` in `nproc` processes (one per GPU), output to `log` or ours."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # so the workers import this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = torchrun_command(nproc, args)
    print(" ".join(cmd), flush=True)
    if log is None:
        rc = subprocess.run(cmd, env=env).returncode
    else:
        with open(log, "a") as fh:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        where = f"; see {log}" if log is not None else ""
        raise ClipbertError(f"training in {nproc} processes failed (exit status {rc}){where}")


def train(cfg: TrainConfig, data_dir, lmdb_dir, out, state_dir, metrics=None, vocab=None,
          weights: dict | None = None) -> dict:
    """Fine-tune on `{data_dir}/train.jsonl`, validate on `val.jsonl`, write the model to `out`.
    The blind baseline (`model.blind`) reads no video: `lmdb_dir` may then be None."""
    from clipbert import data, evaluate
    from clipbert.checkpoints import load_pretrained
    from clipbert.sqa import available_videos, check_videos
    from clipbert.tokenizer import load_tokenizer, truncation_report

    d, device = setup_distributed()
    data_dir, state_dir = Path(data_dir), Path(state_dir)
    if vocab is None:
        raise ClipbertError("no tokenizer vocabulary given (config weights.vocab)")
    blind = cfg.model.blind
    if blind:
        lmdb_dir = None
        cnn_only = sorted(k for k, v in (weights or {}).items() if v and k in CNN_WEIGHTS)
        if cnn_only and d.main:
            print(f"blind baseline: no CNN, so the {' and '.join(cnn_only)} weights are not used",
                  flush=True)
        weights = {k: v for k, v in (weights or {}).items() if k not in CNN_WEIGHTS}
    elif lmdb_dir is None:
        raise ClipbertError("no video LMDB given (only the blind baseline, model.blind, needs "
                            "none)")
    for need in ("train.jsonl", "train_ans2label.json"):
        if not (data_dir / need).is_file():
            raise ClipbertError(f"{data_dir / need}: not found (run the sqa conversion first)")
    tokenizer = load_tokenizer(vocab)
    tokens = vocab_tokens(tokenizer)
    ans2label = json.loads((data_dir / "train_ans2label.json").read_text())
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_path = data_dir / "val.jsonl"
    val_rows = read_jsonl(val_path) if val_path.exists() else []
    if not train_rows:
        raise ClipbertError(f"{data_dir / 'train.jsonl'}: no training questions")
    # Before any compute: every question needs its video, and long questions get reported.
    if not blind:
        videos = available_videos(lmdb_dir)
        for path in (data_dir / "train.jsonl", val_path):
            if path.exists():
                check_videos(path, videos)
    if d.main:
        for split, rows in (("train", train_rows), ("val", val_rows)):
            rep = truncation_report(tokenizer, [r["question"] for r in rows], cfg.max_txt_len)
            print(f"{split}: {rep['n']} questions, {rep['truncated']} cut at max_txt_len "
                  f"{cfg.max_txt_len} (longest {rep['max_len']} tokens, median "
                  f"{rep['median_len']}), {rep['with_unk']} with [UNK]", flush=True)

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=len(tokens), num_labels=max(len(ans2label), cfg.model.num_labels)))
    seed_everything(cfg.seed)
    model = ClipBert(cfg.model)
    load_pretrained(model, **(weights or {}), verbose=d.main)
    place_model(model, device, channels_last=cfg.channels_last and device.type == "cuda",
                compile=cfg.compile)
    # Every rank built the same initial weights from `cfg.seed`; from here each rank draws its
    # own dropout stream, independent of how many random numbers the initialisation consumed.
    seed_everything(cfg.seed + d.rank)
    ddp_model: torch.nn.Module = model
    cpu_group = None
    if d.world > 1:
        if not cfg.model.frozen_bn and device.type == "cuda":
            # Trained BatchNorm must see the whole global batch, as in one process.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True, **_buffer_sync(not cfg.model.frozen_bn))
        # Small host-side collectives (example counts, validation answers) go over gloo, so
        # they never wait for the GPU queue.
        cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_set = data.VideoQADataset(
        train_rows, lmdb_dir, ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.train_n_clips, train=True, seed=cfg.seed)
    val_set = data.VideoQADataset(
        val_rows, lmdb_dir, ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.inference_n_clips, train=False, seed=cfg.seed)
    collate = data.make_collate(tokenizer, cfg.max_txt_len, cfg.pad_to_max)

    steps_per_epoch = len(epoch_batches(len(train_rows), 0, cfg, d))
    if steps_per_epoch == 0:
        raise ClipbertError(f"{data_dir / 'train.jsonl'}: {len(train_rows)} questions are too few "
                            f"for {d.world} processes")
    total = math.ceil(cfg.epochs * steps_per_epoch)
    val_interval = max(1, round(total * cfg.val_every))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas, eps=cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, cfg.warmup_ratio))
    use_bf16 = cfg.bf16 and device.type == "cuda"
    select_best = cfg.select_best and bool(val_rows)
    if cfg.select_best and not val_rows and d.main:
        print(f"warning: {val_path} is missing or empty: keeping the final weights, not the "
              "best on val", flush=True)

    state_dir.mkdir(parents=True, exist_ok=True)
    last, best = state_dir / "last.pt", state_dir / "best.pt"
    metrics_tmp = state_dir / "metrics.jsonl"
    step, best_acc, last_acc = 0, -1.0, None
    # This rank's summed loss and the global example counts since the last log row (restored on
    # resume, so the rows of a resumed run are those of an uninterrupted one); `timed` counts the
    # examples since `t0` for the throughput.
    local_loss: float | torch.Tensor = 0.0
    items, labelled, timed = 0, 0, 0
    fp = fingerprint(cfg)
    if last.exists():
        try:
            st = torch.load(last, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - written atomically, so only a foreign file
            raise ClipbertError(f"{last}: unreadable resume state ({type(e).__name__}); delete "
                                f"{state_dir} to start over") from None
        if not isinstance(st, dict) or st.get("fingerprint") != fp:
            raise ClipbertError(
                f"{last}: saved by a run with other settings; delete {state_dir} to start over")
        if st["world"] != d.world:
            raise ClipbertError(
                f"{last}: saved by a run of {st['world']} process(es), this one has {d.world} "
                f"(the global batch would change); delete {state_dir} to start over")
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        mine = st["ranks"][d.rank]
        set_rng_state(mine["rng"])
        local_loss = mine["loss"]
        step, best_acc, last_acc = st["step"], st["best_acc"], st["last_acc"]
        items, labelled = st["items"], st["labelled"]
        if d.main:
            print(f"resuming from {last} at step {step}/{total}", flush=True)
        del st
    elif d.main:
        best.unlink(missing_ok=True)  # a leftover of an abandoned run is no candidate
    if d.main:
        _truncate_metrics(metrics_tmp, step)
    if d.world > 1:
        dist.barrier()

    def save_state() -> None:
        mine = {"rng": rng_state(), "loss": float(local_loss)}
        ranks = [mine]
        if d.world > 1:
            ranks = [None] * d.world
            dist.all_gather_object(ranks, mine, group=cpu_group)
        if not d.main:
            return
        st = {"fingerprint": fp, "world": d.world, "model": model.state_dict(),
              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
              "ranks": ranks, "step": step, "best_acc": best_acc, "last_acc": last_acc,
              "items": items, "labelled": labelled}
        with atomic_path(last) as tmp:
            torch.save(st, tmp)

    def validate() -> float:
        """Each rank answers its share of val; rank 0 gets all answers (no idle waiting)."""
        mine = list(range(d.rank, len(val_rows), d.world))
        preds = evaluate.predict(model, torch.utils.data.Subset(val_set, mine), collate,
                                 device, cfg)
        shares = [(mine, preds)]
        if d.world > 1:
            shares = [None] * d.world
            dist.all_gather_object(shares, (mine, preds), group=cpu_group)
        labels = [0] * len(val_rows)
        for idx, lab in shares:
            for i, v in zip(idx, lab, strict=True):
                labels[i] = v
        return evaluate.score(val_rows, evaluate.label_answers(labels, ans2label))["overall"]

    if d.main:
        print(f"training {len(train_rows)} questions, {total} steps of global batch "
              f"{cfg.batch_size * d.world} ({d.world} process(es), {device}); validation every "
              f"{val_interval} steps, {'best on val' if select_best else 'final'} weights kept",
              flush=True)
    model.train()
    t0 = time.perf_counter()
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        train_set.epoch = epoch
        batches = epoch_batches(len(train_rows), epoch, cfg, d)[pos:]
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            pin_memory=device.type == "cuda")
        for batch in loader:
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}  # the rates of this step
            counts = [0, 0] if batch is None else [len(batch["labels"]),
                                                   int((batch["labels"] >= 0).sum())]
            if d.world > 1:
                t = torch.tensor(counts, dtype=torch.long)
                dist.all_reduce(t, group=cpu_group)
                counts = t.tolist()
            items, labelled, timed = items + counts[0], labelled + counts[1], timed + counts[0]
            # A step whose every video failed to decode (logged by data) or whose answers are
            # all outside the answer vocabulary changes nothing but still counts, so that the
            # schedule and the data position stay those of an uninterrupted run.
            if counts[1] > 0:
                local_loss += _train_step(ddp_model, batch, cfg, d, device, counts[1],
                                          tokenizer, use_bf16, optimizer)
            scheduler.step()
            step += 1
            t_work = time.perf_counter()
            row = None
            if step % cfg.log_every == 0 or step % val_interval == 0 or step == total:
                loss = float(local_loss)
                if d.world > 1:
                    t = torch.tensor([loss], dtype=torch.float64)
                    dist.all_reduce(t, group=cpu_group)
                    loss = float(t[0])
                row = {"step": step, "epoch": epoch,
                       "loss": round(loss / labelled, 5) if labelled else None,
                       "lr": lrs.get("transformer"), "cnn_lr": lrs.get("cnn"),
                       "val_acc": None,
                       "examples_per_s": round(timed / max(t_work - t0, 1e-9), 2)}
                local_loss, items, labelled, timed = 0.0, 0, 0, 0
            if (step % val_interval == 0 or step == total) and val_rows:
                row["val_acc"] = last_acc = validate()
                if select_best and last_acc > best_acc:
                    best_acc = last_acc
                    if d.main:
                        save_model_file(best, model, cfg, ans2label, tokens,
                                        _model_extra(cfg, d, step, last_acc, "best on val"))
                model.train()
            if row is not None and d.main:
                print(json.dumps(row), flush=True)
                with open(metrics_tmp, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if step % cfg.checkpoint_every == 0 or step % val_interval == 0 or step == total:
                save_state()
            # Validation and checkpoints are not training time.
            t0 = time.perf_counter() if row is not None else t0 + time.perf_counter() - t_work
            if step >= total:
                break

    if d.main:
        if select_best and best.exists():
            with atomic_path(out) as tmp:
                shutil.copyfile(best, tmp)
        else:
            save_model_file(out, model, cfg, ans2label, tokens,
                            _model_extra(cfg, d, step, last_acc, "final"))
        if metrics:
            with atomic_path(metrics) as tmp:
                shutil.copyfile(metrics_tmp, tmp)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": total, "best_val_acc": best_acc if select_best else None,
            "final_val_acc": last_acc}


def _train_step(ddp_model: torch.nn.Module, batch: dict | None, cfg: TrainConfig, d: Dist,
                device: torch.device, global_labelled: int, tokenizer, use_bf16: bool,
                optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One update on this rank's share of a global batch; returns this rank's summed loss (a
    tensor, so that the host does not wait for the device every step).

    The loss is scaled so that DDP's gradient average over ranks equals the gradient of the mean
    loss over the whole global batch, however unevenly its labelled examples fall on the ranks.
    A rank whose share is empty (all undecodable) still runs a zero-weighted pass on a blank
    input, because DDP needs every rank in every gradient exchange.
    """
    empty = batch is None
    if empty:
        batch = _blank_batch(cfg, tokenizer)
    from clipbert import data

    frames = data.batch_frames(batch, cfg.max_img_size, device)
    labels = batch["labels"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = ddp_model(frames, batch["input_ids"].to(device, non_blocking=True),
                           batch["attention_mask"].to(device, non_blocking=True))
    if empty:
        loss_sum = logits.sum() * 0.0
    else:
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (d.world / global_labelled)).backward()
    torch.nn.utils.clip_grad_norm_(
        [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    optimizer.step()
    return loss_sum.detach()


def _buffer_sync(on: bool) -> dict[str, bool]:
    """DDP's per-forward buffer broadcast (trained BatchNorm statistics), under the argument name
    this PyTorch knows: `forward_sync_buffers` replaced `broadcast_buffers` in 2.14."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": on}


def _blank_batch(cfg: TrainConfig, tokenizer) -> dict:
    """One black clip with an empty question, shaped like a real batch of one."""
    s = cfg.max_img_size
    ids = torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.full((1,), -1, dtype=torch.long)}
    if not cfg.model.blind:
        batch["frames"] = torch.zeros(1, cfg.train_n_clips, cfg.num_frm, s, s, 3,
                                      dtype=torch.uint8)
    return batch


def _model_extra(cfg: TrainConfig, d: Dist, step: int, val_acc: float | None, chosen: str) -> dict:
    return {"step": step, "val_accuracy": val_acc, "chosen": chosen, "world_size": d.world,
            "global_batch": cfg.batch_size * d.world}


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows up to the resumed step; rows written after the last checkpoint (and
    a line torn by a kill) are dropped, since the resumed run writes them again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or row.get("step", step + 1) > step:
            break
        kept.append(line + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept))
