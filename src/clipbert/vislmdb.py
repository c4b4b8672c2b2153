"""The video LMDB in ClipBERT's "vis_db" layout: key = scene id (utf-8), value = raw mp4 bytes.

One environment per dataset (`data.mdb`, `lock.mdb` in a folder). It is built beside its target
and renamed, so a failed pack leaves nothing; readers open it read-only, without the lock file
(the data never changes once built, and a tracked target must not be touched by reading it) and
lazily in the process that reads, because an LMDB environment must not cross a fork.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import lmdb

from clipbert.errors import MACHINE_ERRNOS, ClipbertError, MachineError, machine_error
from clipbert.fsutil import atomic_dir, remove_stale_temporaries
from clipbert.progress import progress
from clipbert.video import probe_video

_COMMIT_EVERY = 1000  # puts per transaction, as ClipBERT's packer did
_MIN_MAP = 1 << 20


_ENVS: dict[str, tuple[tuple[int, int], int, lmdb.Environment]] = {}


def mp4_name(key: str) -> str:
    """A video's file name in a folder of videos (the released SQA3D videos, this workflow's
    encodes, an export): `<scene>.mp4`; its LMDB key is the name without `.mp4`."""
    return f"{key}.mp4"


def key_of(path: str | os.PathLike) -> str:
    """The LMDB key of a video file: its name without `.mp4`."""
    return Path(path).name.removesuffix(".mp4") if str(path).endswith(".mp4") else Path(path).stem


def _open_ro(lmdb_dir: str | os.PathLike) -> lmdb.Environment:
    """This process's read-only environment for `lmdb_dir`, shared by every reader in it.

    py-lmdb refuses a second open of the same files in one process, and a forked child inherits
    the parent's open environment (which LMDB forbids using across a fork): so there is one
    environment per folder and process, an inherited one is closed (harmless to the parent,
    there is no lock file) and reopened, and one whose files were rebuilt is replaced.
    """
    d = Path(lmdb_dir)
    try:
        st = (d / "data.mdb").stat()
    except OSError:
        raise ClipbertError(f"{d}: not a video LMDB (no data.mdb); make one with `clipbert lmdb "
                            "pack`") from None
    ident = (st.st_dev, st.st_ino)
    key = str(d.resolve())
    cached = _ENVS.get(key)
    if cached is not None:
        if cached[0] == ident and cached[1] == os.getpid():
            return cached[2]
        del _ENVS[key]
        cached[2].close()
    try:
        env = lmdb.open(
            str(d), readonly=True, lock=False, readahead=False, meminit=False, create=False,
            subdir=True,
        )
    except lmdb.Error as e:
        raise ClipbertError(f"{d}: cannot open LMDB ({e})") from None
    _ENVS[key] = (ident, os.getpid(), env)
    return env


def pack_lmdb(
    lmdb_dir: str | os.PathLike, mp4_paths: Iterable[str | os.PathLike], *,
    map_size: int | None = None,
) -> int:
    """Pack mp4 files into a new LMDB at `lmdb_dir` (replacing it); returns the number of videos.

    Each file must be a readable video (so an empty `.gitkeep.mp4` never becomes a scene); two
    files with the same stem are an error. The map starts at `map_size` (default: the total
    input size plus slack) and doubles whenever LMDB reports it full, so no size guess can fail.
    """
    paths = [Path(p) for p in mp4_paths]
    if not paths:
        raise ClipbertError(f"{lmdb_dir}: no mp4 files given to pack")
    seen: dict[str, Path] = {}
    total = 0
    for p in progress(paths, f"{lmdb_dir}: checking", unit="videos"):
        if not p.is_file():
            raise ClipbertError(f"{p}: file not found")
        key = key_of(p)
        if key in seen:
            raise ClipbertError(f"{p}: duplicate key {key!r} (also {seen[key]}); the key is the "
                                "file name without .mp4: pack one of the two")
        probe_video(p)
        seen[key] = p
        total += p.stat().st_size
    size = map_size or max(_MIN_MAP, 2 * total + _MIN_MAP)
    remove_stale_temporaries(lmdb_dir)  # a killed pack's leftovers count against the space
    check_free_space(lmdb_dir, lmdb_bytes([p.stat().st_size for p in seen.values()]))
    with atomic_dir(lmdb_dir) as tmp:
        try:
            env = lmdb.open(str(tmp), map_size=size, subdir=True, sync=False, metasync=False)
            try:
                items = list(seen.items())
                for start in range(0, len(items), _COMMIT_EVERY):
                    _put_batch(env, items[start:start + _COMMIT_EVERY])
                env.sync(True)
            finally:
                env.close()
        except lmdb.Error as e:
            raise _lmdb_failure(e, Path(lmdb_dir)) from None
    return len(seen)


_PAGE = 4096


def lmdb_bytes(sizes: list[int]) -> int:
    """An upper bound of the bytes an LMDB of values of `sizes` takes on disk: each value in
    overflow pages of its own (a page header, rounded up to whole pages), a leaf page per 20
    keys and their branch pages, the two meta pages and a free-list slack of 64 KiB."""
    values = sum(-(-(n + 64) // _PAGE) * _PAGE for n in sizes)
    return values + (len(sizes) // 20 + 2) * 2 * _PAGE + 2 * _PAGE + (64 << 10)


def check_free_space(target: str | os.PathLike, need: int) -> None:
    """Stop before writing `need` bytes at `target` when its file system has less free: a full
    file system under LMDB's memory map kills the job with SIGBUS and no message at all."""
    where = Path(target).parent
    while not where.exists():
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as e:
        raise machine_error(e, where) or ClipbertError(f"{where}: cannot stat ({e})") from None
    if free < need:
        raise MachineError(f"{target}: no space left on device: packing needs {_mib(need)} and "
                           f"{where} has {_mib(free)} free; free some space and run again")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _lmdb_failure(e: lmdb.Error, target: Path) -> ClipbertError:
    """An LMDB error as one line: a failure of the machine (LMDB gives the errno's words only)
    named as such, anything else naming the LMDB."""
    text = str(e)
    for code in MACHINE_ERRNOS:
        if os.strerror(code) in text:
            return MachineError(f"{target}: {MACHINE_ERRNOS[code]} ({text})")
    return ClipbertError(f"{target}: cannot write the LMDB ({text})")


def _put_batch(env: lmdb.Environment, items: list[tuple[str, Path]]) -> None:
    """Write one transaction, doubling the map size and retrying while the map is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, path in items:
                    if not txn.put(key.encode("utf-8"), path.read_bytes(), overwrite=False):
                        raise ClipbertError(f"{path}: duplicate key {key!r}")
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def list_lmdb(lmdb_dir: str | os.PathLike) -> list[dict]:
    """One row per video in key order: key, size in bytes, frame count (from the mp4 header)."""
    rows = []
    with _open_ro(lmdb_dir).begin(buffers=True) as txn:
        for k, v in txn.cursor():
            key = bytes(k).decode("utf-8")
            data = bytes(v)
            n = probe_video(data, name=f"{lmdb_dir}: key {key!r}")["n_frames"]
            rows.append({"key": key, "size": len(data), "n_frames": n})
    return rows


def export_lmdb(lmdb_dir: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Write every video back out as `<key>.mp4`, byte-identical, into a fresh `out_dir`."""
    env = _open_ro(lmdb_dir)
    n = 0
    with atomic_dir(out_dir) as tmp, env.begin(buffers=True) as txn:
        for k, v in txn.cursor():
            key = bytes(k).decode("utf-8")
            if not key or "/" in key or "\\" in key or key in (".", ".."):
                raise ClipbertError(f"{lmdb_dir}: key {key!r} is not a usable file name")
            (tmp / mp4_name(key)).write_bytes(bytes(v))
            n += 1
    return n


def content_digest(lmdb_dir: str | os.PathLike) -> str:
    """sha256 over every key, value size and value sha256 in key order: what a reader of this
    LMDB can see, whatever the page layout or map size of the files."""
    h = hashlib.sha256()
    with _open_ro(lmdb_dir).begin(buffers=True) as txn:
        for k, v in txn.cursor():
            h.update(bytes(k) + b"\0" + len(v).to_bytes(8, "little") + hashlib.sha256(v).digest())
    return h.hexdigest()


class VideoLMDB:
    """Read-only access to a video LMDB, opened on first use in the process that uses it.

    Holds only the folder name, so it pickles for spawn-started workers; the environment comes
    from `_open_ro` on every access (a dict look-up and a stat), which reopens it in a worker
    forked after the parent had touched it.
    """

    def __init__(self, lmdb_dir: str | os.PathLike) -> None:
        self.lmdb_dir = Path(lmdb_dir)
        if not (self.lmdb_dir / "data.mdb").is_file():
            raise ClipbertError(f"{self.lmdb_dir}: not a video LMDB (no data.mdb); make one with "
                                "`clipbert lmdb pack`")

    def get(self, key: str) -> bytes:
        with _open_ro(self.lmdb_dir).begin() as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            raise ClipbertError(f"{self.lmdb_dir}: no video {key!r} in this LMDB; pack the "
                                "scene's mp4 into it or remove its questions")
        return value

    def keys(self) -> list[str]:
        with _open_ro(self.lmdb_dir).begin() as txn:
            return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with _open_ro(self.lmdb_dir).begin() as txn:
            return txn.get(key.encode("utf-8")) is not None

    def __len__(self) -> int:
        return _open_ro(self.lmdb_dir).stat()["entries"]
