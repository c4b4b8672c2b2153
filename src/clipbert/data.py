"""VideoQA examples for training and evaluation: LMDB -> uint8 clips -> batches -> model input.

The CPU side only decodes (once per example, only the frames sampled) and hands uint8 frames at
the stored size (224x224) to the model's device; resizing to `max_img_size`, padding and
normalising run there, batched, in `preprocess_frames`. Upstream did per-frame CPU resizes to
448 and 4x more bytes crossed to the GPU, which is where its loaders starved the GPUs.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

from clipbert.config import TrainConfig
from clipbert.errors import ClipbertError
from clipbert.qa import check_rows
from clipbert.video import read_clips
from clipbert.vislmdb import VideoLMDB

IMAGE_MEAN = (123.675, 116.28, 103.53)

log = logging.getLogger(__name__)


class VideoQADataset(torch.utils.data.Dataset):
    """Rows of (video_id, question, answer) with ClipBERT's clip sampling over a video LMDB.

    Training clip starts come from `np.random.default_rng([seed, epoch, index])`: reproducible,
    different every epoch (set `epoch` before each one) and independent of the worker count.
    An undecodable video met in training is skipped with a warning in the log (the complete
    record, whatever the number of DataLoader workers). Clips are sampled at
    each video's own frame rate; `video_fps` is the rate expected, and the first video that has
    another one is noted in the log (once per dataset and process). Without an LMDB
    (`lmdb_dir=None`, the blind baseline) examples are questions alone.
    """

    def __init__(
        self,
        rows: list[dict],
        lmdb_dir: str | os.PathLike | None,
        ans2label: dict[str, int],
        *,
        num_frm: int = 2,
        sample_fps: float = 2,
        video_fps: float | None = 20,
        n_clips: int = 1,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        check_rows(rows, "rows")
        self.rows = rows
        self.lmdb = None if lmdb_dir is None else VideoLMDB(lmdb_dir)
        self.ans2label = ans2label
        self.num_frm = num_frm
        self.sample_fps = sample_fps
        self.video_fps = video_fps
        self.n_clips = n_clips
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._rate_noted = False

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self.rows[index]
        vid = row["video_id"]
        item = {"question": row["question"], "label": int(self.ans2label.get(row["answer"], -1)),
                "index": index, "video_id": vid}
        if self.lmdb is None:
            return item
        data = self.lmdb.get(vid)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        try:
            clips = read_clips(
                data, num_frm=self.num_frm, fps=self.sample_fps, n_clips=self.n_clips,
                train=self.train, rng=rng, name=f"video {vid!r} in LMDB {self.lmdb.lmdb_dir}",
            )
        except (ClipbertError, av.FFmpegError) as e:
            if not self.train:
                if isinstance(e, ClipbertError):
                    raise
                raise ClipbertError(f"video {vid!r}: cannot decode ({e})") from None
            log.warning("skipping undecodable video %r (row %d): %s", vid, index, e)
            return None
        self._note_rate(vid, clips.timing.rate)
        return {"frames": torch.from_numpy(clips.frames), **item}

    def _note_rate(self, vid: str, rate: Fraction) -> None:
        """Log once per dataset (and process) that a video's rate is not the expected one."""
        if self.video_fps is None or self._rate_noted:
            return
        if math.isclose(float(rate), self.video_fps, rel_tol=1e-9):
            return
        self._rate_noted = True
        log.warning("video %r is %.6g fps (%d/%d), not the expected video_fps %g: sampled at "
                    "its own rate (noted once per dataset)", vid, float(rate), rate.numerator,
                    rate.denominator, self.video_fps)


class _Collate:
    """A class rather than a closure so that spawn-started workers can pickle it."""

    def __init__(self, tokenizer: Any, max_txt_len: int, pad_to_max: bool) -> None:
        self.tokenizer = tokenizer
        self.max_txt_len = max_txt_len
        self.pad_to_max = pad_to_max

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor] | None:
        items = [it for it in items if it is not None]
        if not items:
            return None
        text = self.tokenizer(
            [it["question"] for it in items],
            padding="max_length" if self.pad_to_max else "longest",
            truncation=True, max_length=self.max_txt_len, return_tensors="pt",
        )
        batch = {
            "input_ids": text["input_ids"].long(),
            "attention_mask": text["attention_mask"].long(),
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }
        if "frames" in items[0]:
            batch["frames"] = _stack_frames(items)
        return batch


def _stack_frames(items: list[dict]) -> torch.Tensor:
    shape = items[0]["frames"].shape
    for it in items[1:]:
        if it["frames"].shape != shape:
            raise ClipbertError(
                f"video {it.get('video_id')!r} gives frames {tuple(it['frames'].shape)}, "
                f"video {items[0].get('video_id')!r} {tuple(shape)}: all videos of one "
                "LMDB must share frame size, clip and frame counts"
            )
    return torch.stack([it["frames"] for it in items])


def make_collate(
    tokenizer: Any, max_txt_len: int, pad_to_max: bool
) -> Callable[[list], dict | None]:
    """Batch collation: drops skipped (None) items, stacks uint8 frames (when the examples have
    them), tokenises questions.

    Returns None for a batch whose every item was skipped; the caller skips such a batch.
    `pad_to_max=False` pads each batch only to its longest question: padding is masked, so the
    predictions are the same as with static padding to `max_txt_len`, for less transformer work.
    """
    return _Collate(tokenizer, max_txt_len, pad_to_max)


def resize_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(H, W) with the longer side `max_size`; the shorter is truncated as upstream's int() did."""
    if height >= width:
        return max_size, int(max_size * width / height)
    return int(max_size * height / width), max_size


def preprocess_frames(frames: torch.Tensor, max_img_size: int) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float (..., 3, S, S) BGR model input, S = `max_img_size`.

    Exactly ClipBERT's preprocessing, batched on the tensor's device: bilinear resize of the
    longer side to S (align_corners=False, no antialias, as upstream's tensor resize), zero
    padding of the
    raw image right/bottom to S x S, then subtraction of the RGB mean (0..255 scale, std 1) over
    the whole canvas, then RGB -> BGR. Padding comes before normalisation because upstream padded
    the uint8 image in the data loader and normalised on the GPU afterwards, so its padded pixels
    reach the network as -mean (not 0); doing it in that order keeps those inputs identical.
    """
    if frames.dtype != torch.uint8 or frames.dim() < 3 or frames.shape[-1] != 3:
        raise ClipbertError(f"expected uint8 frames (..., H, W, 3), got {frames.dtype} "
                            f"{tuple(frames.shape)}")
    lead = frames.shape[:-3]
    h, w = frames.shape[-3], frames.shape[-2]
    x = frames.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()
    nh, nw = resize_size(h, w, max_img_size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    if (nh, nw) != (max_img_size, max_img_size):
        x = F.pad(x, (0, max_img_size - nw, 0, max_img_size - nh), value=0.0)
    x = (x - _pixel_mean(x.device, x.dtype)).flip(1)
    return x.reshape(*lead, 3, max_img_size, max_img_size)


@functools.cache
def _pixel_mean(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (1, 3, 1, 1) RGB mean, made once per device: building it from a list every batch
    copies it from the host, and on a GPU that copy waits for the device."""
    return torch.tensor(IMAGE_MEAN, dtype=dtype, device=device).view(1, 3, 1, 1)


def batch_frames(batch: dict, max_img_size: int, device: torch.device) -> torch.Tensor | None:
    """A batch's uint8 frames as model input on `device`; None for a batch of questions alone
    (the blind baseline's)."""
    if "frames" not in batch:
        return None
    return preprocess_frames(batch["frames"].to(device, non_blocking=True), max_img_size)


def dataset_for(cfg: TrainConfig, rows: list[dict], lmdb_dir: str | os.PathLike | None,
                ans2label: dict[str, int], *, train: bool) -> VideoQADataset:
    """The training or evaluation dataset of a run's settings (no LMDB: questions alone)."""
    return VideoQADataset(
        rows, lmdb_dir, ans2label, num_frm=cfg.num_frm, sample_fps=cfg.sample_fps,
        video_fps=cfg.video_fps, n_clips=cfg.train_n_clips if train else cfg.inference_n_clips,
        train=train, seed=cfg.seed)

