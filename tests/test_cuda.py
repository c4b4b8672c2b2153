"""The GPU code paths: bf16 autocast with channels-last training and inference, and DDP with
SyncBatchNorm. Skipped without CUDA (CI has none); `benchmarks/gpu_check.sh` runs them on a lent
GPU. With one GPU the two processes share it over gloo (`CLIPBERT_DIST_BACKEND=gloo`), which is
the multi-GPU code path with a slower transport."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import SMALL, cli_train_args, env1, make_data, state_dict

from clipbert import distributed, evaluate, modelfile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_cuda_data(root: Path) -> dict[str, Path]:
    """test_train's data with the `improved` video encode (PyAV and Pillow): a bare GPU machine
    has no OpenCV (`benchmarks/gpu_check.sh --data-only` builds exactly this)."""
    return make_data(root, video_preset="improved")


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict[str, Path]:
    return make_cuda_data(tmp_path_factory.mktemp("demo"))


def run(cmd: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env={**env1(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bf16_channels_last_training_learns_and_infers_on_the_gpu(ds, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    args = cli_train_args(ds, out, {"bf16": True, "epochs": 4, "val_every": 0.25})
    proc = run([sys.executable, "-m", "clipbert", "train", *args])
    assert "(1 process(es), cuda:0)" in proc.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").open()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    model, cfg, _, _ = modelfile.load_model(out / "model.pt", "cuda")
    assert cfg.bf16 and cfg.channels_last
    conv = model.cnn.backbone.layer2[0].conv2.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    result = evaluate.infer(out / "model.pt", ds["data_dir"] / "test.jsonl", ds["lmdb_dir"],
                            tmp_path / "pred.jsonl", tmp_path / "acc.json")
    assert result["bf16"] is True and result["n_questions"] == 16
    # bf16 changes rounding only: the same weights in fp32 on the CPU give close logits.
    cpu_model, _, _, _ = modelfile.load_model(out / "model.pt", "cpu")
    torch.manual_seed(0)
    frames = torch.randn(2, 2, 2, 3, cfg.max_img_size, cfg.max_img_size)
    ids = torch.randint(5, cfg.model.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got = model(frames.cuda(), ids.cuda(), mask.cuda()).cpu()
    with torch.no_grad():
        ref = cpu_model(frames, ids, mask)
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-2


# Trained BatchNorm, fp32 (TF32 allowed), dropout off: under DDP on CUDA it is SyncBatchNorm.
DDP_SETTINGS = {"model.dropout": 0.0, "model.frozen_bn": False, "checkpoint_every": 100}


def one_and_two(ds: dict[str, Path], root: Path, overrides: dict) -> tuple[Path, Path]:
    """The same training in one process at batch 8 and in two (gloo, sharing the GPU) at 4."""
    one, two = root / "one", root / "two"
    run([sys.executable, "-m", "clipbert", "train",
         *cli_train_args(ds, one, {**DDP_SETTINGS, **overrides, "batch_size": 8})])
    cmd = distributed.torchrun_command(
        2, cli_train_args(ds, two, {**DDP_SETTINGS, **overrides, "batch_size": 4}))
    proc = run(cmd, {"CLIPBERT_DIST_BACKEND": "gloo"})
    assert "of global batch 8 (2 process(es), cuda:0)" in proc.stdout
    return one, two


def test_two_processes_with_sync_batchnorm_match_one(ds, tmp_path: Path) -> None:
    """SyncBatchNorm makes 2 x batch 4 normalise like 1 x batch 8. Compared is what agrees on
    any hardware: the loss curve within 2 % (+1e-3), and the weights after ONE step.

    Neither the running statistics nor the weights after many steps are compared: AdamW's
    normalised update turns rounding into sign-like steps of the learning rate's size (on the
    CPU, two runs differing only in their thread count keep their losses within 3e-4, yet after
    16 steps conv weights differ by up to 8e-3 and a running_var by 2.7 %), and SyncBatchNorm
    against cuDNN's BatchNorm, with cuDNN choosing algorithms per process, rounds differently.
    After one step from the same initial weights Adam's update is lr * g / (|g| + eps): the runs
    differ only where rounding flips the sign of a near-zero gradient, by at most 2 x lr."""
    one, two = one_and_two(ds, tmp_path / "curve", {"epochs": 2, "val_every": 0.5})
    la, lb = ([json.loads(x)["loss"] for x in (d / "metrics.jsonl").open()] for d in (one, two))
    assert len(la) == len(lb) == 16
    assert lb == pytest.approx(la, rel=2e-2, abs=1e-3)
    assert la[-1] < la[0]

    one, two = one_and_two(ds, tmp_path / "step", {"epochs": 1 / 8, "val_every": 1.0})
    model_a, cfg, _, _ = modelfile.load_model(one / "model.pt", "cpu")
    wb = state_dict(two / "model.pt")
    bound = 2 * max(cfg.lr, cfg.cnn_lr) + 1e-6
    trained = [(k, p.detach()) for k, p in model_a.named_parameters() if p.requires_grad]
    assert any(k.endswith("bn1.weight") for k, _ in trained)  # trained BatchNorm is there
    differ = total = 0
    for k, a in trained:
        diff = (a - wb[k].float()).abs()
        assert diff.max() <= bound, (k, float(diff.max()))
        differ, total = differ + int((diff > 0.1 * bound).sum()), total + diff.numel()
    assert differ <= 0.01 * total, f"{differ} of {total} weights took another step"


def test_two_processes_train_in_bf16_with_sync_batchnorm(ds, tmp_path: Path) -> None:
    """bf16 autocast with SyncBatchNorm (the improved preset's multi-GPU path): it runs, learns,
    and its first loss (the same initial weights; only rounding differs) is that of one process
    at the same global batch."""
    one, two = one_and_two(ds, tmp_path, {"epochs": 1, "val_every": 1.0, "bf16": True})
    model, cfg, _, _ = modelfile.load_model(two / "model.pt", "cuda")
    assert cfg.bf16
    la, lb = ([json.loads(x)["loss"] for x in (d / "metrics.jsonl").open()] for d in (one, two))
    assert all(torch.isfinite(torch.tensor(lb))) and lb[-1] < lb[0]
    assert lb[0] == pytest.approx(la[0], rel=2e-2)


def test_the_resumable_state_keeps_this_devices_cuda_rng_only(tmp_path: Path) -> None:
    """One generator state, this process's GPU's: a resume under fewer visible GPUs finds it.
    A state of the older format (every visible GPU's) is read at this device's index."""
    from clipbert import train

    device = torch.device("cuda", torch.cuda.current_device())
    state = train.rng_state(device)
    assert isinstance(state["cuda"], torch.Tensor)
    torch.save(state, tmp_path / "rng.pt")
    want = torch.rand(3, device=device).tolist()
    for saved in (state["cuda"], [state["cuda"]] * (device.index + 1)):
        loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
        loaded["cuda"] = saved
        train.set_rng_state(loaded, device)
        assert torch.rand(3, device=device).tolist() == want


def test_the_forward_pass_makes_the_host_wait_for_nothing() -> None:
    """No host-device sync in a training forward: the pixel mean is made once per device and the
    attention mask is built without transformers' `mask.all()` shortcut (each was a sync per
    forward). CUDA's sync debug mode turns any sync into an error."""
    import dataclasses

    from clipbert import config, runtime
    from clipbert.model import build_model

    cfg = config.make_config("tiny", {**SMALL, "model.num_labels": 5})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=100))
    device = torch.device("cuda", torch.cuda.current_device())
    model = runtime.place(build_model(cfg.model), cfg, device).train()
    s = cfg.max_img_size
    batch = {"frames": torch.randint(0, 255, (2, 2, 2, s, s, 3), dtype=torch.uint8),
             "input_ids": torch.randint(5, 100, (2, 9)),
             "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    batch = {k: v.pin_memory() for k, v in batch.items()}
    runtime.forward_batch(model, batch, cfg, device)  # the first pass may set things up
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        logits = runtime.forward_batch(model, batch, cfg, device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.shape == (2, 5)
