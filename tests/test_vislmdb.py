"""The video LMDB: pack / ls / export round trip, bad inputs, lazy read-only access."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lmdb
import pytest

from clipbert import vislmdb
from clipbert.errors import ClipbertError


def test_round_trip_via_cli(tmp_path: Path, mp4s: list[Path], cli) -> None:
    db = tmp_path / "vis_db"
    r = cli("lmdb", "pack", db, *mp4s)
    assert "3 videos" in r.stdout
    assert sorted(p.name for p in db.iterdir()) == ["data.mdb", "lock.mdb"]
    assert [p.name for p in tmp_path.iterdir()] == ["vis_db"]
    lines = cli("lmdb", "ls", db).stdout.strip().splitlines()
    counts = (3, 5, 4)
    want = [f"{p.stem}\t{p.stat().st_size}\t{c}" for p, c in zip(mp4s, counts, strict=True)]
    assert lines == want
    out = tmp_path / "back"
    assert "3 videos" in cli("lmdb", "export", db, out).stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in mp4s)
    for p in mp4s:
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_reading_does_not_touch_the_lmdb(tmp_path: Path, mp4s: list[Path]) -> None:
    db = tmp_path / "db"
    vislmdb.pack_lmdb(db, mp4s)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in db.iterdir()}
    vislmdb.list_lmdb(db)
    v = vislmdb.VideoLMDB(db)
    v.get("scene0001_00")
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in db.iterdir()} == before


def test_map_size_grows(tmp_path: Path, mp4s: list[Path]) -> None:
    db = tmp_path / "db"
    assert vislmdb.pack_lmdb(db, mp4s, map_size=32 * 1024) == 3
    env = lmdb.open(str(db), readonly=True, lock=False)
    assert env.info()["map_size"] > 32 * 1024
    env.close()
    assert [r["key"] for r in vislmdb.list_lmdb(db)] == [p.stem for p in mp4s]


def _assert_cli_error(cli, args: list, target: Path, *needles: str) -> None:
    r = cli(*args, check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not target.exists()
    if target.parent.exists():
        assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_pack_bad_inputs(tmp_path: Path, mp4s: list[Path], cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    db = out / "db"
    other = tmp_path / "other"
    other.mkdir()
    dup = other / mp4s[0].name
    dup.write_bytes(mp4s[1].read_bytes())
    _assert_cli_error(cli, ["lmdb", "pack", db, *mp4s, dup], db, "duplicate key", "scene0000_00")
    gitkeep = other / ".gitkeep.mp4"
    gitkeep.write_bytes(b"")
    _assert_cli_error(cli, ["lmdb", "pack", db, mp4s[0], gitkeep], db, str(gitkeep))
    _assert_cli_error(cli, ["lmdb", "pack", db, other / "absent.mp4"], db, "absent.mp4")


def test_ls_and_export_bad_inputs(tmp_path: Path, cli) -> None:
    not_db = tmp_path / "not_db"
    not_db.mkdir()
    r = cli("lmdb", "ls", not_db, check=False)
    assert r.returncode == 1 and "not_db" in r.stderr and "data.mdb" in r.stderr
    out = tmp_path / "x" / "export"
    _assert_cli_error(cli, ["lmdb", "export", not_db, out], out, "not_db")


def test_ls_names_undecodable_key(tmp_path: Path, mp4s: list[Path]) -> None:
    db = tmp_path / "db"
    vislmdb.pack_lmdb(db, mp4s[:1])
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(b"scene9999_00", b"garbage")
    env.close()
    with pytest.raises(ClipbertError, match="scene9999_00"):
        vislmdb.list_lmdb(db)


def opened(v: vislmdb.VideoLMDB) -> bool:
    """Whether this process holds an open environment for the LMDB (the lazy open)."""
    cached = vislmdb._ENVS.get(str(v.lmdb_dir.resolve()))
    return cached is not None and cached[1] == os.getpid()


def test_video_lmdb_access(tmp_path: Path, mp4s: list[Path]) -> None:
    db = tmp_path / "db"
    vislmdb.pack_lmdb(db, mp4s)
    v = vislmdb.VideoLMDB(db)
    assert not opened(v)  # nothing opened until first use
    assert v.get("scene0002_00") == mp4s[2].read_bytes()
    assert opened(v)
    assert v.keys() == ["scene0000_00", "scene0001_00", "scene0002_00"]
    assert "scene0001_00" in v and "scene0009_00" not in v and 3 not in v
    assert len(v) == 3
    with pytest.raises(ClipbertError, match=r"db: no video 'scene0009_00' in this LMDB"):
        v.get("scene0009_00")
    clone = pickle.loads(pickle.dumps(v))  # what a spawn-started worker receives
    assert clone.get("scene0000_00") == mp4s[0].read_bytes()
    second = vislmdb.VideoLMDB(db)  # e.g. train and val datasets on one LMDB
    assert second.get("scene0001_00") == mp4s[1].read_bytes()
    assert len(vislmdb.list_lmdb(db)) == 3 and v.get("scene0000_00")
    vislmdb.pack_lmdb(db, mp4s[1:2])  # rebuilt while open: readers see the new files
    assert v.keys() == ["scene0001_00"]
    with pytest.raises(ClipbertError, match="no data.mdb"):
        vislmdb.VideoLMDB(tmp_path / "missing")


def test_video_lmdb_reopens_after_fork(tmp_path: Path, mp4s: list[Path]) -> None:
    db = tmp_path / "db"
    vislmdb.pack_lmdb(db, mp4s)
    v = vislmdb.VideoLMDB(db)
    v.get("scene0000_00")  # opened in the parent before the fork: the known hazard
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's environment
        os.close(r)
        ok = not opened(v) and v.get("scene0001_00") == mp4s[1].read_bytes() and opened(v)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"
