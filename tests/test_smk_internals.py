"""Every Snakemake internal that clipbert.smk's workarounds (and ./run's SLURM_CONF) rely on is
still there in the installed, locked Snakemake: a release that drops one fails here in one line
naming the version and what is gone, not in a workflow run."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from clipbert import smk


def test_every_internal_the_workarounds_use_is_there() -> None:
    gone = smk.internals_gone()
    if gone:
        pytest.fail(gone, pytrace=False)


def test_a_missing_internal_is_named_with_the_version(monkeypatch) -> None:
    import snakemake.api  # noqa: F401 - Snakemake's own import order
    from snakemake.persistence import PersistenceBase
    from snakemake.scheduling.job_scheduler import JobScheduler

    monkeypatch.delattr(PersistenceBase, "cleanup_metadata")
    monkeypatch.setattr(JobScheduler, "_schedule_reevalutation", lambda self, delay: None)
    gone = smk.internals_gone()
    assert gone is not None and "\n" not in gone
    assert gone.startswith(f"Snakemake {version('snakemake')} (SLURM plugin "), gone
    assert "PersistenceBase.metadata and .cleanup_metadata" in gone
    assert "threading.Timer" in gone
    assert "lock files" not in gone  # only what is gone
