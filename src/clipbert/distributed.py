"""Processes of a training run: one per GPU under torchrun, how the workflow starts them, and
the DDP wrapper around the model.

Under torchrun every rank takes a strided share of each global batch (`batch_size` is per
process) and only rank 0 writes files; see `train.py` for how the loss is scaled so that the
gradient is that of the global batch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clipbert.errors import ClipbertError
from clipbert.qa import TrainFiles
from clipbert.runtime import JOB_CPUS_ENV


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
        # NCCL binds its communicator to this device at once (no barrier warning, no guess).
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return d, device


def wrap_ddp(model: nn.Module, d: Dist, device: torch.device, trained_bn: bool
             ) -> tuple[nn.Module, object]:
    """(module the training step calls, process group for small host-side collectives).

    One process: the model itself. Several: trained BatchNorm becomes SyncBatchNorm on CUDA (it
    must see the whole global batch, as in one process), the model is wrapped in DDP, and
    example counts and validation answers go over gloo so they never wait for the GPU queue.
    """
    if d.world == 1:
        return model, None
    if trained_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True, **_buffer_sync(trained_bn))
    group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return ddp, group


def _buffer_sync(on: bool) -> dict[str, bool]:
    """DDP's per-forward buffer broadcast (trained BatchNorm statistics), under the argument name
    this PyTorch knows: `forward_sync_buffers` replaced `broadcast_buffers` in 2.14."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": on}


def train_args(preset: str, overrides: dict, data_dir: str | os.PathLike | TrainFiles, lmdb_dir,
               out, state_dir, metrics=None, vocab=None,
               weights: dict | None = None) -> list[str]:
    """The `clipbert train` arguments of a run: what each torchrun process is started with."""
    if isinstance(data_dir, TrainFiles):
        data = ["--train", str(data_dir.train), "--answers", str(data_dir.ans2label)]
        data += ["--val", str(data_dir.val)] if data_dir.val is not None else []
    else:
        data = ["--data-dir", str(data_dir)]
    args = ["--preset", preset, *data, "--out", str(out), "--state-dir", str(state_dir)]
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


def torchrun_env(job_cpus: int | None) -> dict[str, str]:
    """The environment of torchrun's workers: this package first on the path, and the job's
    CPUs (the rule's threads), which each rank divides by the node's processes; Snakemake's
    OMP_NUM_THREADS would otherwise give every rank all of them."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # so the workers import this very package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    if job_cpus is not None:
        env[JOB_CPUS_ENV] = str(job_cpus)
    return env


def launch_torchrun(nproc: int, args: list[str], log=None, job_cpus: int | None = None) -> None:
    """Run `clipbert train ARGS` in `nproc` processes (one per GPU), output to `log` or ours;
    `job_cpus` (the rule's threads) are shared among them.

    If this process is stopped (SIGTERM unwinding, Ctrl-C), torchrun gets SIGTERM and is waited
    for, so that it stops its workers rather than leaving them running."""
    env = torchrun_env(job_cpus)
    cmd = torchrun_command(nproc, args)
    print(" ".join(cmd), flush=True)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a")) if log is not None else None
        proc = subprocess.Popen(cmd, env=env, stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None)
        try:
            rc = proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        where = f"; see {log}" if log is not None else ""
        raise ClipbertError(f"training in {nproc} processes failed (exit status {rc}){where}")
