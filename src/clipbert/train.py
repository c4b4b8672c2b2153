"""The training loop: AdamW with warm-up and decay (`optim.py`), the multi-clip loss, resumable
state, DDP.

Read `train` first: one flat loop over global steps. `build_run` makes everything it uses (data,
model, optimizer, schedule) and is shared with `benchmarks/bench_train.py`; `TrainState` is what
the loop carries from step to step; `train_step` is one update.

Resumable state lives in `state_dir` (never a declared Snakemake output, since Snakemake deletes
those before a rerun), so a killed job resumes where it stopped, but only the same run: the state
records the settings that change the result and a digest of every input (questions, answer map,
vocabulary, video LMDB, pretrained weights), and a state saved by any other run is set aside,
the log naming what changed. Resuming is exact: the state holds model, optimizer, scheduler,
every rank's RNG streams, the step (which fixes the epoch and the position inside it) and the
running log sums; the example order and the clip starts are pure functions of (seed, epoch,
index), and validation draws from none of the training streams. On CPU a killed and resumed run
therefore ends bit-identical to an uninterrupted one (tested); on GPU cuDNN autotuning and
atomics make runs only close.

Under torchrun (`distributed.py`) the loss is scaled so that DDP's gradient average equals the
single-process gradient of the global batch, validation is sharded over the ranks, and only rank
0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clipbert import data, evaluate, optim, runtime, vislmdb
from clipbert.checkpoints import load_pretrained, save_tensors, unused_weights
from clipbert.config import TrainConfig, result_settings
from clipbert.distributed import Dist, setup_distributed, wrap_ddp
from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path, content_digest, file_sha256, read_json, write_json
from clipbert.model import build_model, variant_class
from clipbert.modelfile import save_model_file, vocab_tokens
from clipbert.qa import ANS2LABEL, TrainFiles, read_rows
from clipbert.signals import held
from clipbert.sqa import available_videos, check_videos
from clipbert.tokenizer import load_tokenizer, truncation_report


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every RNG stream of this process as tensors and plain types, so that the resumable state
    loads with `weights_only=True` (no pickled objects: a planted file cannot run code). Of the
    GPUs only this process's own: a resume that sees fewer GPUs (`--gpus=1` after 8) has it."""
    version, words, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # saved by a version that kept every visible GPU's
        cuda = cuda[device.index] if device.type == "cuda" and device.index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


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


KEPT = "kept"  # the state folder's subfolder of `keep_every`'s models


# ---- a run: everything the loop uses ---------------------------------------------------------


@dataclass
class Run:
    """A training run as built from its settings and inputs (see `build_run`)."""

    cfg: TrainConfig  # sized to the data: vocab_size and num_labels filled in
    d: Dist
    device: torch.device
    model: nn.Module  # the bare model: saved, validated
    step_model: nn.Module  # what a training step calls (the DDP wrapper under torchrun)
    group: Any  # process group of host-side collectives (None in one process)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: Any
    ans2label: dict[str, int]
    train_rows: list[dict]
    val_rows: list[dict]
    train_set: data.VideoQADataset
    val_set: data.VideoQADataset
    collate: Any
    steps_per_epoch: int
    total: int
    val_interval: int
    inputs: dict[str, str]  # input name -> content digest (what a resumable state must match)

    @property
    def select_best(self) -> bool:
        return self.cfg.select_best and bool(self.val_rows)


@dataclass
class Inputs:
    """What a run reads from disk, checked before any compute."""

    train_rows: list[dict]
    val_rows: list[dict]
    ans2label: dict[str, int]
    tokenizer: Any
    lmdb_dir: Path | None


def read_inputs(cfg: TrainConfig, files: TrainFiles, lmdb_dir, vocab, main: bool) -> Inputs:
    """Questions, answer map and tokenizer; every question must have its video, and long
    questions are reported, before anything is computed."""
    if vocab is None:
        raise ClipbertError("no tokenizer vocabulary given (config weights.vocab)")
    if not variant_class(cfg.model).needs_video:
        lmdb_dir = None
    elif lmdb_dir is None:
        raise ClipbertError("no video LMDB given (only the blind baseline, model.variant=blind, "
                            "needs none)")
    for need in (files.train, files.ans2label):
        if not Path(need).is_file():
            raise ClipbertError(f"{need}: not found (run the sqa conversion first)")
    val = files.val if files.val is not None and Path(files.val).exists() else None
    inputs = Inputs(read_rows(files.train), read_rows(val) if val is not None else [],
                    read_json(files.ans2label), load_tokenizer(vocab),
                    None if lmdb_dir is None else Path(lmdb_dir))
    if not inputs.train_rows:
        raise ClipbertError(f"{files.train}: no training questions")
    if inputs.lmdb_dir is not None:
        videos = available_videos(inputs.lmdb_dir)
        for path in (files.train, val):
            if path is not None:
                check_videos(path, videos)
    if main:
        for split, rows in (("train", inputs.train_rows), ("val", inputs.val_rows)):
            rep = truncation_report(inputs.tokenizer, [r["question"] for r in rows],
                                    cfg.max_txt_len)
            print(f"{split}: {rep['n']} questions, {rep['truncated']} cut at max_txt_len "
                  f"{cfg.max_txt_len} (longest {rep['max_len']} tokens, median "
                  f"{rep['median_len']}), {rep['with_unk']} with [UNK]", flush=True)
    return inputs


def input_digests(files: TrainFiles, inputs: Inputs, vocab, weights: dict,
                  cache: dict) -> dict[str, str]:
    """Input name -> digest of its content: every file whose change changes the result."""
    named = {"train.jsonl": files.train, "val.jsonl": files.val, ANS2LABEL: files.ans2label}
    digests = {name: file_sha256(p) if p is not None and Path(p).exists() else "absent"
               for name, p in named.items()}
    digests["vocabulary"] = content_digest(vocab, cache)
    if inputs.lmdb_dir is not None:
        digests["video LMDB"] = vislmdb.content_digest(inputs.lmdb_dir)
    for kind, path in sorted(weights.items()):
        digests[f"weights.{kind}"] = content_digest(path, cache)
    return digests


def build_run(cfg: TrainConfig, data_dir: str | os.PathLike | TrainFiles, lmdb_dir, vocab,
              weights: dict | None = None,
              digest_cache: dict | None = None) -> Run:
    """Data, model (with its pretrained weights), optimizer and schedule of a run."""
    d, device = setup_distributed()
    files, weights = TrainFiles.of(data_dir), {k: v for k, v in (weights or {}).items() if v}
    inputs = read_inputs(cfg, files, lmdb_dir, vocab, d.main)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=len(inputs.tokenizer.get_vocab()),
        num_labels=max(len(inputs.ans2label), cfg.model.num_labels)))
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    for kind in unused_weights(model, weights):
        if d.main:
            print(f"weights: {kind} {weights[kind]} not used: the {cfg.model.variant} model "
                  "has no part it fills", flush=True)
        del weights[kind]
    cache = {} if digest_cache is None else digest_cache
    digests = input_digests(files, inputs, vocab, weights, cache) if d.main else {}
    load_pretrained(model, **weights, verbose=d.main)
    runtime.place(model, cfg, device, compile=False)
    # Every rank built the same initial weights from `cfg.seed`; from here each rank draws its
    # own dropout stream, independent of how many random numbers the initialisation consumed.
    seed_everything(cfg.seed + d.rank)
    step_model, group = wrap_ddp(model, d, device, trained_bn=not cfg.model.frozen_bn)
    if cfg.compile:  # after the DDP wrap, so that its all-reduce overlaps the backward
        step_model.compile()
    numerics = runtime.set_numerics(cfg, device)
    if numerics and d.main:
        print(numerics, flush=True)
    steps_per_epoch = len(epoch_batches(len(inputs.train_rows), 0, cfg, d))
    if steps_per_epoch == 0:
        raise ClipbertError(f"{files.train}: {len(inputs.train_rows)} questions "
                            f"are too few for {d.world} processes")
    total = optim.total_steps(cfg.schedule, cfg.epochs, len(inputs.train_rows),
                              cfg.batch_size * d.world, steps_per_epoch)
    optimizer = optim.make_optimizer(cfg.optimizer, model.param_groups(cfg), cfg.betas,
                                     cfg.adam_eps)
    return Run(
        cfg=cfg, d=d, device=device, model=model, step_model=step_model, group=group,
        optimizer=optimizer,
        scheduler=optim.make_scheduler(cfg.schedule, optimizer, total, cfg.warmup_ratio),
        tokenizer=inputs.tokenizer, ans2label=inputs.ans2label, train_rows=inputs.train_rows,
        val_rows=inputs.val_rows,
        train_set=data.dataset_for(cfg, inputs.train_rows, inputs.lmdb_dir, inputs.ans2label,
                                   train=True),
        val_set=data.dataset_for(cfg, inputs.val_rows, inputs.lmdb_dir, inputs.ans2label,
                                 train=False),
        collate=data.make_collate(inputs.tokenizer, cfg.max_txt_len, cfg.pad_to_max),
        steps_per_epoch=steps_per_epoch, total=total,
        val_interval=max(1, round(total * cfg.val_every)), inputs=digests)


# ---- the state carried from step to step -----------------------------------------------------


@dataclass
class TrainState:
    """What the loop carries between steps; all but `timed` is saved for a resume."""

    step: int = 0
    best_acc: float = -1.0
    last_acc: float | None = None
    loss: float | torch.Tensor = 0.0  # this rank's summed loss since the last log row
    labelled: int = 0  # labelled examples of all ranks since the last log row
    timed: int = 0  # examples since the throughput clock last started


def save_state(run: Run, st: TrainState, path: Path) -> None:
    """Rank 0 writes the resumable state (fp32 weights, optimizer, every rank's RNG)."""
    mine = {"rng": rng_state(run.device), "loss": float(st.loss)}
    ranks = [mine]
    if run.d.world > 1:
        ranks = [None] * run.d.world
        dist.all_gather_object(ranks, mine, group=run.group)
    if not run.d.main:
        return
    obj = {"settings": result_settings(run.cfg), "inputs": run.inputs, "world": run.d.world,
           "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
           "scheduler": run.scheduler.state_dict(), "ranks": ranks, "step": st.step,
           "best_acc": st.best_acc, "last_acc": st.last_acc, "labelled": st.labelled}
    save_tensors(obj, path)


def changes(saved: dict, run: Run) -> list[str]:
    """What differs between the run that saved `saved` and this one (empty: the same run)."""
    if "settings" not in saved or "inputs" not in saved:
        return ["the state's format (saved by an older version)"]
    now = result_settings(run.cfg)
    out = [f"setting {k}" for k in sorted(set(now) | set(saved["settings"]))
           if now.get(k) != saved["settings"].get(k)]
    out += [name for name in sorted(set(run.inputs) | set(saved["inputs"]))
            if run.inputs.get(name) != saved["inputs"].get(name)]
    if saved["world"] != run.d.world:
        out.append(f"process count ({saved['world']} then, {run.d.world} now)")
    return out


def resume(run: Run, state_dir: Path) -> TrainState:
    """The saved state of this very run, or a fresh one (the log says which, and why)."""
    last, main = state_dir / "last.pt", run.d.main
    saved, why = None, None  # why: None = nothing saved, [] = the same run, else what changed
    if main and last.exists():
        saved = _load_state(last)
        if saved is None:
            why = ["unsafe"]
        else:
            why = changes(saved, run) if isinstance(saved, dict) else ["not a resume state"]
    if run.d.world > 1:  # rank 0 decides for all
        box = [why]
        dist.broadcast_object_list(box, src=0, group=run.group)
        why = box[0]
    if why != []:
        if main and why == ["unsafe"]:
            aside = last.with_name(last.name + ".set-aside")
            last.replace(aside)
            print(f"not resuming {last}: it does not load as plain tensors (weights_only=True "
                  f"refused it; set aside as {aside.name}); training starts over", flush=True)
        elif main and why:
            # Kept (StateFiles): this run's state goes beside it until this run ends.
            print(f"not resuming {last}: saved by another run (changed: {', '.join(why)}); "
                  "training starts over", flush=True)
        if main and why == ["unsafe"]:  # no candidate for the best weights either
            (state_dir / "best.pt").unlink(missing_ok=True)
            shutil.rmtree(state_dir / KEPT, ignore_errors=True)
        return TrainState()
    if saved is None:
        saved = _load_state(last)
        if saved is None:  # replaced since rank 0 read it: not this run's own state
            raise ClipbertError(f"{last}: changed while training started; start again")
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    mine = saved["ranks"][run.d.rank]
    set_rng_state(mine["rng"], run.device)
    if main:
        print(f"resuming from {last} at step {saved['step']}/{run.total}", flush=True)
    return TrainState(step=saved["step"], best_acc=saved["best_acc"],
                      last_acc=saved["last_acc"], loss=mine["loss"], labelled=saved["labelled"])


def _load_state(last: Path) -> Any:
    """The resumable state, read with `weights_only=True` as every file here is; None when it
    does not load that way (a file of an older version with pickled RNG objects, a damaged or a
    planted one), which is then set aside rather than run."""
    try:
        return torch.load(last, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the reason, the state is not usable
        return None


# ---- one step, validation, logging ------------------------------------------------------------


class DivergenceWatch:
    """Stops a diverged run: a step whose loss or gradient norm is not finite is named (step,
    loss, rate) in one line, before anything is logged, validated or saved, so that no state or
    model of a diverged run is written. Each step's loss and norm stay device tensors until then
    (one host-device wait per check, not per step)."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, float | None, torch.Tensor, torch.Tensor]] = []
        self.step, self.lr = 0, None

    def at(self, step: int, lr: float | None) -> None:
        """The step (1-based, as the log counts) and the rate that the next update uses."""
        self.step, self.lr = step, lr

    def add(self, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.pending.append((self.step, self.lr, loss, norm))

    def check(self) -> None:
        """A ClipbertError naming the first non-finite step since the last check, if any."""
        if not self.pending:
            return
        values = torch.stack([torch.stack([loss.float(), norm.float()])
                              for _, _, loss, norm in self.pending]).cpu()
        pending, self.pending = self.pending, []
        bad = (~torch.isfinite(values)).any(dim=1).nonzero()
        if len(bad):
            i = int(bad[0])
            raise ClipbertError(diverged_message(pending[i][0], pending[i][1],
                                                 float(values[i, 0]), float(values[i, 1])))


def diverged_message(step: int, lr: float | None, loss: float, norm: float) -> str:
    """The one line of a diverged run: what was not finite, where, and at which rate."""
    rate = "?" if lr is None else f"{lr:g}"
    what = (f"loss is {loss}" if not math.isfinite(loss)
            else f"gradient norm is {norm} (loss {loss:.4g})")
    return (f"train: {what} at step {step} (lr {rate}): the run diverged; lower train.lr or "
            "lengthen the warm-up")



def train_step(run: Run, batch: dict | None, global_labelled: int,
               watch: DivergenceWatch | None = None) -> torch.Tensor:
    """One update on this rank's share of a global batch; returns this rank's summed loss (a
    tensor, so that the host does not wait for the device every step).

    The loss is scaled so that DDP's gradient average over ranks equals the gradient of the mean
    loss over the whole global batch, however unevenly its labelled examples fall on the ranks.
    A rank whose share is empty (all undecodable) still runs a zero-weighted pass on a blank
    input, because DDP needs every rank in every gradient exchange. `watch` gets the step's loss
    (as scaled for the backward pass) and gradient norm.
    """
    empty = batch is None
    if empty:
        batch = _blank_batch(run)
    logits = runtime.forward_batch(run.step_model, batch, run.cfg, run.device)
    if empty:
        loss_sum = logits.sum() * 0.0
    else:
        labels = batch["labels"].to(run.device, non_blocking=True)
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    run.optimizer.zero_grad(set_to_none=True)
    loss = loss_sum * (run.d.world / global_labelled)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(
        [p for g in run.optimizer.param_groups for p in g["params"]], run.cfg.grad_clip)
    if watch is not None:
        watch.add(loss.detach(), norm.detach())
    run.optimizer.step()
    return loss_sum.detach()


def _blank_batch(run: Run) -> dict:
    """One black clip with an empty question, shaped like a real batch of one."""
    cfg, tok = run.cfg, run.tokenizer
    ids = torch.tensor([[tok.cls_token_id, tok.sep_token_id]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.full((1,), -1, dtype=torch.long)}
    if run.model.needs_video:
        s = cfg.max_img_size
        batch["frames"] = torch.zeros(1, cfg.train_n_clips, cfg.num_frm, s, s, 3,
                                      dtype=torch.uint8)
    return batch


def validate(run: Run) -> float:
    """Each rank answers its share of val; rank 0 gets all answers (no idle waiting)."""
    d = run.d
    mine = list(range(d.rank, len(run.val_rows), d.world))
    preds = evaluate.predict(run.model, torch.utils.data.Subset(run.val_set, mine), run.collate,
                             run.device, run.cfg, n_answers=len(run.ans2label))
    shares = [(mine, preds)]
    if d.world > 1:
        shares = [None] * d.world
        dist.all_gather_object(shares, (mine, preds), group=run.group)
    labels = [0] * len(run.val_rows)
    for idx, lab in shares:
        for i, v in zip(idx, lab, strict=True):
            labels[i] = v
    answers = evaluate.label_answers(labels, run.ans2label)
    run.model.train()
    return evaluate.score(run.val_rows, answers)["overall"]


def due(run: Run, step: int) -> tuple[bool, bool, bool]:
    """Whether this step logs a metrics row, validates, and saves the resumable state: every
    validation (and the last step) does all three."""
    check = step % run.val_interval == 0 or step == run.total
    return (check or step % run.cfg.log_every == 0, check,
            check or step % run.cfg.checkpoint_every == 0)


def global_counts(run: Run, batch: dict | None) -> tuple[int, int]:
    """(examples, labelled examples) of this global batch, summed over the ranks."""
    counts = [0, 0] if batch is None else [len(batch["labels"]),
                                           int((batch["labels"] >= 0).sum())]
    if run.d.world > 1:
        t = torch.tensor(counts, dtype=torch.long)
        dist.all_reduce(t, group=run.group)
        counts = t.tolist()
    return counts[0], counts[1]


def log_row(run: Run, st: TrainState, epoch: int, lrs: dict, seconds: float) -> dict:
    """A metrics row from the sums since the last one (which it resets)."""
    loss = float(st.loss)
    if run.d.world > 1:
        t = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(t, group=run.group)
        loss = float(t[0])
    row = {"step": st.step, "epoch": epoch,
           "loss": round(loss / st.labelled, 5) if st.labelled else None,
           "lr": lrs.get("transformer"), "cnn_lr": lrs.get("cnn"), "val_acc": None,
           "examples_per_s": round(st.timed / max(seconds, 1e-9), 2)}
    st.loss, st.labelled, st.timed = 0.0, 0, 0
    return row


def epoch_loader(run: Run, epoch: int, pos: int) -> torch.utils.data.DataLoader:
    """The batches of `epoch` from batch `pos` on (a resumed run starts mid-epoch)."""
    run.train_set.epoch = epoch
    return batch_loader(run, epoch_batches(len(run.train_rows), epoch, run.cfg, run.d)[pos:],
                        run.cfg.seed + epoch)


def batch_loader(run: Run, batches: list[list[int]], seed: int) -> torch.utils.data.DataLoader:
    """The training DataLoader over `batches`: its workers (`runtime.loader_workers`), default
    prefetch and pinned memory on CUDA, in one place, so that the benchmark measures these."""
    return torch.utils.data.DataLoader(
        run.train_set, batch_sampler=batches, collate_fn=run.collate,
        num_workers=runtime.loader_workers(run.cfg.num_workers),
        generator=torch.Generator().manual_seed(seed), pin_memory=run.device.type == "cuda")


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def progress_line(run: Run, row: dict, elapsed: float, steps_done: int) -> str:
    """The log's line for a metrics row: where training is and how long it has left."""
    parts = [f"step {row['step']}/{run.total} ({100 * row['step'] / run.total:.0f}%)",
             f"epoch {row['epoch'] + 1}/{math.ceil(run.total / run.steps_per_epoch)}"]
    if row["loss"] is not None:
        parts.append(f"loss {row['loss']:.4f}")
    if row["val_acc"] is not None:
        parts.append(f"val {row['val_acc']:.2f} %")
    parts.append(f"{row['examples_per_s']:.1f} examples/s")
    left = (run.total - row["step"]) * elapsed / max(steps_done, 1)
    parts.append(f"{_duration(elapsed)} so far, ~{_duration(left)} left")
    return "train: " + ", ".join(parts)


def cpu_shares(run: Run) -> list[tuple[int, int]]:
    """(torch CPU threads, loader workers) of every rank, as each one uses them (every rank
    takes part; rank 0's list is complete)."""
    mine = (torch.get_num_threads(), runtime.loader_workers(run.cfg.num_workers))
    if run.d.world == 1:
        return [mine]
    shares: list = [None] * run.d.world
    dist.all_gather_object(shares, mine, group=run.group)
    return [tuple(x) for x in shares]


def cpu_line(shares: list[tuple[int, int]]) -> str:
    """How the job's CPUs are used: threads and loader workers per process."""
    if len(set(shares)) == 1:
        (threads, workers), = set(shares)
        each = " each" if len(shares) > 1 else ""
        return f"{threads} CPU thread(s) and {workers} loader worker(s){each}"
    return "CPU threads/loader workers by rank: " + ", ".join(f"{t}/{w}" for t, w in shares)


def announce(run: Run, shares: list[tuple[int, int]]) -> None:
    """The log's first lines about the loop: its size, the CPUs of each process, validation,
    which weights are kept."""
    cfg, d = run.cfg, run.d
    print(f"training {len(run.train_rows)} questions, {run.total} steps of global batch "
          f"{cfg.batch_size * d.world} ({d.world} process(es), {run.device}); "
          f"{cpu_line(shares)}; validation every {run.val_interval} steps, "
          f"{'best on val' if run.select_best else 'final'} weights kept; {cfg.optimizer} "
          f"AdamW, {cfg.schedule} schedule", flush=True)
    if cfg.select_best and not run.select_best:
        print("warning: val.jsonl is missing or empty: keeping the final weights, not the best "
              "on val", flush=True)


def model_extra(run: Run, st: TrainState, chosen: str) -> dict:
    """What the model file records about the run besides weights and settings."""
    return {"step": st.step, "val_accuracy": st.last_acc, "chosen": chosen,
            "world_size": run.d.world, "global_batch": run.cfg.batch_size * run.d.world}


def kept_path(state_dir: Path, step: int) -> Path:
    """Where `keep_every` keeps the model of update `step`."""
    return state_dir / KEPT / f"step{step:06d}.pt"


def keep_model(run: Run, st: TrainState, state_dir: Path) -> None:
    """The model after every `keep_every`-th update, a model file `clipbert infer` (or a `runs`
    variant's `infer.model`) scores: how much the choice among upstream's saves matters."""
    k = run.cfg.keep_every
    if k <= 0 or st.step % k or not run.d.main:
        return
    validated = due(run, st.step)[1] and bool(run.val_rows)
    extra = {**model_extra(run, st, f"update {st.step}"),
             "val_accuracy": st.last_acc if validated else None}
    save_model_file(kept_path(state_dir, st.step), run.model, run.cfg, run.ans2label,
                    vocab_tokens(run.tokenizer), extra)


PENDING = ".next"  # suffix of the folder where a new run's state waits to replace another's


class StateFiles:
    """The files of the resumable state. A run that finds another run's state (changed settings
    or inputs) keeps its own beside it, in `<state_dir>.next`, and swaps it in only once it has
    written its model: until then the other run's state stays whole, so a retrain that fails
    (a bad input, a divergence, a full disk) leaves the finished training resumable, and going
    back to its settings rewrites its model without a step. A killed retrain resumes from its
    own pending state. The cost: two states on disk while a retrain runs."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pending = False

    @property
    def dir(self) -> Path:
        return self.home.with_name(self.home.name + PENDING) if self.pending else self.home

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def rows(self) -> Path:
        return self.dir / "metrics.jsonl"

    def recover(self) -> None:
        """Finish what a killed run left: a swap cut short is completed, a replaced state that
        was being removed goes, and so does a pending folder with no saved state in it."""
        pending, old = self.home.with_name(self.home.name + PENDING), self._old()
        if not self.home.exists() and (pending / "last.pt").exists():
            self._swap(pending)
        if not (pending / "last.pt").exists():
            shutil.rmtree(pending, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

    def start_pending(self) -> None:
        """Start this run's state afresh beside another run's (the digest cache carried
        over)."""
        self.pending = True
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        cache = self.home / "digests.json"
        if cache.exists():
            shutil.copyfile(cache, self.dir / cache.name)

    def commit(self) -> None:
        """Once this run has written its model, its state replaces the other run's."""
        if self.pending and self.last.exists():
            self._swap(self.dir)
            self.pending = False

    def discard(self) -> None:
        """A run that stops before it saved a state leaves no folder beside the other run's
        (a saved one stays, to be resumed)."""
        if self.pending and not self.last.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _old(self) -> Path:
        return self.home.with_name(self.home.name + ".old")

    def _swap(self, new: Path) -> None:
        with held():
            old = self._old()
            if self.home.exists():
                os.replace(self.home, old)
            os.replace(new, self.home)
        shutil.rmtree(old, ignore_errors=True)


# ---- the loop ---------------------------------------------------------------------------------


def train(cfg: TrainConfig, data_dir: str | os.PathLike | TrainFiles, lmdb_dir, out, state_dir,
          metrics=None, vocab=None,
          weights: dict | None = None, threads: int | None = None) -> dict:
    """Fine-tune on `{data_dir}/train.jsonl`, validate on `val.jsonl`, write the model to `out`
    (or on the files a `TrainFiles` names).
    A model that reads no video (the blind baseline) needs no `lmdb_dir`. `threads` is the job's
    CPUs, divided among the processes of this node under torchrun (the float sums, so the
    numbers, depend on the threads; None: torch's default, or under torchrun the job's CPUs as
    `runtime.rank_cpus` finds them)."""
    runtime.set_threads(threads)
    state_dir = Path(state_dir)
    files = StateFiles(state_dir)
    cache_path = state_dir / "digests.json"
    cache = read_json(cache_path) if cache_path.exists() else {}
    run = build_run(cfg, data_dir, lmdb_dir, vocab, weights, digest_cache=cache)
    cfg, d = run.cfg, run.d
    if d.main:
        files.recover()
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json(cache_path, cache)
    st = resume(run, state_dir)
    other = [d.main and st.step == 0 and files.last.exists()]  # another run's state: kept
    if d.world > 1:
        dist.broadcast_object_list(other, src=0, group=run.group)
    if other[0]:
        files.pending = True
        st = resume(run, files.dir)  # this run's own, if a kill left one
        if d.main and st.step == 0:
            files.start_pending()
            print(f"{state_dir} is kept until this run ends: its state goes to {files.dir} "
                  "meanwhile", flush=True)
    try:
        return _loop(run, st, files, out, metrics)
    except BaseException:
        if d.main:
            files.discard()
        raise


def _loop(run: Run, st: TrainState, files: StateFiles, out, metrics) -> dict:
    """The steps from `st` on, then the model file and the metrics rows."""
    cfg, d = run.cfg, run.d
    shares = cpu_shares(run)
    if d.main:
        _truncate_metrics(files.rows, st.step)
        announce(run, shares)
    if d.world > 1:
        dist.barrier()
    run.model.train()
    t0 = t_start = time.perf_counter()
    step0 = st.step
    watch = DivergenceWatch()
    while st.step < run.total:
        epoch, pos = divmod(st.step, run.steps_per_epoch)
        for batch in epoch_loader(run, epoch, pos):
            lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}  # this step's rates
            n, labelled = global_counts(run, batch)
            st.labelled, st.timed = st.labelled + labelled, st.timed + n
            # A step whose every video failed to decode (logged by data) or whose answers are
            # all outside the answer vocabulary changes nothing but still counts, so that the
            # schedule and the data position stay those of an uninterrupted run.
            watch.at(st.step + 1, lrs.get("transformer"))
            if labelled > 0:
                st.loss += train_step(run, batch, labelled, watch)
            run.scheduler.step()
            st.step += 1
            t_work = time.perf_counter()
            log, check, save = due(run, st.step)
            if log or check or save:
                watch.check()
            row = log_row(run, st, epoch, lrs, t_work - t0) if log else None
            if check and run.val_rows:
                row["val_acc"] = st.last_acc = validate(run)
                if run.select_best and st.last_acc > st.best_acc:
                    st.best_acc = st.last_acc
                    if d.main:
                        save_model_file(files.best, run.model, cfg, run.ans2label,
                                        vocab_tokens(run.tokenizer),
                                        model_extra(run, st, "best on val"))
            if row is not None and d.main:
                print(progress_line(run, row, time.perf_counter() - t_start, st.step - step0),
                      flush=True)
                with open(files.rows, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if save:
                save_state(run, st, files.last)
            keep_model(run, st, files.dir)
            # Validation and checkpoints are not training time.
            t0 = time.perf_counter() if row is not None else t0 + time.perf_counter() - t_work
            if st.step >= run.total:
                break
    watch.check()
    if d.main:
        if run.select_best and files.best.exists():
            with atomic_path(out) as tmp:
                shutil.copyfile(files.best, tmp)
        else:
            save_model_file(out, run.model, cfg, run.ans2label, vocab_tokens(run.tokenizer),
                            model_extra(run, st, "final"))
        if metrics:
            with atomic_path(metrics) as tmp:
                shutil.copyfile(files.rows, tmp)
        files.commit()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": run.total, "best_val_acc": st.best_acc if run.select_best else None,
            "final_val_acc": st.last_acc}


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
