"""Update rules and learning-rate schedules: upstream's, and torch's with whole epochs.

The `faithful` preset (`optimizer: upstream`, `schedule: upstream`) reproduces the SQA3D ClipBERT
fork as measured from outside (spec/model.md §3):

- its AdamW (the older Hugging Face one, not `torch.optim.AdamW`): eps is added to sqrt(v) before
  the bias correction, which is folded into the step size lr x sqrt(1 - b2^t) / (1 - b1^t), and
  the weight decay comes after the Adam step, on the updated parameter: p <- p - lr x wd x p;
- its schedule: update j (j = 1, 2, ...) runs at lr x j / W while j < W, else
  lr x max(0, (N - j) / (N - W)), with W = int(warmup_ratio x N), a rate <= 0 becoming 1e-8;
- its step count N = ceil(epochs x n / global batch).

`schedule: epochs` is this project's earlier one, kept so that `improved` and `tiny` results stay
comparable: N = epochs x batches per epoch, a warm-up of at least one update, and update j at the
rate upstream's formula gives update j - 1 after the warm-up, so that no update runs at 1e-8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from clipbert.config import CHOICES

OPTIMIZERS, SCHEDULES = CHOICES["optimizer"], CHOICES["schedule"]
# Upstream's rate where its formula gives zero or less (the last update).
FLOOR_LR = 1e-8


class UpstreamAdamW(torch.optim.Optimizer):
    """AdamW as the SQA3D ClipBERT fork updates: eps outside the bias correction, decoupled
    weight decay applied to the parameter after its Adam step."""

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"bad AdamW setting: lr {lr}, betas {betas}, eps {eps}, "
                             f"weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = (group["lr"], group["betas"], group["eps"],
                                     group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("UpstreamAdamW does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if wd > 0:
                    p.add_(p, alpha=-lr * wd)
        return loss


def make_optimizer(kind: str, groups: list[dict], betas: tuple[float, float],
                   eps: float) -> torch.optim.Optimizer:
    """`upstream`: `UpstreamAdamW`; `torch`: `torch.optim.AdamW` (the same groups)."""
    if kind == "upstream":
        return UpstreamAdamW(groups, betas=betas, eps=eps)
    if kind == "torch":
        return torch.optim.AdamW(groups, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {kind!r} (one of {', '.join(OPTIMIZERS)})")


def total_steps(schedule: str, epochs: float, n_examples: int, global_batch: int,
                steps_per_epoch: int) -> int:
    """The number of updates: upstream's ceil(epochs x n / batch), or whole epochs' batches
    (`epochs`); they differ by fewer than `epochs` when n is not a multiple of the batch."""
    if schedule == "upstream":
        return math.ceil(epochs * n_examples / global_batch)
    if schedule == "epochs":
        return math.ceil(epochs * steps_per_epoch)
    raise ValueError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def upstream_rate(lr: float, update: int, total: int, warmup_ratio: float) -> float:
    """The rate upstream's formula gives update `update` (counted from 1) of `total`."""
    warmup = int(warmup_ratio * total)
    if update < warmup:
        rate = lr * update / warmup
    else:
        rate = lr * max(0.0, (total - update) / max(1, total - warmup))
    return rate if rate > 0 else FLOOR_LR


def epochs_factor(step: int, total: int, warmup_ratio: float) -> float:
    """The `epochs` schedule's factor of the base rate for the update after `step` updates."""
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class UpstreamSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Upstream's rates set directly (not as a factor of the base rate, so exact to the last
    digit): after `last_epoch` updates each group holds the rate of update `last_epoch` + 1."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> None:
        self.total, self.warmup_ratio = total, warmup_ratio
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [upstream_rate(base, self.last_epoch + 1, self.total, self.warmup_ratio)
                for base in self.base_lrs]


def make_scheduler(schedule: str, optimizer: torch.optim.Optimizer, total: int,
                   warmup_ratio: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler whose rates, when update j runs, are update j's: what the log shows."""
    if schedule == "upstream":
        return UpstreamSchedule(optimizer, total, warmup_ratio)
    if schedule == "epochs":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: epochs_factor(step, total, warmup_ratio))
    raise ValueError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
