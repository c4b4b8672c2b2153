"""Content digests: what ties reused work (resumable training state) to its inputs."""

from __future__ import annotations

import os

from test_video import make_scene

from clipbert import fsutil, video, vislmdb


def test_file_digest_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"a" * 1000)
    calls = []
    real = fsutil.file_sha256
    monkeypatch.setattr(fsutil, "file_sha256", lambda p: calls.append(p) or real(p))
    cache: dict = {}
    first = fsutil.content_digest(path, cache)
    assert fsutil.content_digest(path, cache) == first and len(calls) == 1
    path.write_bytes(b"b" * 1000)  # same size, new content and mtime
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fsutil.content_digest(path, cache) != first and len(calls) == 2
    assert fsutil.content_digest(path) == fsutil.content_digest(path, {})  # no cache: same value


def test_folder_digest_covers_names_and_contents(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("a\nb\n")
    (d / "config.json").write_text("{}")
    first = fsutil.content_digest(d)
    (d / "config.json").rename(d / "other.json")
    renamed = fsutil.content_digest(d)
    (d / "other.json").write_text("{ }")
    assert len({first, renamed, fsutil.content_digest(d)}) == 3


def test_lmdb_digest_follows_keys_and_values_not_files(tmp_path):
    a, b = (tmp_path / f"scene000{i}_00.mp4" for i in (0, 1))
    for out, n in ((a, 3), (b, 5)):
        video.encode_video(make_scene(tmp_path / out.stem, n=n, extras=False), out, size=(32, 32))
    vislmdb.pack_lmdb(tmp_path / "one", [a, b])
    vislmdb.pack_lmdb(tmp_path / "two", [b, a], map_size=64 << 20)  # other order, other map
    assert vislmdb.content_digest(tmp_path / "one") == vislmdb.content_digest(tmp_path / "two")
    vislmdb.pack_lmdb(tmp_path / "three", [a])
    assert vislmdb.content_digest(tmp_path / "three") != vislmdb.content_digest(tmp_path / "one")
