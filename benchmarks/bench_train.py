"""Training throughput: examples/s, peak memory, the data loader's share of step time, and (on a
GPU) model FLOPs utilisation of the faithful preset in bf16.

    python benchmarks/bench_train.py                       # tiny preset on CPU (+ faithful bf16
                                                           #   on CUDA when there is a GPU)
    python benchmarks/bench_train.py --steps 40 --threads 2
    python benchmarks/bench_train.py --skip-cpu --workers 8 --batch-size 16   # GPU only

The data are the embedded demo's synthetic scans run through the real stages (frames, mp4,
LMDB, jsonl), so decoding costs what it costs in training. Each measured step runs exactly the
training loop's `_train_step` (forward, loss after aggregation, backward, clipping, AdamW); the
time blocked in the DataLoader iterator is the loader's share. FLOPs per example are counted by
`torch.utils.flop_counter` on one real step (forward + backward), and also given from the spec's
estimate (model.md §6: ~1.4 TFLOP per faithful example with backward); MFU divides the counted
FLOPs per second by the bf16 dense peak of the GPU (`--peak-tflops`, default: H100/H200 989).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipbert import data, demo, frames, sqa, train, video, vislmdb  # noqa: E402
from clipbert.model import ClipBert  # noqa: E402
from clipbert.tokenizer import load_tokenizer  # noqa: E402

SPEC_TFLOP_PER_EXAMPLE = 1.4  # model.md §6, faithful: 8 clips x 2 frames at 448, with backward


def make_data(root: Path, scenes: int, n_frames: int, size: int) -> dict[str, Path]:
    demo.make_demo(root / "demo", scenes=scenes, frames=n_frames)
    mp4s = []
    for s in demo.scene_ids(scenes):
        frames.export_frames(root / f"demo/scans/{s}/{s}.sens", root / f"frames/{s}", stride=1)
        video.encode_video(root / f"frames/{s}", root / f"videos/{s}.mp4", size=(size, size))
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


def bench(cfg: train.TrainConfig, ds: dict[str, Path], device: torch.device, steps: int,
          warmup: int) -> dict:
    """Time `steps` training steps after `warmup` ones; the model starts from random weights."""
    reset_peak_rss()
    rss_start = rss_mib("VmRSS")
    tokenizer = load_tokenizer(ds["vocab"])
    ans2label = json.loads((ds["data_dir"] / "train_ans2label.json").read_text())
    rows = [json.loads(x) for x in (ds["data_dir"] / "train.jsonl").open()]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=len(tokenizer.get_vocab()),
        num_labels=max(len(ans2label), cfg.model.num_labels)))
    train.seed_everything(cfg.seed)
    model = ClipBert(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(train.param_groups(model, cfg), betas=cfg.betas,
                                  eps=cfg.adam_eps)
    dataset = data.VideoQADataset(
        rows, ds["lmdb"], ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.train_n_clips, train=True, seed=cfg.seed)
    collate = data.make_collate(tokenizer, cfg.max_txt_len, cfg.pad_to_max)
    one = train.Dist()
    batches = [b for e in range(1000) for b in train.epoch_batches(len(rows), e, cfg, one)
               if len(b) == cfg.batch_size][: warmup + steps + 1]
    if len(batches) < warmup + steps + 1:
        raise SystemExit(f"too few training questions ({len(rows)}) for batch {cfg.batch_size}")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if cfg.num_workers else None)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    cuda = device.type == "cuda"

    def step(batch: dict) -> None:
        train._train_step(model, batch, cfg, one, device, int((batch["labels"] >= 0).sum()),
                          tokenizer, use_bf16, optimizer)
        if cuda:
            torch.cuda.synchronize(device)

    it = iter(loader)
    first = next(it)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(first)
    flops_per_example = counter.get_total_flops() / cfg.batch_size
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
        "batch_size": cfg.batch_size, "clips_x_frames": [cfg.train_n_clips, cfg.num_frm],
        "max_img_size": cfg.max_img_size, "num_workers": cfg.num_workers,
        "torch_threads": torch.get_num_threads(), "steps": steps,
        "examples_per_s": round(eps, 2),
        "step_s": round(wall / steps, 4),
        "loader_share": round(wait / wall, 3),
        "counted_gflop_per_example": round(flops_per_example / 1e9, 2),
        "rss_at_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }
    if cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU run)")
    ap.add_argument("--scenes", type=int, default=8, help="synthetic scenes (half train)")
    ap.add_argument("--frames", type=int, default=60, help="frames per synthetic scan (20 fps)")
    ap.add_argument("--skip-cpu", action="store_true", help="no tiny-preset CPU run")
    ap.add_argument("--batch-size", type=int, default=None, help="GPU run (default: preset's)")
    ap.add_argument("--workers", type=int, default=None, help="GPU run loader workers")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak (H100/H200 SXM: 989)")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_cpu:
            torch.set_num_threads(a.threads)
            ds = make_data(Path(tmp) / "cpu", a.scenes, a.frames, 128)
            cfg = train.make_config("tiny", {"batch_size": 8})
            r = bench(cfg, ds, torch.device("cpu"), a.steps, a.warmup)
            r["examples_per_s_per_core"] = round(r["examples_per_s"] / a.threads, 2)
            results.append(r)
            print(json.dumps(r), flush=True)
        if torch.cuda.is_available():
            ds = make_data(Path(tmp) / "gpu", a.scenes, a.frames, 224)
            over: dict = {"bf16": True}
            if a.batch_size:
                over["batch_size"] = a.batch_size
            if a.workers is not None:
                over["num_workers"] = a.workers
            cfg = train.make_config("faithful", over)
            r = bench(cfg, ds, torch.device("cuda"), a.steps, a.warmup)
            counted = r["counted_gflop_per_example"] * 1e9 * r["examples_per_s"]
            r["counted_tflop_s"] = round(counted / 1e12, 1)
            r["mfu_counted"] = round(counted / (a.peak_tflops * 1e12), 3)
            r["mfu_spec_estimate"] = round(
                SPEC_TFLOP_PER_EXAMPLE * 1e12 * r["examples_per_s"] / (a.peak_tflops * 1e12), 3)
            epoch = 26_600 * 10 / r["examples_per_s"] / 60
            r["sqa3d_10_epochs_min"] = round(epoch, 1)
            results.append(r)
            print(json.dumps(r), flush=True)
    if not results:
        raise SystemExit("nothing to measure (--skip-cpu without a GPU)")


if __name__ == "__main__":
    main()
