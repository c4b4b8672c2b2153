"""The README, walked as a newcomer walks it: the quick start, the report and the reruns, in a
fresh copy of the repository (with the small demo config), and every file it promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow import SMALL

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def commands(title: str) -> list[str]:
    """The `./run snakemake ...` lines of a section's plain code blocks, comments removed."""
    blocks = re.findall(r"^```\n(.*?)^```$", section(title), re.S | re.M)
    lines = [line.split("#", 1)[0].strip() for b in blocks for line in b.splitlines()]
    return [line for line in lines if line.startswith("./run snakemake")]


def promised() -> list[str]:
    """The paths of the quick start's table of what the demo run writes (`<scene>` a glob)."""
    table = section("Quick start").split("What the demo run writes:", 1)[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    paths = [p for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]
    return [p.replace("<scene>", "*") for p in paths]


def fresh_copy(dst: Path) -> Path:
    """The checkout without what runs leave behind; `.venv` shared (same pyproject.toml, so
    `./run` finds it built)."""
    skip = shutil.ignore_patterns(".git", ".venv", "work", "results", "logs", ".snakemake",
                                  "report.html", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(REPO, dst, ignore=skip)
    (dst / ".venv").symlink_to(REPO / ".venv")
    return dst


def run(cwd: Path, line: str) -> subprocess.CompletedProcess:
    """A README command line, with the small demo config appended (`--configfile` last: it
    takes several values)."""
    cmd = f"{line} --configfile small.yaml"
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_the_readme_sections_are_found():
    quick, rerun = commands("Quick start"), commands("Rerunning one stage")
    assert quick[0] == "./run snakemake --cores 2" and any("--report" in c for c in quick)
    assert len(rerun) >= 3
    assert {"work/demo/source/", "results/plots/", "results/blind/"} <= set(promised())
    assert all(p.startswith(("work/", "results/", "logs/")) for p in promised()), promised()


@pytest.mark.slow
def test_quick_start_report_and_reruns_in_a_fresh_copy(tmp_path):
    repo = fresh_copy(tmp_path / "clipbert")
    (repo / "small.yaml").write_text(yaml.safe_dump(SMALL))
    for line in commands("Quick start"):
        run(repo, line)
    missing = [p for p in promised() if not list(repo.glob(p.rstrip("/")))]
    assert not missing, f"README promises {missing}, the quick start did not make them"
    assert (repo / "report.html").stat().st_size > 100_000
    for line in commands("Rerunning one stage"):
        run(repo, line)
    done = run(repo, "./run snakemake --cores 2 -n")
    assert "Nothing to be done" in done.stdout + done.stderr
