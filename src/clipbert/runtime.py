"""Where a model meets a device: placement, numerics (TF32, bf16 autocast) and the forward pass
of a collated batch, shared by training and evaluation so that both compute alike."""

from __future__ import annotations

import os

import torch
from torch import nn

from clipbert.config import TrainConfig
from clipbert.data import batch_frames
from clipbert.errors import ClipbertError
from clipbert.model import place_model


def bf16_on(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast is used only on CUDA: on the CPU it is slow and changes the results."""
    return cfg.bf16 and device.type == "cuda"


def place(model: nn.Module, cfg: TrainConfig, device: torch.device,
          compile: bool = True) -> nn.Module:
    """Move `model` to `device` with the run's layout (channels-last on CUDA) and, unless
    `compile` is off (training compiles after the DDP wrap), its compilation."""
    return place_model(model, device, channels_last=cfg.channels_last and device.type == "cuda",
                       compile=cfg.compile and compile)


# The CPUs of a whole training job (all its processes on this node), as the workflow passes
# them to torchrun's ranks: Snakemake's rule threads, which every rank would otherwise inherit.
JOB_CPUS_ENV = "CLIPBERT_JOB_CPUS"


def node_processes() -> int:
    """Processes of this job on this node: torchrun's LOCAL_WORLD_SIZE, 1 without torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def rank_cpus(threads: int | None) -> int | None:
    """The CPUs of this process: the job's CPUs divided by its processes on this node.

    The job's CPUs are `threads` (the rule's, in one process), else `CLIPBERT_JOB_CPUS` (the
    rule's, passed to torchrun's ranks), else under torchrun the affinity mask (torchrun by hand,
    which sets OMP_NUM_THREADS=1 for every rank); always capped at the mask (`--cores 16` on a
    2-CPU machine would only contend). None: one process with nothing given (torch's default).
    """
    if threads is None and os.environ.get(JOB_CPUS_ENV):
        try:
            threads = int(os.environ[JOB_CPUS_ENV])
        except ValueError:
            raise ClipbertError(f"{JOB_CPUS_ENV}={os.environ[JOB_CPUS_ENV]!r}: not a whole "
                                "number of CPUs") from None
    if threads is None and "LOCAL_WORLD_SIZE" not in os.environ:
        return None
    cpus = job_cpus() if threads is None else min(threads, job_cpus())
    return max(1, cpus // node_processes())


def set_threads(threads: int | None) -> int:
    """Fix the CPU threads of this process (`rank_cpus`) and return them: on a given machine the
    same command then gives the same numbers. The thread count is part of that (it decides how
    float sums are split), hence the workflow passes its rule's."""
    n = rank_cpus(threads)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def job_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (which SLURM, taskset and container
    limits set), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(wanted: int) -> int:
    """Data-loader worker processes: the setting `num_workers`, capped at this process's share
    of the job's CPUs (the mask over the node's processes, and torch's thread count, which
    `set_threads` made that share). More workers than CPUs only contend, and PyTorch warns
    about them in every log."""
    return max(0, min(wanted, max(1, job_cpus() // node_processes()), torch.get_num_threads()))


def set_numerics(cfg: TrainConfig, device: torch.device) -> str | None:
    """On CUDA: cuDNN autotuning, and TF32 for matmuls and convolutions only where the preset
    allows it (upstream trained in true fp32: the faithful preset keeps it off). Returns the
    line to log, None on the CPU, where deterministic algorithms are asked for instead (they
    cost nothing there)."""
    if device.type != "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    return (f"numerics: TF32 {'on' if cfg.tf32 else 'off (true fp32, as upstream)'} for "
            f"matmuls and convolutions; bf16 autocast {'on' if bf16_on(cfg, device) else 'off'}")


def forward_batch(model: nn.Module, batch: dict, cfg: TrainConfig,
                  device: torch.device) -> torch.Tensor:
    """The model's (B, labels) logits for a collated batch, under bf16 autocast where the run
    uses it: the one forward pass of training and evaluation."""
    frames = batch_frames(batch, cfg.max_img_size, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_on(cfg, device)):
        return model(frames, batch["input_ids"].to(device, non_blocking=True),
                     batch["attention_mask"].to(device, non_blocking=True))
