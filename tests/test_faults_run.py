"""Faults a run meets, put in on purpose: a damaged weight file, a diverged training, a lost
result file, a failed retrain. Each says so in one line, exits non-zero, and keeps (or a plain
rerun restores) the last good results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_readme import promised
from test_workflow import DETAILS, SMALL, resnet_weights, snakemake

from clipbert.checkpoints import MODEL_FILE


def _error_lines(stderr: str) -> list[str]:
    """Snakemake's stderr without its own notes about the profile and config."""
    return [x for x in stderr.strip().splitlines()
            if not x.startswith(("Using workflow specific profile", "Config file "))]


@pytest.mark.slow
def test_a_half_weight_file_stops_the_run_before_any_job(tmp_path: Path) -> None:
    """weights.* files are checked at the start as infer.model is: a file cut to half its size
    stops `snakemake -n` (a real run stops in the same check, before any job), naming it, and
    the last results stay."""
    (tmp_path / "results").mkdir()
    last = {name: f"the last good {name}" for name in ("model.pt", "test_acc.json")}
    for name, text in last.items():
        (tmp_path / "results" / name).write_text(text)
    good = resnet_weights(tmp_path / "r50.pt", SMALL)
    (tmp_path / "half.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expected = (f"error: config: weights.resnet: half.pt: not a model file (other binary data); "
                f"a model file here is {MODEL_FILE}")
    proc = snakemake(tmp_path, "-n", config={**SMALL, "weights": {"resnet": "half.pt"}},
                     check=False)
    assert proc.returncode == 1, proc.stderr
    assert _error_lines(proc.stderr) == [expected], proc.stderr
    assert {n: (tmp_path / "results" / n).read_text() for n in last} == last
    assert not (tmp_path / "work").exists()


def _inputs(dry_run: str, rule: str) -> set[str]:
    """The input files of a rule's job in a dry run that shows them (`--quiet host`)."""
    block = re.search(rf"^(?:local)?rule {rule}:\n    input: (.*)$", dry_run, re.M)
    assert block, dry_run[-3000:]
    return set(block[1].split(", "))


def test_default_target_and_runs_ask_for_every_result_file(tmp_path: Path) -> None:
    """`snakemake` asks for every result file the README lists (the model, its training log,
    the predictions and the accuracy; the blind baseline's four), and `runs` for every run's
    files, so that a missing one is remade by a plain run rather than left missing beside an
    accuracy that names it."""
    # The default variants: video (the main config's model) and blind.
    config = {**SMALL, "runs": {"seeds": [0, 1]}}
    proc = snakemake(tmp_path, "-n", "all", "runs", *DETAILS, config=config)
    out = proc.stdout + proc.stderr
    results = [p for p in promised() if p.startswith("results/") and not p.endswith("/")]
    assert len(results) == 4, results
    blind = [p.replace("results/", "results/blind/") for p in results]
    assert set(results + blind) <= _inputs(out, "all")
    runs = {f"results/runs/{v}/seed{s}/{name}" for v in ("video", "blind") for s in (0, 1)
            for name in ("model.pt", "train_log.jsonl", "test_predictions.jsonl")}
    assert runs <= _inputs(out, "runs")
