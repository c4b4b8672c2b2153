"""One line per error in the workflow too: a failing rule's script, a bad config key, SIGTERM.

Standalone, `clipbert` prints `error: <file>: <where>: <what>`; inside Snakemake the same failure
must read the same (no traceback), while a real bug keeps its traceback in the rule's log.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli_env
from test_workflow import SMALL, snakemake

from clipbert.smk import config_problems, yaml_scalars

# ---- workflow_step, as a workflow script uses it ---------------------------------------------

SCRIPT = """
import os, sys, time, types
from pathlib import Path
from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_dir
from clipbert.smk import workflow_step

snakemake = types.SimpleNamespace(log=[sys.argv[1]])  # what Snakemake injects, as far as used
with workflow_step(snakemake):
    print("python output")
    os.write(2, b"C library output\\n")
    kind = sys.argv[2]
    if kind == "bad input":
        raise ClipbertError("scene.sens: frame 3: colour payload is not a JPEG")
    if kind == "bug":
        {}["missing"]
    if kind == "slow":
        with atomic_dir(Path(sys.argv[3])) as tmp:
            (tmp / "part").write_text("half")
            time.sleep(60)
"""


def step(tmp_path: Path, kind: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "logs/x.log"), kind,
                             *extra], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_step_sends_all_output_to_the_log(tmp_path: Path) -> None:
    proc = step(tmp_path, "ok")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and (out, err) == ("", "")
    log = (tmp_path / "logs/x.log").read_text()
    assert "python output" in log and "C library output" in log


def test_step_turns_bad_input_into_one_line(tmp_path: Path) -> None:
    proc = step(tmp_path, "bad input")
    out, err = proc.communicate(timeout=60)
    line = "error: scene.sens: frame 3: colour payload is not a JPEG"
    assert proc.returncode == 1 and err == line + "\n" and out == ""
    log = (tmp_path / "logs/x.log").read_text()
    assert log.splitlines()[-1] == line and "Traceback" not in log


def test_step_keeps_the_traceback_of_a_bug_in_the_log(tmp_path: Path) -> None:
    proc = step(tmp_path, "bug")
    out, err = proc.communicate(timeout=60)
    log = tmp_path / "logs/x.log"
    assert proc.returncode == 1 and out == ""
    assert "Traceback" in log.read_text() and "KeyError: 'missing'" in log.read_text()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {log}: KeyError: 'missing'") and "traceback is in the log" in err


def test_step_unwinds_on_sigterm(tmp_path: Path) -> None:
    target = tmp_path / "out"
    proc = step(tmp_path, "slow", str(target))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.tmp-*/part")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err == "error: stopped by SIGTERM\n"
    assert (tmp_path / "logs/x.log").read_text().splitlines()[-1] == "error: stopped by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_every_workflow_script_uses_the_step() -> None:
    """So that every rule's failure reads as one line and SIGTERM unwinds in every rule."""
    for script in sorted((REPO / "workflow_scripts").glob("*.py")):
        assert "with workflow_step(snakemake):" in script.read_text(), script.name


# ---- failing rules, through Snakemake --------------------------------------------------------


@pytest.fixture(scope="module")
def made_demo(tmp_path_factory) -> Path:
    """The small demo's data made once (rule demo_data) for the tests below, which copy it."""
    root = tmp_path_factory.mktemp("demo_data")
    snakemake(root, "work/demo/source/vocab.txt", config=SMALL)
    return root


@pytest.fixture
def demo_run(made_demo: Path, tmp_path: Path) -> Path:
    """A workdir of its own with the small demo's data made: a copy (times and Snakemake's
    records kept), so that each test may break a file."""
    shutil.copytree(made_demo, tmp_path, symlinks=True, dirs_exist_ok=True)
    return tmp_path


def assert_one_line_failure(proc: subprocess.CompletedProcess, line: str, log: Path) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in text, text[-3000:]
    assert line in text.splitlines(), text[-3000:]
    assert line in log.read_text().splitlines()


def test_a_corrupt_scan_fails_its_rule_with_one_line(demo_run: Path) -> None:
    scene = "scene0002_00"
    scan = demo_run / f"work/demo/source/scans/{scene}/{scene}.sens"
    data = scan.read_bytes()
    scan.write_bytes(data[: len(data) // 2])
    proc = snakemake(demo_run, f"work/demo/index/{scene}.json", config=SMALL, check=False)
    text = proc.stdout + proc.stderr
    errors = [x for x in text.splitlines() if x.startswith("error: ")]
    assert errors and errors[0].startswith(
        f"error: work/demo/source/scans/{scene}/{scene}.sens: frame ")
    assert "run past the end of the file" in errors[0]
    assert_one_line_failure(proc, errors[0], demo_run / f"logs/scene/{scene}.log")
    assert not (demo_run / f"work/demo/index/{scene}.json").exists()


def test_a_duplicate_question_id_fails_its_rule_with_one_line(demo_run: Path) -> None:
    path = demo_run / "work/demo/source/sqa_task/balanced/v1_balanced_questions_val_scannetv2.json"
    doc = json.loads(path.read_text())
    qid = doc["questions"][0]["question_id"]
    doc["questions"][1]["question_id"] = qid
    path.write_text(json.dumps(doc))
    proc = snakemake(demo_run, "work/demo/sqa/stats.json", config=SMALL, check=False)
    rel = path.relative_to(demo_run)
    line = f"error: {rel}: question {qid}: duplicate question_id"
    assert_one_line_failure(proc, line, demo_run / "logs/sqa_convert.log")
    sqa_out = demo_run / "work/demo/sqa"
    assert not sqa_out.exists() or not list(sqa_out.iterdir())


# ---- the config check ------------------------------------------------------------------------


@pytest.mark.parametrize("bad,line", [
    ({"frames": {"strid": 3}}, "test_config.yaml: frames.strid: unknown key (did you mean "
     "'stride'? frames takes stride, depth, poses)"),
    ({"frames": {"stride": "x"}}, "test_config.yaml: frames.stride: expected integer, got 'x'"),
])
def test_a_bad_config_key_is_one_line(tmp_path: Path, bad: dict, line: str) -> None:
    proc = snakemake(tmp_path, "-n", config=bad, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert [x for x in text.splitlines() if x.startswith("error: ")] == [f"error: {line}"]
    assert "Traceback" not in text and "Failed validating" not in text, text


def test_config_errors_name_the_file_that_set_the_key(tmp_path: Path) -> None:
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    sources = [("config/config.yaml", {"frames": {"stride": 10}, "video": {"size": [9, 9]}}),
               ("mine.yaml", {"frames": {"stride": 0}, "trian": {}}),
               ("--config", {"video": {"size": [1, 9]}})]
    config = {"frames": {"stride": 0}, "video": {"size": [1, 9]}, "trian": {}}
    assert config_problems(config, schema, sources) == [
        "mine.yaml: trian: unknown key (did you mean 'train'? the top level takes data, frames, "
        "video, train, infer, runs, baselines, weights)",
        "mine.yaml: frames.stride: must be at least 1, got 0",
        "--config: video.size[0]: must be at least 2, got 1",
    ]
    assert config_problems({"data": {"source": "x"}}, schema) == [
        "the config: data.source: expected one of demo, scannet, got 'x'"]


def test_config_values_are_yaml_scalars() -> None:
    """Snakemake reads `--config frames={stride: 5}` with YAML's BaseLoader (every scalar a
    string): the scalars are read again as YAML reads them, except where the schema asks for a
    string (a path that looks like a number stays a path)."""
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    given = {"frames": {"stride": "5", "depth": "true"}, "video": {"size": ["96", "64"]},
             "train": {"overrides": {"lr": "0.001", "model.num_layers": "1",
                                     "betas": ["0.9", "0.99"], "select_best": "false"}},
             "infer": {"model": "null"}, "data": {"sqa_dir": "2024", "scans_dir": "null"}}
    assert yaml_scalars(given, schema) == {
        "frames": {"stride": 5, "depth": True}, "video": {"size": [96, 64]},
        "train": {"overrides": {"lr": 0.001, "model.num_layers": 1, "betas": [0.9, 0.99],
                                "select_best": False}},
        "infer": {"model": None}, "data": {"sqa_dir": "2024", "scans_dir": None}}


def test_config_defaults_are_those_of_snakemakes_validate() -> None:
    from snakemake.utils import validate

    schema_path = REPO / "config/schema.yaml"
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    assert config_problems(ours, yaml.safe_load(schema_path.read_text())) == []
    validate(theirs, str(schema_path))
    assert ours == theirs and ours["frames"]["depth"] is False and ours["data"]["demo"]


def test_a_config_value_of_the_wrong_kind_where_a_section_belongs() -> None:
    """`frames: 3` must be a one-line problem, not a crash while filling in defaults."""
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    assert config_problems({"frames": 3}, schema) == [
        "the config: frames: expected object, got 3"]


def test_fail_is_one_line_and_exit_1() -> None:
    code = "from clipbert.smk import fail\nfail('config: data.sqa_dir is required')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env())
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", "error: config: data.sqa_dir is required\n")


def test_smk_does_not_import_torch() -> None:
    code = "import sys, clipbert.smk\nassert 'torch' not in sys.modules\n"
    env = {**cli_env(), "PYTHONWARNINGS": "ignore"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
