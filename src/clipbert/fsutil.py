"""Atomic output: every stage writes beside its target and renames, so a failure leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh sibling folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file at; renamed onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, target)


def _umask() -> int:
    """The process umask (mkstemp creates files 0600; outputs should be readable like any)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def redirect_output(log: str | os.PathLike | None) -> Iterator[None]:
    """Send stdout and stderr (of Python and of child libraries) to `log`: how workflow scripts
    honour a rule's `log:`."""
    if log is None:
        yield
        return
    import sys

    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=fh)
            fh.flush()
            print(f"error: see {log}", file=sys.__stderr__)
            raise


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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a jsonl file (one JSON object a line, blank lines skipped); a missing file or a bad
    line is an error naming the file, the line and the column, and saying what to do."""
    from clipbert.errors import ClipbertError

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
