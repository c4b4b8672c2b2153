"""The lock of every package `./run` installs (envs/requirements.lock), its check against
pyproject.toml and its refresh.

Standard library only, and runnable by path before any environment exists:
    python3 src/clipbert/envlock.py check      # .ci/run: one line and exit 1 when they disagree
    python3 src/clipbert/envlock.py refresh    # pip-compile --generate-hashes, in a tool venv

The lock is for Linux x86_64 and CPython 3.11 (PLATFORM); `./run` installs it with
`pip install --require-hashes --no-deps`, elsewhere pyproject.toml's ranges unpinned. Its header
holds a digest of pyproject.toml's dependency lists, so an edited list without a refreshed lock
is caught without resolving anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "envs" / "requirements.lock"
CONDA_ENV = ROOT / "envs" / "clipbert.yaml"
PLATFORM = "Linux x86_64, CPython 3.11"
DIGEST_LINE = "# pyproject-sha256: "
REFRESH = "python3.11 src/clipbert/envlock.py refresh"
PIP_TOOLS = "pip-tools==7.7.0"
# Installed in every venv by Python itself and not pinned: pip's own version decides no result.
UNLOCKED = {"pip"}


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares it (`PyYAML` and `pyyaml` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_inputs(pyproject: Path = PYPROJECT) -> dict:
    """What the lock is made from: pyproject.toml's dependency lists, its build requirements and
    its `[tool.clipbert.lock]` table (exact pins such as torch's, packages installed without
    their dependencies)."""
    doc = tomllib.loads(pyproject.read_text())
    project = doc.get("project", {})
    return {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system": doc.get("build-system", {}).get("requires", []),
        "lock": doc.get("tool", {}).get("clipbert", {}).get("lock", {}),
    }


def inputs_digest(pyproject: Path = PYPROJECT) -> str:
    """A digest of lock_inputs that ignores formatting and order of the tables."""
    text = json.dumps(lock_inputs(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_digest(lock: Path = LOCK) -> str | None:
    """The digest the lock's header records (None: no such line)."""
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE):].split()[0]
    return None


def pins(lock: Path = LOCK) -> dict[str, str]:
    """Normalized name -> exact version of every package in the lock."""
    found = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            found[normalize(m.group(1))] = m.group(2)
    return found


def conda_pins(env: Path = CONDA_ENV) -> dict[str, str]:
    """The pins of the conda environment's pip list."""
    found = {}
    for line in env.read_text().splitlines():
        m = re.match(r"^\s*-\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*$", line)
        if m:
            found[normalize(m.group(1))] = m.group(2)
    return found


def problem(pyproject: Path = PYPROJECT, lock: Path = LOCK, env: Path = CONDA_ENV) -> str | None:
    """Why the lock does not belong to pyproject.toml (or the conda environment to the lock), in
    one line; None when they agree."""
    if not lock.exists():
        return f"{lock}: no lock; make it with `{REFRESH}`"
    recorded = recorded_digest(lock)
    if recorded is None:
        return f"{lock}: no `{DIGEST_LINE.strip('# :')}` line in its header; refresh it with " \
               f"`{REFRESH}`"
    if recorded != inputs_digest(pyproject):
        return (f"{lock}: out of date: {pyproject.name}'s dependency lists changed since it was "
                f"made; refresh it with `{REFRESH}` and commit both")
    if env.exists():
        locked, conda = pins(lock), conda_pins(env)
        if conda != {k: v for k, v in locked.items() if k not in _no_deps(pyproject)}:
            return f"{env}: its pins differ from {lock.name}'s; refresh with `{REFRESH}`"
    return None


def _no_deps(pyproject: Path = PYPROJECT) -> set[str]:
    """Packages the lock holds without their dependencies (`[tool.clipbert.lock] no-deps`)."""
    return {normalize(re.split(r"[=<>!~ ]", r, maxsplit=1)[0])
            for r in lock_inputs(pyproject)["lock"].get("no-deps", [])}


def installed_vs_lock(installed: Iterable[tuple[str, str]], lock: Path = LOCK,
                      own: str = "clipbert") -> dict:
    """Compare installed (name, version) pairs with the lock: `matches` and what differs.
    This package and UNLOCKED are left out (the lock cannot pin its own checkout)."""
    locked = pins(lock)
    have = {normalize(n): v for n, v in installed if normalize(n) not in UNLOCKED | {own}}
    differ = sorted(f"{n} {have[n]} (lock {locked[n]})" for n in have.keys() & locked.keys()
                    if have[n] != locked[n])
    extra = sorted(f"{n} {have[n]}" for n in have.keys() - locked.keys())
    missing = sorted(f"{n} {locked[n]}" for n in locked.keys() - have.keys())
    return {"matches": not (differ or extra or missing), "differ": differ, "extra": extra,
            "missing": missing}


# ---- refresh ----------------------------------------------------------------------------------


def _run(cmd: list[str], **kw: Any) -> None:
    """Run a step of the refresh; a failed one stops it in one line (its own output above)."""
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    try:
        subprocess.run(cmd, check=True, **kw)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"error: {LOCK}: not refreshed: {Path(cmd[0]).name} failed ({e})") \
            from None


def refresh(tools: Path | None = None) -> None:
    """Resolve pyproject.toml for PLATFORM with pip-compile (pip-tools in a venv of its own under
    the temporary folder, never in .venv), add the no-deps packages with their hashes, stamp the
    digest and write the conda environment's pins. Runs with this machine's pip configuration
    (its indexes)."""
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or os.uname().machine != \
            "x86_64":
        raise SystemExit(f"error: the lock is for {PLATFORM}; run `{REFRESH}` there")
    tools = tools or Path(tempfile.gettempdir()) / "clipbert-lock-tools"
    if not (tools / "bin" / "pip-compile").exists():
        _run([sys.executable, "-m", "venv", str(tools)])
        _run([str(tools / "bin" / "pip"), "install", "-q", PIP_TOOLS])
    spec = lock_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        extra_in = Path(tmp, "lock.in")
        extra_in.write_text("\n".join(spec["lock"].get("pins", []) + spec["build-system"]) + "\n")
        out = Path(tmp, "requirements.lock")
        extras = [a for x in spec["optional-dependencies"] for a in ("--extra", x)]
        _run([str(tools / "bin" / "pip-compile"), "-q", "--generate-hashes", "--allow-unsafe",
              "--strip-extras", "--no-annotate", "--no-header", "--no-emit-options", *extras,
              "-o", str(out), "pyproject.toml", str(extra_in)], cwd=ROOT)
        body = out.read_text()
        no_deps = []
        for req in spec["lock"].get("no-deps", []):
            dl = Path(tmp, "dl")
            _run([str(tools / "bin" / "pip"), "download", "-q", "--no-deps", "-d", str(dl), req])
            wheel = next(dl.glob("*"))
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            no_deps.append(f"{req} \\\n    --hash=sha256:{digest}\n")
            wheel.unlink()
    header = (f"# The exact environment `./run` installs, for {PLATFORM}:\n"
              "#   pip install --require-hashes --no-deps -r envs/requirements.lock\n"
              f"# Made from pyproject.toml by `{REFRESH}`; do not edit.\n"
              f"{DIGEST_LINE}{inputs_digest()}\n")
    tail = ("# [tool.clipbert.lock] no-deps: installed without their dependencies\n"
            + "".join(no_deps)) if no_deps else ""
    _write(LOCK, header + body + tail)
    _write_conda_env()
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins())} packages) and "
          f"{CONDA_ENV.relative_to(ROOT)}", file=sys.stderr)


def _write_conda_env() -> None:
    """envs/clipbert.yaml with the lock's pins (without hashes: pip's hash mode refuses the
    editable checkout that conda's pip list must also install)."""
    skip = _no_deps()
    lines = [f"      - {n}=={v}\n" for n, v in sorted(pins().items()) if n not in skip]
    _write(CONDA_ENV, (
        "# Conda environment for every rule (used with `snakemake --sdm conda`): the pins of\n"
        "# envs/requirements.lock without hashes (pip's hash mode refuses the editable checkout\n"
        "# at the end) nor the no-deps packages, then this checkout. Written by\n"
        f"# `{REFRESH}` with the lock; do not edit.\n"
        "channels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  - python=3.11\n  - pip\n"
        "  - pip:\n" + "".join(lines) + "      - -e ..\n"))


def _write(path: Path, text: str) -> None:
    """Through a temporary file and a rename: never half a lock."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    if argv == ["check"]:
        why = problem()
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 1
        return 0
    if argv in (["pins"], ["no-deps"]):  # for ./run's unpinned install elsewhere
        print(" ".join(lock_inputs()["lock"].get(argv[0], [])))
        return 0
    if argv == ["refresh"]:
        refresh()
        return 0
    print("usage: envlock.py check|refresh|pins|no-deps", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
