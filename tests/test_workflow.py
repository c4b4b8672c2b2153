"""The Snakemake workflow end to end on a small demo, single-stage reruns, config validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, job_stats

SMALL = {
    "data": {"demo": {"scenes": 6, "frames": 30}},
    "frames": {"stride": 10},
    "video": {"size": [64, 64]},
    "train": {"overrides": {
        "epochs": 1, "max_img_size": 64, "batch_size": 8, "model.hidden_size": 32,
        "model.intermediate_size": 64, "model.num_layers": 1,
    }},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    if config is not None:  # last: --configfile takes several values
        path = workdir / "test_config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env())
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("workflow")
    snakemake(wd, "results/test_acc.json", "results/blind/test_acc.json", config=SMALL)
    return wd


@pytest.mark.slow
def test_end_to_end(run_dir):
    acc = json.loads((run_dir / "results/test_acc.json").read_text())
    for key in ("overall", "per_type", "n_questions", "n_unknown", "ceiling",
                "majority_baseline", "preset", "checkpoint_sha256"):
        assert key in acc, key
    assert acc["n_questions"] == sum(acc["counts"].values()) > 0
    assert set(acc["per_type"]) <= {"what", "is", "how", "can", "which", "others"}
    preds = (run_dir / "results/test_predictions.jsonl").read_text().splitlines()
    assert len(preds) == acc["n_questions"]
    assert (run_dir / "results/model.pt").stat().st_size > 0
    for log in ("demo_data", "sqa_convert", "pack_lmdb", "train", "infer", "train_blind",
                "infer_blind"):
        assert (run_dir / "logs" / f"{log}.log").is_file(), log
    blind = json.loads((run_dir / "results/blind/test_acc.json").read_text())
    assert blind["blind"] is True and acc["blind"] is False
    assert blind["n_questions"] == acc["n_questions"]
    assert "model: WARNING: starting from RANDOM" in (run_dir / "logs/train_blind.log").read_text()
    assert len(list((run_dir / "logs/frames").glob("*.log"))) == 6


@pytest.mark.slow
def test_nothing_left_to_do(run_dir):
    proc = snakemake(run_dir, "-n", "results/test_acc.json", config=SMALL)
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_rerun_one_stage(run_dir):
    """Forcing one scene's frames reruns that job only; a dry run then shows that exactly its
    video, the LMDB, training and inference are out of date (the blind baseline is not: it
    reads no video)."""
    scene = "scene0001_00"
    other = run_dir / "work/demo/frames/scene0002_00/frame-0.color.jpg"
    before = other.stat().st_mtime_ns
    proc = snakemake(run_dir, f"work/demo/frames/{scene}", "--forcerun", "frames", config=SMALL)
    assert job_stats(proc.stdout + proc.stderr) == {"frames": 1, "total": 1}
    assert other.stat().st_mtime_ns == before
    dry = snakemake(run_dir, "-n", "results/test_acc.json", "results/blind/test_acc.json",
                    config=SMALL)
    counts = job_stats(dry.stdout + dry.stderr)
    assert counts == {"encode_video": 1, "pack_lmdb": 1, "train": 1, "infer": 1,
                      "total": 4}, counts


def test_config_errors_name_the_key(tmp_path):
    proc = snakemake(tmp_path, "-n", config={"frames": {"strid": 3}}, check=False)
    assert proc.returncode != 0
    assert "strid" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "-n", config={"frames": {"stride": "x"}}, check=False)
    assert proc.returncode != 0
    assert "stride" in proc.stdout + proc.stderr


def test_real_data_config_needs_paths(tmp_path):
    proc = snakemake(tmp_path, "-n", config={"data": {"source": "scannet"}}, check=False)
    assert proc.returncode != 0
    assert "data.sqa_dir" in proc.stdout + proc.stderr


def test_lint_is_quiet():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                          capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0
    assert "Lints for" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_default_demo_learns_from_the_video(tmp_path):
    """The default target with the default config (the embedded demo): the trained model must
    beat the majority-answer-per-type baseline of the same questions by at least 15 points, and
    the blind baseline trained by the same recipe by at least 10."""
    snakemake(tmp_path)
    acc = json.loads((tmp_path / "results/test_acc.json").read_text())
    blind = json.loads((tmp_path / "results/blind/test_acc.json").read_text())
    assert acc["preset"] == blind["preset"] == "tiny"
    assert acc["overall"] >= acc["majority_baseline"]["overall"] + 15, acc
    assert acc["overall"] >= blind["overall"] + 10, (acc["overall"], blind["overall"])


def test_misspelt_override_stops_the_dry_run(tmp_path):
    """Training settings are checked when the workflow starts, not minutes later in the job."""
    proc = snakemake(tmp_path, "-n", config={"train": {"overrides": {"model.layers": 2}}},
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("error: config: train.overrides: unknown training setting 'model.layers'"
            in out), out
    assert "Traceback" not in out and not (tmp_path / "work").exists()


def test_real_data_inputs_are_named_before_any_job(tmp_path):
    """A real-data config names its missing inputs before any job runs, and plans its work in
    its own folder: nothing of the demo's is reused."""
    from clipbert import demo

    src = tmp_path / "release"
    demo.make_demo(src, scenes=6, frames=20)
    real = {"data": {"source": "scannet", "sqa_dir": str(tmp_path / "missing"),
                     "scans_dir": str(tmp_path / "no_scans"),
                     "scene_lists": {"all": str(src / "scannetv2.txt"),
                                     "test": str(src / "scannetv2_test.txt")}},
            "weights": {"vocab": str(src / "vocab.txt")}}
    proc = snakemake(tmp_path, "-n", config=real, check=False)
    assert proc.returncode != 0
    assert (f"error: config: data.sqa_dir: {tmp_path}/missing/answer_dict.json not found"
            in proc.stdout + proc.stderr), proc.stderr
    real["data"]["sqa_dir"] = str(src / "sqa_task")
    proc = snakemake(tmp_path, "-n", config=real, check=False)
    assert proc.returncode != 0
    assert ("error: config: data.scans_dir: 6 of 6 scenes the questions use have no scan in "
            f"{tmp_path}/no_scans: {tmp_path}/no_scans/scene0000_00/scene0000_00.sens"
            in proc.stdout + proc.stderr), proc.stderr
    real["data"]["scans_dir"] = str(src / "scans")
    proc = snakemake(tmp_path, "-n", "results/test_acc.json", config=real)
    counts = job_stats(proc.stdout + proc.stderr)
    assert counts["sens_index"] == counts["frames"] == counts["encode_video"] == 6, counts
    assert "demo_data" not in counts
    dry = snakemake(tmp_path, "-n", "--forceall", "results/test_acc.json", config=real).stdout
    assert "work/scannet/sqa/train.jsonl" in dry and "work/demo/" not in dry


@pytest.mark.slow
def test_reruns_follow_the_inputs(tmp_path):
    """Every rerun gives the artifact its inputs call for: a rerun of the conversion with the
    same SQA3D files changes no byte (training resumes its finished state: the same model); an
    edited question or another video size retrains, the log naming what changed; with nothing
    changed, nothing runs."""
    wd = tmp_path
    snakemake(wd, "results/test_acc.json", config=SMALL)
    sqa = wd / "work/demo/sqa"
    before = {p.name: p.read_bytes() for p in sqa.iterdir()}
    model = (wd / "results/model.pt").read_bytes()
    snakemake(wd, "results/test_acc.json", "--forcerun", "sqa_convert", config=SMALL)
    assert {p.name: p.read_bytes() for p in sqa.iterdir()} == before
    assert "resuming from work/demo/train_state/last.pt" in (wd / "logs/train.log").read_text()
    assert (wd / "results/model.pt").read_bytes() == model

    lines = (sqa / "train.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["question"] = row["question"] + " Please answer."
    (sqa / "train.jsonl").write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    proc = snakemake(wd, "results/test_acc.json", config=SMALL)
    assert job_stats(proc.stdout + proc.stderr) == {"train": 1, "infer": 1, "total": 2}
    log = (wd / "logs/train.log").read_text()
    assert "(changed: train.jsonl); training starts over" in log, log
    assert (wd / "results/model.pt").read_bytes() != model
    model = (wd / "results/model.pt").read_bytes()

    smaller = {**SMALL, "video": {"size": [48, 48]}}
    proc = snakemake(wd, "results/test_acc.json", config=smaller)
    counts = job_stats(proc.stdout + proc.stderr)
    assert counts["encode_video"] == 6 and counts["train"] == 1, counts
    log = (wd / "logs/train.log").read_text()
    assert "(changed: video LMDB); training starts over" in log, log
    assert (wd / "results/model.pt").read_bytes() != model
    proc = snakemake(wd, "results/test_acc.json", config=smaller)
    assert "Nothing to be done" in proc.stdout + proc.stderr
