"""Upstream's update rule, rate schedule and step count (clipbert.optim), against references
written out from the formulas of spec/model.md §3 and the rates measured on upstream's code."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from clipbert import config, optim

LR, N = 5e-5, 16_640  # SQA3D: 10 epochs of 26,623 questions at batch 16
# update -> (upstream's rate as measured, printed to 7 digits; its exact value; this project's
# earlier `epochs` schedule as measured, and its exact value). W = 1664, N - W = 14976.
TABLE = {
    1: ("3.004808e-08", LR / 1664, "3.004808e-08", LR / 1664),
    1664: ("5.000000e-05", LR, "5.000000e-05", LR),
    1665: ("4.999666e-05", LR * 14975 / 14976, "5.000000e-05", LR),
    8320: ("2.777778e-05", LR * 8320 / 14976, "2.778112e-05", LR * 8321 / 14976),
    16638: ("6.677350e-09", LR * 2 / 14976, "1.001603e-08", LR * 3 / 14976),
    16639: ("3.338675e-09", LR / 14976, "6.677350e-09", LR * 2 / 14976),
    16640: ("1.000000e-08", 1e-8, "3.338675e-09", LR / 14976),
}


def scheduled_rates(schedule: str, total: int, lrs: tuple[float, ...]) -> list[list[float]]:
    """Each group's rate when update j runs (j = 1..total), as the training loop reads it."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    opt = optim.UpstreamAdamW(groups)
    sched = optim.make_scheduler(schedule, opt, total, 0.1)
    rates = []
    for _ in range(total):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("schedule", ["upstream", "epochs"])
def test_rates_at_the_measured_updates(schedule: str) -> None:
    rates = scheduled_rates(schedule, N, (LR, 2 * LR))
    for j, (up_text, up, here_text, here) in TABLE.items():
        text, exact = (up_text, up) if schedule == "upstream" else (here_text, here)
        lr, lr2 = rates[j - 1]
        assert f"{lr:.6e}" == text, j
        assert lr == pytest.approx(exact, rel=1e-9, abs=0), j
        # a second group at twice the rate: the same schedule, and the same floor of 1e-8
        assert lr2 == pytest.approx(exact if j == N and schedule == "upstream" else 2 * exact,
                                    rel=1e-9, abs=0), j


def test_upstream_warmup_may_be_zero_updates() -> None:
    """int(0.1 x 8) = 0: no warm-up, decay from the first update, the last at 1e-8."""
    rates = [r[0] for r in scheduled_rates("upstream", 8, (1e-3,))]
    assert rates == pytest.approx([1e-3 * (8 - j) / 8 for j in range(1, 8)] + [1e-8], rel=1e-12)
    assert [r[0] for r in scheduled_rates("epochs", 8, (1e-3,))][0] == pytest.approx(1e-3)


def test_step_counts() -> None:
    assert optim.total_steps("upstream", 10, 26_623, 16, 1664) == N
    assert optim.total_steps("epochs", 10, 26_623, 16, 1664) == N
    # 64 questions at batch 7: 10 batches an epoch; upstream counts ceil(2 x 64 / 7) = 19
    assert optim.total_steps("upstream", 2, 64, 7, 10) == 19
    assert optim.total_steps("epochs", 2, 64, 7, 10) == 20
    assert optim.total_steps("upstream", 0.5, 64, 8, 8) == 4


def reference_adamw(p0: np.ndarray, grads: list[np.ndarray], lrs: list[float],
                    betas: tuple[float, float], eps: float, wd: float) -> np.ndarray:
    """Upstream's update, written out from the formulas: eps outside the bias correction, which
    is folded into the step size; weight decay on the parameter after its Adam step."""
    b1, b2 = betas
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        p = p - lr * wd * p
    return p


def run_optimizer(make, p0: np.ndarray, grads: list[np.ndarray], lrs: list[float],
                  wd: float) -> np.ndarray:
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = make([{"params": [p], "lr": lrs[0], "weight_decay": wd}])
    for g, lr in zip(grads, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.from_numpy(g)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("wd", [1e-3, 0.0])
def test_update_rule_matches_the_formulas_in_float64(wd: float) -> None:
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(7, 5))
    grads = [rng.normal(scale=10.0 ** rng.uniform(-4, 0), size=p0.shape) for _ in range(300)]
    total = len(grads)
    lrs = [optim.upstream_rate(1e-2, j, total, 0.1) for j in range(1, total + 1)]
    betas, eps = (0.9, 0.98), 1e-6
    want = reference_adamw(p0, grads, lrs, betas, eps, wd)
    got = run_optimizer(lambda g: optim.UpstreamAdamW(g, betas=betas, eps=eps), p0, grads, lrs,
                        wd)
    np.testing.assert_allclose(got - p0, want - p0, rtol=1e-12, atol=1e-15)
    # torch's AdamW is another rule: on the same gradients it drifts far beyond rounding
    other = run_optimizer(lambda g: torch.optim.AdamW(g, betas=betas, eps=eps), p0, grads, lrs,
                          wd)
    assert np.abs(other - want).max() > 1e-4 * np.abs(want - p0).max()


def test_optimizer_state_resumes_exactly() -> None:
    """Saved and loaded (weights_only, as the resumable state is) mid-run, the optimizer and the
    schedule continue bit for bit as if uninterrupted."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 3) for _ in range(12)]

    def fresh() -> tuple:
        p = torch.nn.Parameter(torch.ones(4, 3))
        opt = optim.UpstreamAdamW([{"params": [p], "lr": 1e-2, "weight_decay": 1e-3}],
                                  betas=(0.9, 0.98), eps=1e-6)
        return p, opt, optim.make_scheduler("upstream", opt, len(grads), 0.1)

    def steps(p, opt, sched, gs) -> None:
        for g in gs:
            p.grad = g.clone()
            opt.step()
            sched.step()

    p, opt, sched = fresh()
    steps(p, opt, sched, grads)
    q, opt2, sched2 = fresh()
    steps(q, opt2, sched2, grads[:5])
    buf = io.BytesIO()
    torch.save({"p": q.detach(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    r, opt3, sched3 = fresh()
    with torch.no_grad():
        r.copy_(saved["p"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    assert opt3.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    steps(r, opt3, sched3, grads[5:])
    assert torch.equal(r, p)


def test_presets_pick_their_optimizer() -> None:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}]
    for preset, kind in (("faithful", optim.UpstreamAdamW), ("improved", torch.optim.AdamW),
                         ("tiny", torch.optim.AdamW)):
        cfg = config.make_config(preset)
        opt = optim.make_optimizer(cfg.optimizer, groups, cfg.betas, cfg.adam_eps)
        assert type(opt) is kind, preset
    faithful = config.make_config("faithful")
    assert (faithful.optimizer, faithful.schedule) == ("upstream", "upstream")
    assert not isinstance(optim.make_optimizer("upstream", groups, (0.9, 0.98), 1e-6),
                          torch.optim.AdamW)
    with pytest.raises(config.ClipbertError, match="'optimizer': 'sgd' is not one of upstream"):
        config.make_config("faithful", {"optimizer": "sgd"})
    with pytest.raises(config.ClipbertError, match="'schedule': 'cosine' is not one of"):
        config.make_config("faithful", {"schedule": "cosine"})
