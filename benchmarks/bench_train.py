"""Training throughput: examples/s, peak memory, the data loader's share of step time, and (on a
GPU) model FLOPs utilisation of the faithful preset as it trains (fp32, TF32 off) beside bf16,
layouts and compilation.

    python benchmarks/bench_train.py                       # tiny preset on CPU (+ the faithful
                                                           #   variants on CUDA when there is a GPU)
    python benchmarks/bench_train.py --steps 40 --threads 2
    python benchmarks/bench_train.py --skip-cpu            # GPU only
    python benchmarks/bench_train.py --skip-cpu --rehearse --variants faithful --steps 1
                                                           # the GPU part's code on the CPU

The data are the embedded demo's synthetic scans run through the real stages (frames, mp4,
LMDB, jsonl; the `improved` video encode, which needs no OpenCV), so decoding costs what it
costs in training. Each measured step runs exactly the training loop's `train_step` (forward,
loss after aggregation, backward, clipping, AdamW) on batches from training's own DataLoader
(`train.batch_loader`: its workers, prefetch and pinning); the time blocked in its iterator is
the loader's share.

FLOPs are counted by `torch.utils.flop_counter` on one real step (forward + backward, 2 FLOPs
per multiply-add), with a forward breakdown per clip. The count is ~2.2 TFLOP per faithful
example, not the ~1.4 often estimated: that estimate takes ResNet-50's 16 G multiply-adds at
448 px for FLOPs and leaves out the grid encoder's 3x3 convolution (5.5 GFLOP per frame). MFU
divides counted FLOPs per second by the GPU's dense peak for the variant's arithmetic: fp32
(`--peak-fp32-tflops`, H100/H200 SXM: 67) for `faithful`, bf16 (`--peak-tflops`: 989) for the
others.

On a GPU the faithful preset runs once per variant (`--variants`), batch 16 and 8 clips:
`faithful` exactly as it trains (fp32, TF32 off, channels-last), then bf16 autocast (with TF32,
as `improved`) in NCHW, channels-last and channels-last compiled; each line gives its speed
relative to the first. Text stays padded to 100 tokens in all, so the FLOPs are the same.
`--rehearse` runs that part on the CPU in fp32 at batch 1 and 2 clips, so a session without a
GPU can check the code path and the FLOP count before one is lent.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipbert import data, demo, frames, runtime, sqa, train, video, vislmdb  # noqa: E402
from clipbert.config import TrainConfig, make_config  # noqa: E402
from clipbert.model import ClipBert  # noqa: E402

# Faithful variants on a GPU: name -> training settings (channels-last is the default).
VARIANTS = {
    "faithful": {},
    "bf16_nchw": {"bf16": True, "tf32": True, "channels_last": False},
    "bf16": {"bf16": True, "tf32": True},
    "bf16_compiled": {"bf16": True, "tf32": True, "compile": True},
}
SQA3D_TRAIN_QUESTIONS = 26_600  # the SQA3D train split


def make_data(root: Path, scenes: int, n_frames: int, size: int) -> dict[str, Path]:
    demo.make_demo(root / "demo", scenes=scenes, frames=n_frames)
    mp4s = []
    for s in demo.scene_ids(scenes):
        frames.export_frames(root / f"demo/scans/{s}/{s}.sens", root / f"frames/{s}", stride=1)
        video.encode_video(root / f"frames/{s}", root / f"videos/{s}.mp4", size=(size, size),
                           preset="improved")  # no OpenCV: what a bare GPU machine has
        mp4s.append(root / f"videos/{s}.mp4")
    vislmdb.pack_lmdb(root / "vis_db", mp4s)
    sqa.convert(root / "demo/sqa_task", root / "sqa")
    return {"data_dir": root / "sqa", "lmdb": root / "vis_db", "vocab": root / "demo/vocab.txt"}


def reset_peak_rss() -> None:
    """Linux: restart the peak-RSS count (VmHWM), so data preparation does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mib(key: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory; importing torch, transformers and PyAV
    alone holds ~0.9 GiB, hence both the start and the peak are reported."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_flops_per_clip(model: ClipBert, batch: dict, cfg: TrainConfig,
                           device: torch.device) -> dict[str, float]:
    """GFLOP of one clip's forward pass by part, counted on the first example of `batch`."""
    frames = data.preprocess_frames(batch["frames"][:1, :1].to(device), cfg.max_img_size)
    counter = FlopCounterMode(display=False, depth=3)
    with torch.no_grad(), counter:
        model(frames, batch["input_ids"][:1].to(device), batch["attention_mask"][:1].to(device))
    counts = {k.removeprefix("ClipBert."): sum(v.values())
              for k, v in counter.get_flop_counts().items()}
    parts = {"backbone": "cnn.backbone", "grid_encoder": "cnn.grid_encoder",
             "transformer": "transformer", "total": "Global"}
    return {name: round(counts.get(key, 0) / 1e9, 2) for name, key in parts.items()}


def bench(cfg: TrainConfig, ds: dict[str, Path], steps: int, warmup: int) -> dict:
    """Time `steps` training steps after `warmup` ones; the model starts from random weights.
    The run is built exactly as training builds it (`train.build_run`)."""
    reset_peak_rss()
    rss_start = rss_mib("VmRSS")
    run = train.build_run(cfg, ds["data_dir"], ds["lmdb"], ds["vocab"])
    cfg, device = run.cfg, run.device
    need = warmup + steps + 2
    batches = [b for e in range(1000)
               for b in train.epoch_batches(len(run.train_rows), e, cfg, run.d)
               if len(b) == cfg.batch_size][:need]
    if len(batches) < need:
        raise SystemExit(f"too few training questions ({len(run.train_rows)}) for batch "
                         f"{cfg.batch_size}")
    loader = train.batch_loader(run, batches, cfg.seed)
    use_bf16 = runtime.bf16_on(cfg, device)
    cuda = device.type == "cuda"
    model = run.model

    def step(batch: dict) -> None:
        train.train_step(run, batch, int((batch["labels"] >= 0).sum()))
        if cuda:
            torch.cuda.synchronize(device)

    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter()
    step(first)  # the first step pays for cuDNN autotuning and compilation
    first_step_s = time.perf_counter() - t_first
    # A dispatch-mode counter cannot see inside compiled kernels: compiled variants take the
    # count of an eager one (the same arithmetic).
    flops_per_example = forward = None
    if not cfg.compile:
        counter = FlopCounterMode(display=False)
        with counter:
            step(next(it))
        flops_per_example = counter.get_total_flops() / cfg.batch_size
        forward = forward_flops_per_clip(model, first, cfg, device)
    for _ in range(warmup):
        step(next(it))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    wait = work = 0.0
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        step(batch)
        wait, work = wait + t1 - t0, work + time.perf_counter() - t1
    wall = time.perf_counter() - t_start
    eps = steps * cfg.batch_size / wall
    out = {
        "preset": cfg.preset, "device": str(device), "bf16": use_bf16,
        "tf32": cfg.tf32 and cuda, "channels_last": cfg.channels_last and cuda,
        "compile": cfg.compile, "batch_size": cfg.batch_size,
        "clips_x_frames": [cfg.train_n_clips, cfg.num_frm], "max_img_size": cfg.max_img_size,
        "num_workers": loader.num_workers, "prefetch_factor": loader.prefetch_factor,
        "torch_threads": torch.get_num_threads(), "steps": steps,
        "examples_per_s": round(eps, 2),
        "step_s": round(wall / steps, 4),
        "first_step_s": round(first_step_s, 2),
        "loader_share": round(wait / wall, 3),
        "counted_gflop_per_example": flops_per_example and round(flops_per_example / 1e9, 2),
        "forward_gflop_per_clip": forward,
        "rss_at_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }
    if cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def faithful_runs(a: argparse.Namespace, ds: dict[str, Path], device: torch.device) -> list[dict]:
    """The faithful preset once per variant, each with its speed relative to the first."""
    cuda = device.type == "cuda"
    over: dict = {"batch_size": a.batch_size or (16 if cuda else 1)}
    if not cuda:
        over["train_n_clips"] = a.clips or 2
    elif a.clips:
        over["train_n_clips"] = a.clips
    if a.workers is not None:
        over["num_workers"] = a.workers
    runs: list[dict] = []
    for name in a.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r} (one of {', '.join(VARIANTS)})")
        cfg = make_config("faithful", {**over, **VARIANTS[name]})
        try:
            r = {"variant": name, **bench(cfg, ds, a.steps, a.warmup)}
        except torch.cuda.OutOfMemoryError:
            # One variant out of memory should not cost the others' numbers (one GPU session).
            print(json.dumps({"variant": name, "batch_size": cfg.batch_size,
                              "error": "CUDA out of memory: try a smaller --batch-size"}),
                  flush=True)
            torch.cuda.empty_cache()
            continue
        if r["counted_gflop_per_example"] is None and runs:
            r["counted_gflop_per_example"] = runs[0]["counted_gflop_per_example"]
            r["forward_gflop_per_clip"] = runs[0]["forward_gflop_per_clip"]
        if r["counted_gflop_per_example"] is not None:
            counted = r["counted_gflop_per_example"] * 1e9 * r["examples_per_s"]
            r["counted_tflop_s"] = round(counted / 1e12, 2)
            if cuda:
                peak = a.peak_tflops if r["bf16"] else a.peak_fp32_tflops
                r["mfu"] = round(counted / (peak * 1e12), 3)
                r["mfu_of_peak_tflops"] = peak
        if runs:
            r["speed_vs_" + runs[0]["variant"]] = round(
                r["examples_per_s"] / runs[0]["examples_per_s"], 2)
        r["sqa3d_10_epochs_min"] = round(SQA3D_TRAIN_QUESTIONS * 10 / r["examples_per_s"] / 60, 1)
        runs.append(r)
        print(json.dumps(r), flush=True)
        if cuda:
            torch.cuda.empty_cache()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    ap.add_argument("--scenes", type=int, default=8, help="synthetic scenes (half train)")
    ap.add_argument("--frames", type=int, default=60, help="frames per synthetic scan (20 fps)")
    ap.add_argument("--skip-cpu", action="store_true", help="no tiny-preset CPU run")
    ap.add_argument("--rehearse", action="store_true",
                    help="run the faithful part on the CPU (fp32, batch 1, 2 clips)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"faithful variants to compare (of {', '.join(VARIANTS)})")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="faithful batch (default: 16 on a GPU, 1 when rehearsing)")
    ap.add_argument("--clips", type=int, default=None,
                    help="faithful training clips (default: 8 on a GPU, 2 when rehearsing)")
    ap.add_argument("--workers", type=int, default=None,
                    help="faithful num_workers (default: training's, capped as training caps it)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--peak-fp32-tflops", type=float, default=67.0,
                    help="the GPU's dense fp32 peak, TF32 off (H100/H200 SXM: 67)")
    a = ap.parse_args()
    default_threads = torch.get_num_threads()  # what training has without a rule's threads
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_cpu:
            torch.set_num_threads(a.threads)
            ds = make_data(Path(tmp) / "cpu", a.scenes, a.frames, 128)
            cfg = make_config("tiny", {"batch_size": 8})
            r = bench(cfg, ds, a.steps, a.warmup)
            r["examples_per_s_per_core"] = round(r["examples_per_s"] / a.threads, 2)
            results.append(r)
            print(json.dumps(r), flush=True)
            torch.set_num_threads(default_threads)
        if torch.cuda.is_available() or a.rehearse:
            ds = make_data(Path(tmp) / "faithful", a.scenes, a.frames, 224)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            results += faithful_runs(a, ds, device)
    if not results:
        raise SystemExit("nothing to measure (--skip-cpu without a GPU or --rehearse)")


if __name__ == "__main__":
    main()
