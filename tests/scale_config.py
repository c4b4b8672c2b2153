"""A real-data config over 707 placeholder ScanNet scans, for planning the workflow at full
scale without the data (tests/test_scale.py, benchmarks/bench_dag.py).

Placeholder `.sens` files stand in for the scans (a dry run never reads them); tiny_scans makes
them valid two-frame scans, for real runs of the data half (benchmarks/, tests/test_scale.py).
The scene lists and the val/test question files are SQA3D's real ones from ../shared when
present; without them (or for another number of scenes) they are synthesized with that shape.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

N_SCENES = 707
SHARED_SQA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sqa3d"


def _scene_lists(root: Path, n_scenes: int) -> tuple[Path, Path, list[str]]:
    """scannetv2.txt and scannetv2_test.txt, and the scenes the baseline selects from them."""
    if n_scenes == N_SCENES and (SHARED_SQA / "scannetv2.txt").is_file():
        all_list, test_list = SHARED_SQA / "scannetv2.txt", SHARED_SQA / "scannetv2_test.txt"
    else:
        all_list, test_list = root / "scannetv2.txt", root / "scannetv2_test.txt"
        train = [f"scene{i:04d}_{r:02d}" for i in range(n_scenes) for r in range(2)]
        test = [f"scene{i:04d}_00" for i in range(n_scenes, n_scenes + 100)]
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


def real_data_config(root: Path, n_scenes: int = N_SCENES) -> Path:
    """A scannet config over 707 placeholder scans; every scene has questions, so restricting to
    the questions' scenes (the default) keeps all 707 and reads the question files as it would.
    Another `n_scenes` (benchmarks/bench_scheduler.py) gives synthetic lists and questions."""
    all_list, test_list, scenes = _scene_lists(root, n_scenes)
    assert len(scenes) == n_scenes
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
            if n_scenes == N_SCENES and (shared_balanced / name).is_file():
                (balanced / name).symlink_to(shared_balanced / name)
            else:
                k = max(1, min(60, n_scenes // 10))
                _questions(balanced / name, scenes[:k] if split == "val" else scenes[k:2 * k])
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


# Snakemake's main process reports, when it exits, its own CPU seconds (its threads, not the
# jobs' processes: the serial part of the workflow's overhead), how many job-selection rounds its
# scheduler ran, how many re-evaluation timers it armed (snakemake/scheduling/job_scheduler.py)
# and how long it waited after its scheduler had finished (for timers that were still pending).
# REHEARSE_MAIN_CPU names the JSON file it writes.
SNAKEMAKE_MAIN = """
import atexit, json, os, resource, runpy, sys, time
from snakemake.scheduling import job_scheduler as js
counts = {"rounds": 0, "timers": 0, "scheduled_until": None}
def _counted(fn, key):
    def wrapper(*args, **kwargs):
        counts[key] += 1
        return fn(*args, **kwargs)
    return wrapper
def _timed(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            counts["scheduled_until"] = time.monotonic()
    return wrapper
js.JobScheduler.job_selector = _counted(js.JobScheduler.job_selector, "rounds")
js.JobScheduler._schedule_reevalutation = _counted(js.JobScheduler._schedule_reevalutation,
                                                   "timers")
js.JobScheduler.schedule = _timed(js.JobScheduler.schedule)
def _report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    end = counts.pop("scheduled_until")
    with open(os.environ["REHEARSE_MAIN_CPU"], "w") as fh:
        json.dump({"cpu": r.ru_utime + r.ru_stime, **counts,
                   "exit_wait": None if end is None else time.monotonic() - end}, fh)
atexit.register(_report)
sys.argv[0] = "snakemake"
runpy.run_module("snakemake", run_name="__main__", alter_sys=True)
"""


def tiny_scans(root: Path, n_scenes: int = N_SCENES) -> Path:
    """real_data_config's 707 scenes (or its synthetic `n_scenes`) with a valid two-frame 64x48
    scan for every scene: the full DAG with jobs that do almost nothing."""
    import numpy as np
    from PIL import Image

    from clipbert import sens

    root.mkdir()
    config = real_data_config(root, n_scenes)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, "JPEG")
    frame = sens.SensFrame(color_bytes=buf.getvalue(),
                           depth_bytes=sens.encode_depth(np.zeros((48, 64), np.uint16)))
    header = sens.SensHeader(color_width=64, color_height=48, depth_width=64, depth_height=48,
                             num_frames=2)
    for scan in (root / "scans").glob("*/*.sens"):
        sens.write_sens(scan, header, [frame, frame])
    return config
