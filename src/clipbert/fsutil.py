"""Atomic output: every stage writes beside its target and renames, so a failure leaves nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from clipbert.errors import ClipbertError, MachineError, machine_error
from clipbert.signals import held


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces `target`, on error (SIGINT and
    SIGTERM included) it is removed. The swap itself is held against signals, so `target` is
    always either the old folder or the new one, whole. Temporaries of `target` that a killed
    writer left are removed first; a full disk or a read-only folder is a MachineError."""
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with held():
            remove_stale_temporaries(target)
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
        yield tmp
        with held():
            os.chmod(tmp, 0o777 & ~_umask())
            _swap_in(tmp, target)
    except BaseException as e:
        failure = _machine_failure(e, target, tmp)
        if tmp is not None:
            with held():
                shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`; an old `target` is first renamed aside (a folder cannot be
    replaced in one rename) and removed once the new one is in place."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = tmp.with_name(tmp.name + ".old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file at; renamed onto `target` on success,
    removed on error (SIGINT and SIGTERM included). Temporaries of `target` that a killed writer
    left are removed first; a full disk or a read-only folder is a MachineError."""
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with held():
            remove_stale_temporaries(target)
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
            os.close(fd)
            tmp = Path(name)
        yield tmp
        with held():
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
    except BaseException as e:
        failure = _machine_failure(e, target, tmp)
        if tmp is not None:
            with held():
                tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


# Temporaries are `.<name>.tmp-<pid>-<random>`: the pid tells a killed writer's leftovers (its
# process is gone) from a live writer's. Earlier versions wrote `.<name>.tmp-<random>`.
_TMP_PID = re.compile(r"(\d+)-")


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries beside `target` that a writer killed outright (SIGKILL, SIGBUS,
    a lost machine) left, so that a rerun leaves none; a live writer's stay. Returns them.

    Only one job writes a given target at a time (Snakemake's outputs are exclusive), so a
    temporary of the old form, without a pid, is a leftover too."""
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    removed = []
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for p in siblings:
        m = _TMP_PID.match(p.name[len(prefix):])
        if m and (int(m.group(1)) == os.getpid() or _alive(int(m.group(1)))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


# torch.save's zip writer reports a failed write (ENOSPC, EDQUOT, EIO) without its errno.
_TORCH_WRITE_FAILED = ("inline_container.cc", "file write failed")


def _machine_failure(e: BaseException, target: Path, tmp: Path | None) -> MachineError | None:
    """What failed while writing `target`, when it was the machine: an OSError of a machine
    errno, or torch's zip writer failing (named as no space left when the file system is full
    while the temporary `tmp` is still there)."""
    if isinstance(e, MachineError):  # from a write inside this one: name its final path
        text = str(e)
        return MachineError(text.replace(str(tmp), str(target))) if tmp and str(tmp) in text \
            else None
    if isinstance(e, OSError) and f".{target.name}.tmp-" in str(e.filename):
        # The temporary goes now: name the file as it would have been in place.
        e.filename = str(e.filename).replace(str(tmp), str(target)) if tmp else None
    found = machine_error(e, target)
    if found is not None or not isinstance(e, RuntimeError):
        return found
    first = (str(e).splitlines() or [""])[0]
    if not any(s in first for s in _TORCH_WRITE_FAILED):
        return None
    try:
        usage = shutil.disk_usage(target.parent)
    except OSError:
        usage = None
    if usage is not None and usage.free < _FULL_BELOW:
        return MachineError(f"{target}: no space left on device (torch.save: {first.strip()})")
    return MachineError(f"{target}: cannot write (disk quota or I/O error?): torch.save: "
                        f"{first.strip()}")


_FULL_BELOW = 16 << 20  # free bytes under which a failed write is put down to a full disk


def _umask() -> int:
    """The process umask (mkstemp creates files 0600; outputs should be readable like any)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `target` for writing; renamed onto `target` on success."""
    with atomic_path(target) as tmp, open(tmp, mode) as fh:
        yield fh


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically, with a trailing newline."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> None:
    """Write one compact JSON object per line, atomically (a rerun replaces, never appends)."""
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is an error naming it (and the line)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ClipbertError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ClipbertError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                            f"{e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClipbertError(f"{path}: cannot read ({e})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a jsonl file (one JSON object a line, blank lines skipped); a missing file or a bad
    line is an error naming the file, the line and the column, and saying what to do."""
    rows: list[dict] = []
    try:
        fh = open(path, "rb")  # bytes, decoded line by line: a bad byte gets its line number
    except FileNotFoundError:
        raise ClipbertError(f"{path}: file not found") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ClipbertError(f"{path}: line {n}, column {e.start + 1}: not UTF-8 text "
                                    f"({e.reason}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                # json's own message ends in " at" before the position it leaves out here.
                raise ClipbertError(f"{path}: line {n}, column {e.colno}: not valid JSON "
                                    f"({e.msg.removesuffix(' at')}); fix or remove that "
                                    "line") from None
            if not isinstance(row, dict):
                raise ClipbertError(f"{path}: line {n}: expected a JSON object {{...}}, got "
                                    f"{_JSON_KINDS.get(type(row), 'a value')}; fix or remove "
                                    "that line")
            rows.append(row)
    return rows


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}

def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: str | os.PathLike, cache: dict | None = None) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted).

    With `cache` (a dict the caller keeps between runs), a file whose resolved path, size and
    mtime are unchanged is not read again: an 850 MB checkpoint is hashed once.
    """
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{content_digest(f, cache)}\n".encode())
        return h.hexdigest()
    st = p.stat()
    key, stamp = str(p.resolve()), [st.st_size, st.st_mtime_ns]
    hit = cache.get(key) if cache is not None else None
    if hit is not None and hit[:2] == stamp:
        return hit[2]
    digest = file_sha256(p)
    if cache is not None:
        cache[key] = [*stamp, digest]
    return digest
