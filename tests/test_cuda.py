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
from test_train import cli_train_args, env1, make_data, state_dict

from clipbert import distributed, evaluate, modelfile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("demo"))


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


def test_two_processes_with_sync_batchnorm_match_one(ds, tmp_path: Path) -> None:
    """Trained BatchNorm becomes SyncBatchNorm under DDP on CUDA, so 2 x batch 4 normalises
    like 1 x batch 8: the same loss curve and weights (fp32, dropout off; cuDNN's TF32 and
    reduction order allow a small difference)."""
    overrides = {"model.dropout": 0.0, "model.frozen_bn": False, "epochs": 2,
                 "checkpoint_every": 100, "val_every": 0.5}
    one = tmp_path / "one"
    run([sys.executable, "-m", "clipbert", "train",
         *cli_train_args(ds, one, {**overrides, "batch_size": 8})])
    two = tmp_path / "two"
    cmd = distributed.torchrun_command(2, cli_train_args(ds, two, {**overrides,
                                                                   "batch_size": 4}))
    proc = run(cmd, {"CLIPBERT_DIST_BACKEND": "gloo"})
    assert "16 steps of global batch 8 (2 process(es), cuda:0)" in proc.stdout
    ra, rb = ([json.loads(x) for x in (d / "metrics.jsonl").open()] for d in (one, two))
    la, lb = [r["loss"] for r in ra], [r["loss"] for r in rb]
    assert lb == pytest.approx(la, rel=2e-2, abs=1e-3)
    assert la[-1] < la[0]
    wa, wb = state_dict(one / "model.pt"), state_dict(two / "model.pt")
    running = [k for k in wa if k.endswith("running_mean")]
    assert running  # trained BatchNorm is there, and its statistics match too
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=2e-2, atol=2e-3), k
