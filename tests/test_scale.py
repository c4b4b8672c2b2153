"""The workflow at full ScanNet scale (707 scenes), planned but not run: the DAG must stay quick
to build, the LMDB step must split into batches, and the SLURM profile must group the scenes.

Placeholder `.sens` files stand in for the scans (a dry run never reads them). The scene lists and
the val/test question files are SQA3D's real ones from ../shared when present; without them the
lists are synthesized with the same shape.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_SQA, cli_env

N_SCENES = 707
DAG_SECONDS = 15
PER_SCENE_RULES = ("sens_index", "frames", "encode_video")
SCENES_PER_GROUP = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())[
    "group-components"
]["scene"]


def _scene_lists(root: Path) -> tuple[Path, Path, list[str]]:
    """scannetv2.txt and scannetv2_test.txt, and the scenes the baseline selects from them."""
    if (SHARED_SQA / "scannetv2.txt").is_file():
        all_list, test_list = SHARED_SQA / "scannetv2.txt", SHARED_SQA / "scannetv2_test.txt"
    else:
        all_list, test_list = root / "scannetv2.txt", root / "scannetv2_test.txt"
        train = [f"scene{i:04d}_{r:02d}" for i in range(N_SCENES) for r in range(2)]
        test = [f"scene{i:04d}_00" for i in range(N_SCENES, N_SCENES + 100)]
        all_list.write_text("\n".join(train + test) + "\n")
        test_list.write_text("\n".join(test) + "\n")
    excluded = set(test_list.read_text().split())
    scenes = sorted(
        s for s in all_list.read_text().split() if s.endswith("_00") and s not in excluded
    )
    return all_list, test_list, scenes


def _questions(path: Path, scenes: list[str]) -> None:
    items = [{"scene_id": s, "question_id": n, "question": "?", "situation": ""}
             for n, s in enumerate(scenes)]
    path.write_text(json.dumps({"questions": items}))


def _question_scenes(path: Path) -> set[str]:
    return {q["scene_id"] for q in json.loads(path.read_text())["questions"]}


def _real_data_config(root: Path) -> Path:
    """A scannet config over 707 placeholder scans; every scene has questions, so restricting to
    the questions' scenes (the default) keeps all 707 and reads the question files as it would."""
    all_list, test_list, scenes = _scene_lists(root)
    assert len(scenes) == N_SCENES
    scans = root / "scans"
    for scene in scenes:
        (scans / scene).mkdir(parents=True)
        (scans / scene / f"{scene}.sens").touch()
    sqa = root / "sqa_task"
    balanced = sqa / "balanced"
    balanced.mkdir(parents=True)
    shared_balanced = SHARED_SQA / "first_commit_993bd04" / "balanced"
    covered: set[str] = set()
    for split in ("val", "test"):
        for kind in ("questions", "sqa_annotations"):
            name = f"v1_balanced_{kind}_{split}_scannetv2.json"
            if (shared_balanced / name).is_file():
                (balanced / name).symlink_to(shared_balanced / name)
            else:
                _questions(balanced / name, scenes[: 60] if split == "val" else scenes[60:120])
        covered |= _question_scenes(balanced / f"v1_balanced_questions_{split}_scannetv2.json")
    train_scenes = [s for s in scenes if s not in covered]
    for kind in ("questions", "sqa_annotations"):
        _questions(balanced / f"v1_balanced_{kind}_train_scannetv2.json", train_scenes)
    (sqa / "answer_dict.json").write_text(json.dumps([{"yes": 0}, {"0": "yes"}]))
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    config = {
        "data": {
            "source": "scannet",
            "scans_dir": str(scans),
            "sqa_dir": str(sqa),
            "scene_lists": {"all": str(all_list), "test": str(test_list)},
        },
        "weights": {"vocab": str(root / "vocab.txt")},
    }
    path = root / "scannet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def scale(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scale")
    return root, _real_data_config(root)


def _dry_run(root: Path, config: Path, *args: str) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(root),
           "-n", "--configfile", str(config), *args]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr, elapsed


def _job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run: rule -> number of jobs."""
    table = text[text.index("Job stats:"):]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def test_full_dag_builds_quickly(scale):
    root, config = scale
    text, elapsed = _dry_run(root, config, "--quiet", "rules", "--", "results/test_acc.json")
    counts = _job_stats(text)
    assert counts == {
        **{rule: N_SCENES for rule in PER_SCENE_RULES},
        "sqa_convert": 1, "pack_lmdb": 1, "train": 1, "infer": 1,
        "total": 3 * N_SCENES + 4,
    }
    assert elapsed < DAG_SECONDS, f"dry run took {elapsed:.1f} s"


def test_lmdb_step_runs_in_batches(scale):
    """--batch splits pack_lmdb's 707 inputs: the first third plans only their scenes' jobs."""
    root, config = scale
    text, _ = _dry_run(root, config, "--quiet", "rules", "--batch", "pack_lmdb=1/3")
    counts = _job_stats(text)
    per_batch = math.ceil(N_SCENES / 3)
    assert {rule: counts.get(rule) for rule in PER_SCENE_RULES} == dict.fromkeys(
        PER_SCENE_RULES, per_batch
    )
    assert "pack_lmdb" not in counts and "train" not in counts
    assert "Considering only batch 1/3 (rule pack_lmdb)" in text


def test_slurm_profile_groups_scenes(scale):
    """Through profiles/slurm the 2121 per-scene jobs become a few dozen SLURM group jobs."""
    root, config = scale
    text, elapsed = _dry_run(
        root, config, "--workflow-profile", str(REPO / "profiles" / "slurm"),
        "--", "results/test_acc.json",
    )
    assert text.count("Group job scene") == math.ceil(N_SCENES / SCENES_PER_GROUP)
    assert elapsed < 2 * DAG_SECONDS, f"dry run with the SLURM profile took {elapsed:.1f} s"
