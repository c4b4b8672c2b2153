"""VideoQA dataset, collate and batched frame preprocessing (clipbert.data)."""

from __future__ import annotations

import logging
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from test_video import decode_all, make_scene
from test_vislmdb import opened
from transformers import BertTokenizer

from clipbert import data, video, vislmdb
from clipbert.errors import ClipbertError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "on", "the", "table",
         "i", "am", "sitting", "facing", "door", "?", "."]
ANS = {"table": 0, "door": 1, "two": 2}
FRAMES = {"scene0000_00": 30, "scene0001_00": 24, "scene0002_00": 5}


@pytest.fixture(scope="module")
def lmdb_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    mp4s = []
    for i, (sid, n) in enumerate(FRAMES.items()):
        scene = make_scene(root / "frames" / sid, n=n, w=64 + 8 * i, h=48, extras=False)
        mp4s.append(root / "videos" / f"{sid}.mp4")
        video.encode_video(scene, mp4s[-1], size=(32, 32))
    vislmdb.pack_lmdb(root / "vis_db", mp4s)
    return root / "vis_db"


@pytest.fixture(scope="module")
def decoded(lmdb_dir: Path, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("export")
    vislmdb.export_lmdb(lmdb_dir, out / "v")
    return {sid: decode_all(out / "v" / f"{sid}.mp4") for sid in FRAMES}


def rows() -> list[dict]:
    qs = ["i am sitting facing the door . what is on the table ?", "what is on the door ?",
          "what is the door ?", "is the table on ?", "what is ?", "i am sitting ."]
    answers = ["table", "door", "unknown", "two", "table", "door"]
    sids = list(FRAMES) * 2
    triples = zip(answers, qs, sids, strict=True)
    return [{"answer": a, "question": q, "video_id": s, "answer_type": "what",
             "question_id": 100 + i} for i, (a, q, s) in enumerate(triples)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizer:
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(vocab=str(path))


def test_evaluation_items(lmdb_dir: Path, decoded: dict) -> None:
    ds = data.VideoQADataset(rows(), lmdb_dir, ANS, num_frm=2, sample_fps=2, video_fps=20,
                             n_clips=2)
    assert len(ds) == 6
    item = ds[0]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (2, 2, 32, 32, 3)
    # 30 frames, clip 20: starts 0 and 5 -> frames [0, 19], [5, 24]
    want = decoded["scene0000_00"][[0, 19, 5, 24]].reshape(2, 2, 32, 32, 3)
    assert np.array_equal(item["frames"].numpy(), want)
    assert (item["question"], item["label"], item["index"]) == (rows()[0]["question"], 0, 0)
    assert ds[2]["label"] == -1  # "unknown" is outside the vocabulary
    short = ds[5]["frames"].numpy()  # 5-frame video, shorter than one clip: [0, 4] twice
    assert np.array_equal(short, decoded["scene0002_00"][[0, 4, 0, 4]].reshape(2, 2, 32, 32, 3))


def test_training_sampling_is_seeded_per_epoch_and_index(lmdb_dir: Path, decoded: dict) -> None:
    ds = data.VideoQADataset(rows(), lmdb_dir, ANS, n_clips=8, train=True, seed=3)
    ds.epoch = 4
    item = ds[1]
    probe = video.probe_video(vislmdb.VideoLMDB(lmdb_dir).get("scene0001_00"))
    assert (probe["time_base"], probe["duration"], probe["n_frames"]) == ("1/10240", 24 * 512, 24)
    clips = video.clip_frame_indices([k * 512 for k in range(24)], 24 * 512, 20.0, 2, 2, 8, True,
                                     np.random.default_rng([3, 4, 1]))
    want = decoded["scene0001_00"][np.array(clips).reshape(-1)].reshape(8, 2, 32, 32, 3)
    assert np.array_equal(item["frames"].numpy(), want)
    assert np.array_equal(ds[1]["frames"], item["frames"])


def _batches(ds, collate, workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=False, num_workers=workers, collate_fn=collate,
        multiprocessing_context="fork" if workers else None,
    )
    return list(loader)


def test_dataloader_workers_after_fork(lmdb_dir: Path, tokenizer) -> None:
    ds = data.VideoQADataset(rows(), lmdb_dir, ANS, n_clips=8, train=True, seed=0)
    collate = data.make_collate(tokenizer, max_txt_len=8, pad_to_max=False)
    ds[0]  # the parent opens the LMDB before the workers fork (upstream's hazard)
    assert opened(ds.lmdb)
    serial = _batches(ds, collate, 0)
    forked = _batches(ds, collate, 2)
    assert [b["frames"].shape for b in forked] == [(4, 8, 2, 32, 32, 3), (2, 8, 2, 32, 32, 3)]
    for a, b in zip(serial, forked, strict=True):
        for key in ("frames", "input_ids", "attention_mask", "labels", "index"):
            assert torch.equal(a[key], b[key]), key
    assert forked[0]["labels"].tolist() == [0, 1, -1, 2]
    assert forked[1]["index"].tolist() == [4, 5]
    ds.epoch = 1
    other = _batches(ds, collate, 2)
    assert not torch.equal(other[0]["frames"], serial[0]["frames"])


def test_collate_text_padding(lmdb_dir: Path, tokenizer) -> None:
    ds = data.VideoQADataset(rows(), lmdb_dir, ANS)
    items = [ds[1], ds[4]]  # "what is on the door ?" (6 tokens + 2), "what is ?" (3 + 2)
    b = data.make_collate(tokenizer, max_txt_len=12, pad_to_max=False)(items)
    assert b["input_ids"].shape == (2, 8) and b["input_ids"].dtype == torch.long
    assert b["input_ids"][1].tolist() == [2, 5, 6, 15, 3, 0, 0, 0]
    assert b["attention_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    assert b["frames"].shape == (2, 1, 2, 32, 32, 3) and b["frames"].dtype == torch.uint8
    b = data.make_collate(tokenizer, max_txt_len=12, pad_to_max=True)(items)
    assert b["input_ids"].shape == (2, 12) and b["attention_mask"].sum().item() == 13
    b = data.make_collate(tokenizer, max_txt_len=4, pad_to_max=False)(items)
    assert b["input_ids"][0].tolist() == [2, 5, 6, 3]  # truncated, [SEP] kept
    assert data.make_collate(tokenizer, 12, False)([None, None]) is None


def test_collate_rejects_mixed_frame_sizes(lmdb_dir: Path, tokenizer) -> None:
    ds = data.VideoQADataset(rows(), lmdb_dir, ANS)
    a, b = ds[0], ds[1]
    b["frames"] = b["frames"][..., :16, :]
    with pytest.raises(ClipbertError, match="scene0001_00"):
        data.make_collate(tokenizer, 12, False)([a, b])


@pytest.fixture
def bad_lmdb(tmp_path: Path, lmdb_dir: Path) -> Path:
    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 24)
    src = vislmdb.VideoLMDB(lmdb_dir)
    with env.begin(write=True) as txn:
        good = src.get("scene0000_00")
        txn.put(b"scene0000_00", good)
        txn.put(b"scene0001_00", good[: len(good) // 3])  # truncated mp4
        txn.put(b"scene0002_00", b"not a video at all")
    env.close()
    return db


def test_undecodable_video_is_an_error_at_evaluation(bad_lmdb: Path) -> None:
    ds = data.VideoQADataset(rows(), bad_lmdb, ANS)
    assert ds[0]["frames"].shape == (1, 2, 32, 32, 3)
    for i, sid in ((1, "scene0001_00"), (2, "scene0002_00")):
        with pytest.raises(ClipbertError, match=sid):
            ds[i]


def test_undecodable_video_is_skipped_in_training(bad_lmdb: Path, tokenizer, caplog) -> None:
    ds = data.VideoQADataset(rows(), bad_lmdb, ANS, train=True)
    collate = data.make_collate(tokenizer, 12, False)
    with caplog.at_level(logging.WARNING, logger="clipbert.data"):
        batches = _batches(ds, collate, 0)
    assert batches[0]["index"].tolist() == [0, 3]
    assert batches[1] is None  # rows 4 and 5 both skipped: the trainer skips such a batch
    assert caplog.text.count("skipping undecodable video") == 4
    assert "scene0002_00" in caplog.text and "scene0001_00" in caplog.text


@pytest.fixture(scope="module")
def mixed_rates(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """An LMDB of a 20 fps and a 30 fps video (60 frames each) and their decoded frames."""
    root = tmp_path_factory.mktemp("rates")
    mp4s = []
    for sid, fps in (("scene0010_00", 20), ("scene0011_00", 30)):
        scene = make_scene(root / "frames" / sid, n=60, w=32, h=32, extras=False)
        mp4s.append(root / "videos" / f"{sid}.mp4")
        video.encode_video(scene, mp4s[-1], size=(32, 32), fps=fps)
    vislmdb.pack_lmdb(root / "vis_db", mp4s)
    return root / "vis_db", {p.stem: decode_all(p) for p in mp4s}


def test_each_video_is_sampled_at_its_own_rate_and_noted_once(mixed_rates, caplog) -> None:
    db, decoded = mixed_rates
    sids = ["scene0010_00", "scene0011_00", "scene0011_00", "scene0010_00", "scene0011_00"]
    mixed = [dict(rows()[0], video_id=sid) for sid in sids]
    for train in (False, True):
        caplog.clear()
        ds = data.VideoQADataset(mixed, db, ANS, video_fps=20, train=train)
        with caplog.at_level(logging.WARNING, logger="clipbert.data"):
            items = [ds[i] for i in range(len(ds))] + [ds[1]]
        notes = [r.getMessage() for r in caplog.records]
        assert len(notes) == 1, notes
        assert "'scene0011_00'" in notes[0] and "30 fps" in notes[0] and "video_fps 20" in notes[0]
        if not train:  # 30 frames a clip at 30 fps, 20 at 20 fps
            assert np.array_equal(items[1]["frames"][0].numpy(), decoded["scene0011_00"][[0, 29]])
            assert np.array_equal(items[0]["frames"][0].numpy(), decoded["scene0010_00"][[0, 19]])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipbert.data"):
        ds = data.VideoQADataset(mixed, db, ANS, video_fps=30)
        ds[0], ds[1], ds[3]
        assert "'scene0010_00' is 20 fps" in caplog.text and "video_fps 30" in caplog.text
        caplog.clear()
        again = data.VideoQADataset(mixed[:2], db, ANS, video_fps=None)
        again[0], again[1]
        only20 = data.VideoQADataset(mixed[:1], db, ANS, video_fps=20.0)
        only20[0]
    assert caplog.records == []


def test_missing_video_is_always_an_error(lmdb_dir: Path) -> None:
    bad = [dict(rows()[0], video_id="scene0099_00")]
    for train in (False, True):
        with pytest.raises(ClipbertError, match="scene0099_00"):
            data.VideoQADataset(bad, lmdb_dir, ANS, train=train)[0]


def test_preprocess_frames_hand_computed() -> None:
    frames = torch.zeros(2, 3, 2, 4, 3, dtype=torch.uint8)  # (B, T, H=2, W=4, RGB)
    frames[..., 0], frames[..., 1], frames[..., 2] = 10, 20, 30
    out = data.preprocess_frames(frames, 8)
    assert out.shape == (2, 3, 3, 8, 8) and out.dtype == torch.float32
    # 2x4 -> 4x8 (a constant stays constant under bilinear), rows 4..7 are zero padding
    bgr = torch.tensor([30 - 103.53, 20 - 116.28, 10 - 123.675])
    pad = -torch.tensor([103.53, 116.28, 123.675])
    assert torch.allclose(out[..., :4, :], bgr.view(3, 1, 1).expand(3, 4, 8))
    assert torch.allclose(out[..., 4:, :], pad.view(3, 1, 1).expand(3, 4, 8))


def test_preprocess_frames_resize_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 1, 6, 3, 3), dtype=torch.uint8, generator=g)
    out = data.preprocess_frames(frames, 12)  # tall: 6x3 -> 12x6, pad right
    assert out.shape == (2, 1, 3, 12, 12)
    x = frames[1, 0].permute(2, 0, 1).float()[None]
    ref = torch.nn.functional.interpolate(x, size=(12, 6), mode="bilinear", align_corners=False)
    ref = ref[0] - torch.tensor(data.IMAGE_MEAN).view(3, 1, 1)
    assert torch.allclose(out[1, 0, :, :, :6], ref.flip(0), atol=1e-4)
    assert torch.allclose(out[1, 0, 0, :, 6:], torch.full((12, 6), -103.53))
    same = data.preprocess_frames(frames[:, :, :3], 3)  # already 3x3 at size 3: no resize
    want = frames[:, :, :3].permute(0, 1, 4, 2, 3).float()
    want = (want - torch.tensor(data.IMAGE_MEAN).view(3, 1, 1)).flip(2)
    assert torch.equal(same, want)
    with pytest.raises(ClipbertError):
        data.preprocess_frames(frames.float(), 12)


def test_questions_alone_without_an_lmdb(tokenizer) -> None:
    """The blind baseline's examples: no LMDB opened, no frames in items or batches."""
    ds = data.VideoQADataset(rows(), None, ANS, n_clips=8, train=True)
    item = ds[1]
    assert "frames" not in item and item["label"] == 1 and item["index"] == 1
    b = data.make_collate(tokenizer, max_txt_len=12, pad_to_max=False)([ds[0], ds[1]])
    assert set(b) == {"input_ids", "attention_mask", "labels", "index"}
    assert b["labels"].tolist() == [0, 1]
