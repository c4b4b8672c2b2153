"""The Snakemake workflow end to end on a small demo, single-stage reruns, config validation."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env, job_stats
from PIL import Image

SMALL = {
    "data": {"demo": {"scenes": 6, "frames": 30}},
    "frames": {"stride": 10},
    "video": {"size": [64, 64]},
    "train": {"overrides": {
        "epochs": 1, "max_img_size": 64, "batch_size": 8, "model.hidden_size": 32,
        "model.intermediate_size": 64, "model.num_layers": 1,
    }},
}


# Each job's inputs and outputs, which the default profile keeps quiet (`quiet: [rules]`).
DETAILS = ("--quiet", "host")


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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A finished small demo for the tests that read it, one per test process: session scope,
    since other modules' tests run between them in a process (pytest-xdist cannot keep them
    together under pytest 9.2: its `xdist_group` has no effect there, pytest-xdist issue 1386)."""
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
    assert len(list((run_dir / "logs/scene").glob("*.log"))) == 6
    # What made the result (clipbert.provenance), and what its numbers are.
    assert "top-1 exact match" in acc["metric"]
    env = acc["environment"]
    assert env["pyav_ffmpeg"]["libavcodec"] and env["clipbert"]["version"] == "0.1.0"
    assert isinstance(env["lock"]["matches"], bool)


@pytest.mark.slow
def test_nothing_left_to_do(run_dir):
    proc = snakemake(run_dir, "-n", "results/test_acc.json", config=SMALL)
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_new_libavcodec_re_encodes_every_scene(run_dir, tmp_path):
    """The `scene` rule's `encoder` param holds libavcodec's version (clipbert.video.encoder_key):
    with PyAV reporting another one, the dry run lists every scene job, for that param."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(
        "import av\nav.library_versions['libavcodec'] = (99, 0, 0)\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{env['PYTHONPATH']}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(run_dir),
           "--cores", "2", "-n", "results/test_acc.json", *DETAILS, "--configfile",
           str(run_dir / "test_config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = job_stats(out)
    assert counts["scene"] == 6 and counts["pack_lmdb"] == 1, counts
    assert "params changed" in out.lower() or "Params have changed" in out, out[-3000:]


@pytest.mark.slow
def test_rerun_one_stage(run_dir):
    """Forcing one scene's frames reruns that scene's job only (its index, frames and video,
    one job since issue 23). Its video comes out byte-identical, and Snakemake compares the
    checksums it recorded of small inputs, so nothing after it runs again; a video with other
    content puts exactly the LMDB, training and inference out of date (the blind baseline is
    not: it reads no video)."""
    scene = "scene0001_00"
    other = run_dir / "work/demo/frames/scene0002_00/frame-0.color.jpg"
    mine = run_dir / f"work/demo/videos/{scene}.mp4"
    before, video = other.stat().st_mtime_ns, mine.read_bytes()
    proc = snakemake(run_dir, f"work/demo/frames/{scene}", "--forcerun", "scene", config=SMALL)
    assert job_stats(proc.stdout + proc.stderr) == {"scene": 1, "total": 1}
    assert other.stat().st_mtime_ns == before
    assert mine.read_bytes() == video  # the same frames, the same encode
    targets = ("results/test_acc.json", "results/blind/test_acc.json")
    dry = snakemake(run_dir, "-n", *targets, config=SMALL)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    mine.write_bytes((run_dir / "work/demo/videos/scene0002_00.mp4").read_bytes())
    dry = snakemake(run_dir, "-n", *targets, config=SMALL)
    counts = job_stats(dry.stdout + dry.stderr)
    assert counts == {"pack_lmdb": 1, "train": 1, "infer": 1, "total": 3}, counts
    mine.write_bytes(video)


@pytest.mark.slow
def test_a_lost_model_is_remade_with_the_same_bytes(run_dir):
    """The default target asks for results/model.pt by name: once it is gone (a retrain that
    failed after Snakemake deleted it) a plain run plans its training again, and that training
    resumes from the finished state, giving back the same bytes (and the accuracy again)."""
    model = run_dir / "results/model.pt"
    before = model.read_bytes()
    model.unlink()
    dry = snakemake(run_dir, "-n", config=SMALL)
    counts = job_stats(dry.stdout + dry.stderr)
    assert counts.get("train") == 1 and counts.get("infer") == 1, counts
    assert "train_blind" not in counts and "pack_lmdb" not in counts, counts
    snakemake(run_dir, "results/model.pt", "results/test_acc.json", config=SMALL)
    assert model.read_bytes() == before
    acc = json.loads((run_dir / "results/test_acc.json").read_text())
    assert acc["checkpoint_sha256"] == hashlib.sha256(before).hexdigest()
    assert "resuming from work/demo/train_state/last.pt" in (run_dir / "logs/train.log").read_text()


def test_config_errors_name_the_key(tmp_path):
    proc = snakemake(tmp_path, "-n", config={"frames": {"strid": 3}}, check=False)
    assert proc.returncode != 0
    assert "strid" in proc.stdout + proc.stderr
    proc = snakemake(tmp_path, "-n", config={"frames": {"stride": "x"}}, check=False)
    assert proc.returncode != 0
    assert "stride" in proc.stdout + proc.stderr


def test_config_on_the_command_line_reads_numbers_as_numbers(tmp_path):
    """`--config` values are YAML: an integer (frames.stride), a list of integers (video.size)
    and a nested override with a float and an integer reach the schema and the training
    settings as numbers (Snakemake alone hands them over as strings)."""
    proc = snakemake(tmp_path, "-n", "--config", "frames={stride: 5}", "video={size: [96, 96]}",
                     "train={overrides: {lr: 0.001, model.num_layers: 1}}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "error" not in out, out
    assert job_stats(out)["train"] == 1, out


def test_real_data_config_needs_paths(tmp_path):
    proc = snakemake(tmp_path, "-n", config={"data": {"source": "scannet"}}, check=False)
    assert proc.returncode != 0
    assert "data.sqa_dir" in proc.stdout + proc.stderr


def test_lint_is_quiet():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                          capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0
    assert "Lints for" not in proc.stdout + proc.stderr


def test_misspelt_override_stops_the_dry_run(tmp_path):
    """Training settings are checked when the workflow starts, not minutes later in the job."""
    proc = snakemake(tmp_path, "-n", config={"train": {"overrides": {"model.layers": 2}}},
                     check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("error: config: train.overrides: unknown training setting 'model.layers'"
            in out), out
    assert "Traceback" not in out and not (tmp_path / "work").exists()


@pytest.mark.slow
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
    assert counts["scene"] == 6, counts
    assert "demo_data" not in counts
    dry = snakemake(tmp_path, "-n", *DETAILS, "--forceall", "results/test_acc.json",
                    config=real).stdout
    assert "work/scannet/sqa/train.jsonl" in dry and "work/demo/" not in dry


def rule_names() -> set[str]:
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")])
    return (set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.M))
            | set(re.findall(r"^use rule \w+ as (\w+)", text, re.M)))


def rerun_table() -> list[tuple[str, set[str]]]:
    """docs/reruns.md's table "What a rerun does, and why": each row's change, and the jobs
    (the rule names in backquotes) that it says run again."""
    text = (REPO / "docs/reruns.md").read_text().split("What a rerun does, and why", 1)[1]
    lines = text[text.index("| rerun |"):].splitlines()[2:]
    rules = rule_names()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        change, again = line.strip("|").split(" | ")[:2]
        rows.append((change.strip(), set(re.findall(r"`(\w+)`", again)) & rules))
    return rows


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(wd: Path, config: dict) -> subprocess.Popen:
    """`snakemake` (the default target) in the background, in a process group of its own; the
    training logs of earlier runs are removed first."""
    for name in ("train", "train_blind"):
        (wd / "logs" / f"{name}.log").unlink(missing_ok=True)
    (wd / "test_config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
           "--cores", "2", "--configfile", str(wd / "test_config.yaml")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cli_env(), start_new_session=True)


def _training(wd: Path, proc: subprocess.Popen, deadline: float) -> str:
    """Wait until a training job of the run `proc` has saved its state once (its second step
    is under way); the job's name."""
    while True:
        for name in ("train", "train_blind"):
            log = wd / "logs" / f"{name}.log"
            if log.exists() and "train: step 2/" in log.read_text():
                return name
        assert proc.poll() is None and time.monotonic() < deadline, "no training ran"
        time.sleep(0.2)


def _wait_gone(pgid: int, deadline: float) -> None:
    while _group_alive(pgid):
        assert time.monotonic() < deadline, "the run's jobs never ended"
        time.sleep(0.5)


def _edit_a_question(wd: Path, n: int) -> None:
    path = wd / "work/demo/sqa/train.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[n])
    row["question"] = row["question"] + " Please answer."
    lines[n] = json.dumps(row) + "\n"
    path.write_text("".join(lines))


MODEL = {"train": "results/model.pt", "train_blind": "results/blind/model.pt"}


@pytest.mark.slow(seconds=400)
def test_every_rerun_row_holds(tmp_path):
    """docs/reruns.md's rerun table and this test are one list: each row's change is made in a
    finished demo run, a dry run lists exactly the jobs the row names, and the rerun gives what
    its training column says. The final weights are kept (not the best on val, which can be an
    early step that an edited question does not reach yet), so every change shows in them."""
    wd = tmp_path
    table, checked = rerun_table(), []

    def row(key: str, *args: str, config: dict) -> str:
        (change, jobs), = [(c, j) for c, j in table if c.startswith(key)]
        dry = snakemake(wd, "-n", *args, config=config)
        out = dry.stdout + dry.stderr
        assert set(job_stats(out)) - {"all", "total"} == jobs, (change, job_stats(out))
        assert jobs or "Nothing to be done" in out, out
        checked.append(change)
        return out

    def log(name: str = "train") -> str:
        return (wd / "logs" / f"{name}.log").read_text()

    def model(name: str = "train") -> bytes:
        return (wd / MODEL[name]).read_bytes()

    base = {**SMALL, "train": {"overrides": {**SMALL["train"]["overrides"],
                                             "select_best": False}}}
    snakemake(wd, config=base)
    row("nothing changed", config=base)

    sqa = wd / "work/demo/sqa"
    before, old = {p.name: p.read_bytes() for p in sqa.iterdir()}, model()
    row("`--forcerun sqa_convert`", "--forcerun", "sqa_convert", config=base)
    snakemake(wd, "--forcerun", "sqa_convert", config=base)
    assert {p.name: p.read_bytes() for p in sqa.iterdir()} == before
    assert "resuming from work/demo/train_state/last.pt" in log()
    assert model() == old

    _edit_a_question(wd, 0)
    row("an edited question", config=base)
    snakemake(wd, config=base)
    assert "(changed: train.jsonl); training starts over" in log(), log()
    assert model() != old

    base, old = {**base, "video": {"size": [48, 48]}}, model()
    row("another `video.size`", config=base)
    snakemake(wd, config=base)
    assert "(changed: video LMDB); training starts over" in log(), log()
    assert model() != old
    row("another `frames.stride`", config={**base, "frames": {"stride": 5}})

    overrides = {**base["train"]["overrides"], "lr": 5e-4}
    base, old = {**base, "train": {"overrides": overrides}}, model()
    row("another `train.preset` or `train.overrides` value", config=base)
    snakemake(wd, config=base)
    for name in MODEL:
        assert "(changed: setting lr); training starts over" in log(name), log(name)
    assert model() != old

    base = {**base, "train": {"overrides": {**overrides, "num_workers": 1, "log_every": 5}}}
    row("another speed knob", config=base)
    snakemake(wd, config=base)
    row("another `infer.n_clips`", config={**base, "infer": {"n_clips": 3}})
    (wd / "w.pt").write_bytes(model())
    weights = {"clipbert": str(wd / "w.pt")}
    row("another pretrained weight file", config={**base, "weights": weights})

    _edit_a_question(wd, 1)
    proc, deadline = _start(wd, base), time.monotonic() + 900
    stopped = _training(wd, proc, deadline)
    os.killpg(proc.pid, signal.SIGTERM)  # Snakemake and its job, as `kill -- -PGID` does
    proc.wait()
    _wait_gone(proc.pid, deadline)
    assert "error: stopped by SIGTERM" in log(stopped), log(stopped)
    row("a rerun stopped", config=base)
    snakemake(wd, config=base)
    assert "resuming from work/demo/train_state" in log(stopped), log(stopped)

    _edit_a_question(wd, 2)
    proc, deadline = _start(wd, base), time.monotonic() + 900
    try:
        killed = _training(wd, proc, deadline)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.killpg(proc.pid, signal.SIGSTOP)  # the orphaned job, held while a rerun looks
        held = snakemake(wd, config=base, check=False)
        os.killpg(proc.pid, signal.SIGCONT)
        assert held.returncode == 1, held.stderr
        assert re.search(r"error: \.snakemake/locks: Snakemake \(pid \d+\) was killed, but its "
                         r"jobs still run \(pid \d+", held.stderr), held.stderr
        _wait_gone(proc.pid, deadline)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    old = model(killed)
    out = row("Snakemake itself killed", config=base)
    assert f"note: removed the lock of a Snakemake that was killed (pid {proc.pid})" in out, out
    snakemake(wd, config=base)
    assert "resuming from work/demo/train_state" in log(killed), log(killed)
    assert model(killed) == old
    assert "Nothing to be done" in snakemake(wd, "-n", config=base).stdout

    assert checked == [change for change, _ in table]


def test_only_a_dead_snakemakes_lock_is_removed(tmp_path, monkeypatch, capsys):
    """The lock is removed only when the Snakemake recorded as holding it is gone (a live one,
    or a lock this workflow did not record, is left to Snakemake); a dry run leaves it while
    that Snakemake's jobs still run, a real run stops naming them."""
    from clipbert import smk

    monkeypatch.chdir(tmp_path)
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    lock = locks / "0.input.lock"
    lock.write_text("")
    smk.clear_dead_lock(dry_run=False)  # nobody recorded: not ours to judge
    assert lock.exists()
    smk.record_lock_owner()  # this process: alive
    smk.clear_dead_lock(dry_run=False)
    assert lock.exists() and capsys.readouterr().err == ""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    smk.LOCK_OWNER.write_text(json.dumps({"pid": dead.pid, "start": "0"}))
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                            ".snakemake/scripts/tmp.train.py"], cwd=tmp_path)
    try:
        smk.clear_dead_lock(dry_run=True)
        assert lock.exists()
        with pytest.raises(SystemExit):
            smk.clear_dead_lock(dry_run=False)
        assert f"still run (pid {job.pid})" in capsys.readouterr().err
    finally:
        job.kill()
        job.wait()
    smk.clear_dead_lock(dry_run=False)
    assert not lock.exists() and not smk.LOCK_OWNER.exists()
    assert capsys.readouterr().err == (
        f"note: removed the lock of a Snakemake that was killed (pid {dead.pid})\n")


@pytest.mark.slow
def test_old_work_folders_are_redone(tmp_path):
    """A work folder made before one job per scene (its records name the rules `sens_index`,
    `frames` and `encode_video`, the last without the `preset` and `encoder` params of the
    faithful encode) redoes every scene on the next run, and the LMDB after them; so does a
    change of `video.preset`; with nothing changed, nothing runs."""
    wd = tmp_path
    config = {**SMALL, "data": {"demo": {"scenes": 5, "frames": 20}}}
    snakemake(wd, "work/demo/vis_db", config=config)
    assert "Nothing to be done" in snakemake(wd, "-n", "work/demo/vis_db", config=config).stdout
    metadata = wd / ".snakemake/metadata"
    records = {base64.b64decode(p.name).decode(): p for p in metadata.iterdir()
               if json.loads(p.read_text())["rule"] == "scene"}
    assert len(records) == 3 * 5, sorted(records)
    old = {  # what the three rules recorded for this config: their own params, as Snakemake does
        "index": ("sens_index", []),
        "frames": ("frames", [10, False, False]),  # stride, depth, poses
        "videos": ("encode_video", [[64, 64], 20, "mpeg4", False]),  # size, fps, codec, aspect
    }
    for target, p in records.items():
        rule, params = old[target.split("/")[2]]
        record = json.loads(p.read_text())
        record.update(rule=rule, params=sorted(repr(v) for v in params))
        p.write_text(json.dumps(record))
    proc = snakemake(wd, "-n", "work/demo/vis_db", config=config)
    assert job_stats(proc.stdout + proc.stderr) == {"scene": 5, "pack_lmdb": 1, "total": 6}
    snakemake(wd, "work/demo/vis_db", config=config)
    improved = {**config, "video": {**config["video"], "preset": "improved"}}
    proc = snakemake(wd, "-n", "work/demo/vis_db", config=improved)
    assert job_stats(proc.stdout + proc.stderr) == {"scene": 5, "pack_lmdb": 1, "total": 6}


# ---- evaluation only (infer.model) -------------------------------------------------------------


@pytest.mark.slow
def test_eval_only_dag_has_no_training(tmp_path):
    """With infer.model the DAG holds no train job, and no blind one unless blind_model names
    a checkpoint (which is then scored, not trained)."""
    from test_evaluate import standin_checkpoint

    (tmp_path / "ck").mkdir()
    overrides = SMALL["train"]["overrides"]
    standin_checkpoint(tmp_path / "ck/clipbert.pt", "tiny", overrides, 20, 200)
    standin_checkpoint(tmp_path / "ck/blind.pt", "tiny", overrides, 20, 200, blind=True)
    cfg = {**SMALL, "infer": {"model": "ck/clipbert.pt"}}
    counts = job_stats(snakemake(tmp_path, "-n", config=cfg).stdout)
    assert counts["infer"] == counts["plot_training"] == counts["plot_benchmarks"] == 1, counts
    assert not {"train", "train_blind", "infer_blind"} & set(counts), counts
    counts = job_stats(snakemake(tmp_path, "-n", "results/test_acc.json", config=cfg).stdout)
    assert "train" not in counts and counts["infer"] == 1, counts
    cfg["baselines"] = {"blind_model": "ck/blind.pt"}
    counts = job_stats(snakemake(tmp_path, "-n", config=cfg).stdout)
    assert counts["infer_blind"] == 1 and not {"train", "train_blind"} & set(counts), counts
    cfg = {**SMALL, "baselines": {"blind_model": "ck/blind.pt"}}  # training the video model only
    counts = job_stats(snakemake(tmp_path, "-n", config=cfg).stdout)
    assert counts["train"] == counts["infer_blind"] == 1 and "train_blind" not in counts, counts


def test_eval_only_checkpoint_errors_name_the_key(tmp_path):
    proc = snakemake(tmp_path, "-n", config={**SMALL, "infer": {"model": "no/clipbert.pt"}},
                     check=False)
    assert proc.returncode != 0
    assert "error: config: infer.model: no/clipbert.pt not found" in proc.stderr, proc.stderr
    (tmp_path / "results").mkdir()
    (tmp_path / "results/model.pt").write_bytes(b"x")
    proc = snakemake(tmp_path, "-n", config={**SMALL, "infer": {"model": "results/model.pt"}},
                     check=False)
    assert proc.returncode != 0
    assert ("error: config: infer.model: results/model.pt is where this workflow's training "
            "writes" in proc.stderr), proc.stderr


@pytest.mark.slow
def test_released_videos_and_checkpoint_need_nothing_else(tmp_path):
    """The SQA3D release (sqa_task/ with the test split's files only, <scene>.mp4 videos), a
    checkpoint and a vocabulary: no scans, no scene lists, no train or val files; only the test
    split's videos are packed, and a missing one, or an image named .mp4, is named before any
    job (issue 28)."""
    from test_evaluate import standin_checkpoint
    from test_video import write_coded

    from clipbert import demo, sqa

    src = tmp_path / "release"
    demo.make_demo(src, scenes=6, frames=20)
    test_scenes = sorted(sqa.question_scenes(
        src / "sqa_task/balanced/v1_balanced_questions_test_scannetv2.json"))
    videos = tmp_path / "video"
    videos.mkdir()
    write_coded(tmp_path / "any.mp4", 3, Fraction(20))
    for s in demo.scene_ids(6):
        (videos / f"{s}.mp4").write_bytes((tmp_path / "any.mp4").read_bytes())
    for split in ("train", "val"):  # evaluating needs the test split's files alone
        for name in (sqa.questions_name(split), sqa.annotations_name(split)):
            (src / "sqa_task/balanced" / name).unlink()
    standin_checkpoint(tmp_path / "clipbert.pt")
    cfg = {"data": {"source": "scannet", "sqa_dir": str(src / "sqa_task"),
                    "videos_dir": str(videos)},
           "train": {"preset": "faithful"}, "infer": {"model": str(tmp_path / "clipbert.pt")},
           "weights": {"vocab": str(src / "vocab.txt")}}
    proc = snakemake(tmp_path, "-n", *DETAILS, config=cfg)
    counts = job_stats(proc.stdout)
    assert counts == {"sqa_convert": 1, "pack_lmdb": 1, "infer": 1, "plot_data": 1,
                      "plot_frames": 1, "plot_training": 1, "plot_benchmarks": 1,
                      "plot_confusion": 1, "plot_test_accuracy": 1, "all": 1, "total": 10}, counts
    packed = proc.stdout.split("rule pack_lmdb:", 1)[1].split("output:", 1)[0]
    assert sorted(p.rsplit("/", 1)[1] for p in packed.split("input:", 1)[1].strip().split(", ")
                  ) == [f"{s}.mp4" for s in test_scenes], packed
    assert 0 < len(test_scenes) < 6
    (videos / f"{test_scenes[0]}.mp4").unlink()
    proc = snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0
    assert (f"error: config: data.videos_dir: 1 of {len(test_scenes)} scenes the questions use "
            f"have no video in {videos}: {videos}/{test_scenes[0]}.mp4" in proc.stderr), proc.stderr
    Image.new("RGB", (8, 8)).save(videos / f"{test_scenes[0]}.mp4", format="JPEG")
    proc = snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: config: data.videos_dir: {videos}/{test_scenes[0]}.mp4: not a video but an "
            "image (piped jpeg sequence)" in proc.stderr), proc.stderr


@pytest.mark.slow
def test_a_bad_checkpoint_stops_the_run_before_any_job(tmp_path):
    """A text file, a json file and a file of another preset given as infer.model each stop
    `snakemake -n` and a real run at the start, with one line (no traceback) saying what is
    wrong and, for the preset, which one fits; the last results stay in place."""
    from test_evaluate import standin_checkpoint

    from clipbert.checkpoints import MODEL_FILE

    (tmp_path / "results").mkdir()
    last = {name: f"the last good {name}" for name in ("test_acc.json", "test_predictions.jsonl")}
    for name, text in last.items():
        (tmp_path / "results" / name).write_text(text)
    (tmp_path / "notes.txt").write_text("scores of the last run\n")
    (tmp_path / "answers.json").write_text('{"yes": 0}')
    faithful = standin_checkpoint(tmp_path / "clipbert.pt")
    cases = {
        "notes.txt": f"error: config: infer.model: notes.txt: not a model file (text); a model "
                     f"file here is {MODEL_FILE}",
        "answers.json": f"error: config: infer.model: answers.json: not a model file (JSON); a "
                        f"model file here is {MODEL_FILE}",
        "clipbert.pt": "error: config: infer.model: clipbert.pt: tensor module.cnn.feature."
                       "backbone.stem.conv1.weight is [64, 3, 7, 7] in the file but [16, 3, 7, 7] "
                       "in the clipbert model of preset 'tiny': the settings do not fit this file "
                       "(the file fits preset 'faithful' (also 'improved') without the overrides; "
                       "set train.preset: faithful)",
    }
    runs = [(name, ["-n"]) for name in cases] + [("clipbert.pt", ["results/test_acc.json"])]
    for name, args in runs:
        proc = snakemake(tmp_path, *args, config={**SMALL, "infer": {"model": name}},
                         check=False)
        assert proc.returncode == 1, proc.stderr
        lines = [x for x in proc.stderr.strip().splitlines()
                 if not x.startswith(("Using workflow specific profile", "Config file "))]
        assert lines == [cases[name]], proc.stderr
    assert faithful.is_file()
    assert {n: (tmp_path / "results" / n).read_text() for n in last} == last
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(last)
    assert not (tmp_path / "work").exists()


@pytest.mark.slow(seconds=45)
def test_eval_only_scores_an_upstream_file_of_a_trained_model(tmp_path):
    """A demo model trained in this process and saved as upstream's trainer saves one (upstream
    key names, fp16, detector heads and pixel_mean, a DDP prefix), scored by the default target
    with infer.model in a fresh folder: no train job runs, the predictions equal the native
    model's on at least 99 % of the questions, and the report says nothing was trained here."""
    import torch
    from PIL import Image
    from test_evaluate import extra_keys, upstream_state
    from test_train import SMALL as TRAIN_SMALL
    from test_train import make_data

    from clipbert import evaluate, modelfile, train
    from clipbert.config import TrainConfig, make_config
    from clipbert.fsutil import read_jsonl

    # Enough steps (~20 s) that the model answers by question type, not one answer for all:
    # agreement between two constant predictors would prove nothing.
    overrides = {**TRAIN_SMALL, "epochs": 20, "lr": 2e-3, "train_n_clips": 1, "log_every": 50}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = make_data(tmp_path / "data")  # the workflow's SMALL demo, through the real stages
        native = tmp_path / "native.pt"
        train.train(make_config("tiny", overrides), ds["data_dir"], ds["lmdb_dir"], native,
                    tmp_path / "state", vocab=ds["vocab"])
        obj = modelfile.read_model_file(native)
        ck = tmp_path / "release" / "clipbert.pt"
        ck.parent.mkdir()
        torch.save(upstream_state(obj["state_dict"],
                                  TrainConfig.from_dict(obj["train_config"]).model), ck)
        wd = tmp_path / "run"
        wd.mkdir()
        proc = snakemake(wd, config={**SMALL, "train": {"preset": "tiny", "overrides": overrides},
                                     "infer": {"model": str(ck)}})
        counts = job_stats(proc.stdout + proc.stderr)
        assert counts["infer"] == 1 and counts["plot_training"] == 1, counts
        assert not {"train", "train_blind", "infer_blind"} & set(counts), counts
        assert not (wd / "results/train_log.jsonl").exists()
        assert json.loads((wd / "work/demo/sqa/train_ans2label.json").read_text()) == obj[
            "ans2label"]
        ref = evaluate.infer(native, wd / "work/demo/sqa/test.jsonl", wd / "work/demo/vis_db",
                             tmp_path / "native_predictions.jsonl", tmp_path / "native_acc.json")
    finally:
        torch.set_num_threads(threads)
    got = read_jsonl(wd / "results/test_predictions.jsonl")
    want = read_jsonl(tmp_path / "native_predictions.jsonl")
    assert [g["question_id"] for g in got] == [w["question_id"] for w in want]
    assert len({w["predicted"] for w in want}) >= 3, want
    same = sum(g["predicted"] == w["predicted"] for g, w in zip(got, want, strict=True))
    assert same >= 0.99 * len(want), (same, len(want))
    acc = json.loads((wd / "results/test_acc.json").read_text())
    assert abs(acc["overall"] - ref["overall"]) <= 100 * (len(want) - same) / len(want)
    assert acc["trained_here"] is False and ref["trained_here"] is True
    assert (acc["checkpoint_name"], acc["checkpoint_layout"], acc["checkpoint_dtypes"]) == (
        "clipbert.pt", "upstream", ["float16"])
    assert acc["checkpoint_sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert acc["head_rows"] == ref["head_rows"] and acc["n_answers"] == len(obj["ans2label"])
    log = (wd / "logs/infer.log").read_text()
    unused = [line for line in log.splitlines() if "not used" in line]
    assert len(unused) == 1 and all(k in unused[0] for k in extra_keys()), log
    text = Image.open(wd / "results/plots/training.png").text["Description"]
    assert text.startswith("not trained here") and "clipbert.pt" in text
    for name in ("data", "test_accuracy", "confusion", "frames", "benchmarks"):
        assert (wd / f"results/plots/{name}.png").stat().st_size > 0, name


def resnet_weights(path: Path, config: dict) -> Path:
    """A torchvision-layout ResNet state dict (zeros) at the shapes of the demo's model under
    `config`'s overrides: the workflow checks a weight file's shapes at its start."""
    import torch

    from clipbert.config import make_config
    from clipbert.modelfile import model_shapes

    cfg = make_config("tiny", config["train"]["overrides"])
    torch.save({k.removeprefix("cnn.backbone."): torch.zeros(shape)
                for k, shape in model_shapes(cfg).items() if k.startswith("cnn.backbone.")},
               path)
    return path


@pytest.mark.slow
def test_pretrained_weights_are_inputs_of_training(tmp_path):
    """A weight file is an input of the training job (a changed file reruns it), not a
    parameter; the blind baseline, which has no CNN, does not take a CNN-only one."""
    weights = resnet_weights(tmp_path / "r50.pt", SMALL)
    cfg = {**SMALL, "weights": {"resnet": str(weights)}}
    dry = snakemake(tmp_path, "-n", *DETAILS, config=cfg).stdout
    jobs = {block.split(":", 1)[0]: block for block in re.split(r"\n(?=(?:local)?rule )", dry)}
    train_job = next(b for name, b in jobs.items() if name.endswith("rule train"))
    blind_job = next(b for name, b in jobs.items() if name.endswith("rule train_blind"))
    assert str(weights) in train_job.split("output:")[0], train_job
    assert str(weights) not in blind_job


# ---- seeds and variants (config runs) ----------------------------------------------------------

# Two runs side by side on the two cores, one thread each.
ONE_THREAD_RUNS = ("--set-threads", "train_run=1", "infer_run=1")
# The default demo with 10 epochs instead of the tiny preset's 16: six trainings fit the CI's
# time, and the video model has learnt what the margins below ask by then.
RUNS_BASE = {"train": {"overrides": {"epochs": 10}}}


@pytest.mark.slow(seconds=650)
def test_demo_runs_video_beats_blind_by_the_paired_interval(tmp_path):
    """`snakemake runs` on the default demo (10 epochs): three seeds of the video model and of
    the blind baseline (the default target's two models). Every seed of the video
    model beats the majority answer per type of the same questions by at least 15 points and
    the blind model of its seed by at least 10, and its mean beats the blind one's by the
    paired 95 % interval (its lower end is above 0); rerunning one seed reruns its jobs only
    and touches no other run's file; editing one variant's settings reruns that variant's runs
    only."""
    snakemake(tmp_path, "runs", *ONE_THREAD_RUNS, config=RUNS_BASE)  # the README's command
    for seed in (0, 1, 2):
        acc, blind = (json.loads((tmp_path / f"results/runs/{v}/seed{seed}/test_acc.json")
                                 .read_text()) for v in ("video", "blind"))
        assert acc["preset"] == blind["preset"] == "tiny"
        assert acc["overall"] >= acc["majority_baseline"]["overall"] + 15, (seed, acc)
        assert acc["overall"] >= blind["overall"] + 10, (seed, acc["overall"], blind["overall"])
    summary = json.loads((tmp_path / "results/runs/summary.json").read_text())
    video, blind = summary["variants"]["video"], summary["variants"]["blind"]
    assert summary["reference"] == "blind" and video["n"] == blind["n"] == 3
    vs = video["vs_reference"]["overall"]
    assert vs["pairs"] == 3 and vs["low"] > 0, vs
    assert video["accuracy"]["overall"]["mean"] > blind["accuracy"]["overall"]["mean"]
    assert (tmp_path / "results/plots/runs.png").is_file()
    assert not (tmp_path / "results/model.pt").exists()  # the default target is not run

    runs_dir = tmp_path / "results/runs"
    rerun = runs_dir / "video/seed1"
    others = {p: p.stat().st_mtime_ns for p in [*runs_dir.rglob("*"),
                                                *(tmp_path / "work/demo/runs").rglob("*")]
              if p.is_file() and p.parent != runs_dir and "video/seed1" not in p.as_posix()}
    model = (rerun / "model.pt").read_bytes()
    proc = snakemake(tmp_path, "runs", *ONE_THREAD_RUNS, "--forcerun",
                     "results/runs/video/seed1/model.pt", config=RUNS_BASE)
    assert job_stats(proc.stdout + proc.stderr) == {
        "train_run": 1, "infer_run": 1, "runs_summary": 1, "plot_runs": 1, "runs": 1,
        "total": 5}
    assert {p: p.stat().st_mtime_ns for p in others} == others
    # Its finished state is resumed: the same model (the seed is in the state's fingerprint).
    assert "resuming from work/demo/runs/video/seed1/train_state/" in (
        tmp_path / "logs/runs/video/seed1/train.log").read_text()
    assert (rerun / "model.pt").read_bytes() == model

    edited = {**RUNS_BASE, "runs": {"variants": {"video": {}, "blind": {"train": {"overrides": {
        "model.variant": "blind", "lr": 1e-3}}}}, "reference": "blind"}}
    dry = snakemake(tmp_path, "-n", "runs", config=edited)
    assert job_stats(dry.stdout + dry.stderr) == {
        "train_run": 3, "infer_run": 3, "runs_summary": 1, "plot_runs": 1, "runs": 1,
        "total": 9}
    # A speed knob reruns nothing; another number of evaluation clips reruns the scoring only.
    other = {**RUNS_BASE, "runs": {"variants": {
        "video": {"train": {"overrides": {"log_every": 3}}},
        "blind": {"train": {"overrides": {"model.variant": "blind"}}, "infer": {"n_clips": 1}},
    }, "reference": "blind"}}
    dry = snakemake(tmp_path, "-n", "runs", config=other)
    assert job_stats(dry.stdout + dry.stderr) == {
        "infer_run": 3, "runs_summary": 1, "plot_runs": 1, "runs": 1, "total": 6}
    proc = snakemake(tmp_path, "-n", "runs", config=RUNS_BASE)
    assert "Nothing to be done" in proc.stdout + proc.stderr
