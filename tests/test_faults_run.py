"""Faults a run meets, put in on purpose: a damaged weight file, a diverged training, a lost
result file, a failed retrain. Each says so in one line, exits non-zero, and keeps (or a plain
rerun restores) the last good results."""

from __future__ import annotations

from pathlib import Path

from test_workflow import SMALL, resnet_weights, snakemake

from clipbert.checkpoints import MODEL_FILE


def _error_lines(stderr: str) -> list[str]:
    """Snakemake's stderr without its own notes about the profile and config."""
    return [x for x in stderr.strip().splitlines()
            if not x.startswith(("Using workflow specific profile", "Config file "))]


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
