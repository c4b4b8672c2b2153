"""The exception types the command line turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import errno
import os

# What the machine, not the input, failed at: the words a user reads, per errno.
MACHINE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded (no space left on device for this user)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


class ClipbertError(Exception):
    """Bad input or a failed stage; the message names the file (and frame, key or line)."""


class MachineError(ClipbertError):
    """The machine failed, not the input: a full disk, a read-only or unreadable folder, an I/O
    error. Named as such, with the path, so nobody looks for a bug or a bad file."""


def machine_error(exc: BaseException, path: str | os.PathLike | None = None) -> MachineError | None:
    """`exc` as a MachineError naming its file (or else `path`, what was being written), or None
    when it is not a failure of the machine. An OSError raised by a write to an open file has no
    file name of its own, hence `path`."""
    if not isinstance(exc, OSError) or exc.errno not in MACHINE_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else path
    what = MACHINE_ERRNOS[exc.errno]
    return MachineError(f"{where}: {what}" if where is not None else what)
