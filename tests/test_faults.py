"""Faults that real runs meet (issue 28): a file that is not a video, a full disk, a read-only
file system, denied permission, an I/O error, a writer killed outright.

Each says so in one line naming the path, exits non-zero, leaves no temporary, and keeps the
last good output (or a plain rerun restores it identically). Full and read-only file systems
are small tmpfs mounts, made where the tests run as root and skipped, naming why, elsewhere.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import cli_env
from PIL import Image
from test_video import write_coded

from clipbert import video, vislmdb
from clipbert.errors import ClipbertError, MachineError
from clipbert.fsutil import atomic_dir, atomic_path, file_sha256, remove_stale_temporaries


def clipbert(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipbert", *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), cwd=cwd)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp-*"))


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- a small file system of our own -----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`tmpfs(bytes)` mounts a tmpfs of that size and returns its folder; unmounted after."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a full or read-only disk needs a tmpfs mount, which needs root")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill `folder`'s file system up to `leave` free bytes with one file, returned."""
    filler = folder / "filler"
    with open(filler, "ab") as fh:
        while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave:
            try:
                fh.write(b"\0" * min(free - leave, 1 << 20))
                fh.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
    return filler


# ---- not a video --------------------------------------------------------------------------------


def test_what_is_not_a_video_is_refused_naming_it(tmp_path: Path, mp4s: list[Path]) -> None:
    """An image named .mp4 (FFmpeg reads it as a one-frame 25 fps "video"), a file of no format,
    an empty file, an mp4 without a stream, one cut short, and one shorter than a clip."""
    bad = {}
    Image.new("RGB", (16, 16)).save(tmp_path / "jpeg.mp4", format="JPEG")
    bad["jpeg.mp4"] = "not a video but an image (piped jpeg sequence)"
    Image.new("RGB", (16, 16)).save(tmp_path / "png.mp4", format="PNG")
    bad["png.mp4"] = "not a video but an image (piped png sequence)"
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    bad["text.mp4"] = "cannot open video"
    (tmp_path / "empty.mp4").write_bytes(b"")
    bad["empty.mp4"] = "cannot open video"
    with av.open(str(tmp_path / "nostream.mp4"), "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=20)
        s.width = s.height = 16
        c.start_encoding()
    bad["nostream.mp4"] = "no video stream"
    with av.open(str(tmp_path / "whole.mp4"), "w", format="mp4",
                 options={"movflags": "faststart"}) as c:  # the header first, then the frames
        s = c.add_stream("mpeg4", rate=20)
        s.width, s.height, s.pix_fmt, s.bit_rate = 32, 32, "yuv420p", 2_000_000
        for k in range(30):
            noise = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        c.mux(s.encode(None))
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    for name, what in bad.items():
        path = tmp_path / name
        for check in (video.check_video, video.probe_video):
            with pytest.raises(ClipbertError) as e:
                check(path)
            assert str(e.value).startswith(f"{path}: ") and what in str(e.value), (name, e.value)
    for check in (video.check_video, video.probe_video):
        with pytest.raises(ClipbertError, match=r"cut.mp4: truncated: its header lists 30 frame"):
            check(tmp_path / "cut.mp4")
    assert video.check_video(tmp_path / "whole.mp4", 2) == 30
    one = write_coded(tmp_path / "one.mp4", 1, Fraction(20))
    assert video.check_video(one) == 1
    with pytest.raises(ClipbertError, match=rf"^{one}: 1 frame, fewer than one clip \(2 frames\)"):
        video.check_video(one, 2)
    mkv = write_coded(tmp_path / "short.mkv", 3, Fraction(20), fmt="matroska")
    assert video.check_video(mkv, 3) == 3  # no count in Matroska's header: demuxed
    db = tmp_path / "vis_db"
    proc = clipbert("lmdb", "pack", db, mp4s[0], tmp_path / "jpeg.mp4")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"error: {tmp_path / 'jpeg.mp4'}: not a video but an image (piped "
                           "jpeg sequence); put the scene's mp4 here\n")
    assert not db.exists() and temporaries(tmp_path) == []


# ---- failures of the machine, one line each ---------------------------------------------------

STEP = """
import errno, os, sys, types
from pathlib import Path
from clipbert.fsutil import atomic_path
from clipbert.smk import workflow_step

snakemake = types.SimpleNamespace(log=[sys.argv[1]])
code, named = getattr(errno, sys.argv[2]), sys.argv[3] == "named"
with workflow_step(snakemake):
    with atomic_path(Path(sys.argv[4])) as tmp:
        tmp.write_text("half")
        if named:
            raise OSError(code, os.strerror(code), sys.argv[5])
        raise OSError(code, os.strerror(code))
"""


@pytest.mark.parametrize(("code", "named", "words"), [
    ("ENOSPC", False, "no space left on device"),
    ("EDQUOT", False, "disk quota exceeded (no space left on device for this user)"),
    ("EROFS", False, "read-only file system"),
    ("EACCES", True, "permission denied"),
    ("EPERM", True, "permission denied (operation not permitted)"),
    ("EIO", True, "input/output error (a failing disk or network file system)"),
])
def test_a_failure_of_the_machine_is_named_not_called_a_bug(
    tmp_path: Path, code: str, named: bool, words: str
) -> None:
    """In a workflow step: a write that fails names what was being written, a file the machine
    refused names that file; exit 1, no traceback, no temporary."""
    out, log, source = tmp_path / "out.json", tmp_path / "logs/x.log", tmp_path / "in.sens"
    proc = subprocess.run([sys.executable, "-c", STEP, log, code,
                           "named" if named else "anon", out, source],
                          capture_output=True, text=True, env=cli_env())
    line = f"error: {source if named else out}: {words}"
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", line + "\n")
    assert log.read_text().splitlines()[-1] == line and "Traceback" not in log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def exported(tmp_path: Path, fs: Path, mp4s: list[Path]) -> tuple[Path, Path, dict[str, str]]:
    """An LMDB of `mp4s` in `tmp_path`, exported by `clipbert lmdb export` onto the small file
    system `fs`: (the LMDB, the export, what the export holds)."""
    db = tmp_path / "vis_db"
    vislmdb.pack_lmdb(db, mp4s)
    out = fs / "export"
    assert clipbert("lmdb", "export", db, out).returncode == 0
    return db, out, tree(out)


def test_a_full_disk_in_a_stage_keeps_the_last_output(
    tmp_path: Path, tmpfs: Callable[[int], Path], mp4s: list[Path]
) -> None:
    """`clipbert lmdb export` onto a disk that fills: one line naming the output folder, exit 1,
    no temporary, the last export whole; with space again a plain rerun writes the same bytes."""
    fs = tmpfs(1 << 20)
    db, out, last = exported(tmp_path, fs, mp4s)
    filler = fill(fs, leave=4096)
    proc = clipbert("lmdb", "export", db, out)
    assert (proc.returncode, proc.stderr) == (1, f"error: {out}: no space left on device\n")
    assert tree(out) == last and temporaries(fs) == []
    filler.unlink()
    assert clipbert("lmdb", "export", db, out).returncode == 0
    assert tree(out) == last and temporaries(fs) == []


def test_pack_lmdb_checks_free_space_before_it_maps(
    tmp_path: Path, tmpfs: Callable[[int], Path], mp4s: list[Path]
) -> None:
    """On a full file system LMDB's memory map kills the job with SIGBUS and an empty log: the
    pack stops first, naming the folder and the space it needs; the last LMDB survives. When a
    killed pack's leftover is what fills the disk, the next pack removes it first and makes the
    same LMDB."""
    fs = tmpfs(1 << 20)
    db = fs / "vis_db"
    vislmdb.pack_lmdb(db, mp4s)
    digest = vislmdb.content_digest(db)
    filler = fill(fs, leave=16 << 10)
    proc = clipbert("lmdb", "pack", db, *mp4s)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {db}: no space left on device: packing needs ")
    assert f"and {fs} has " in proc.stderr and "free; free some space" in proc.stderr
    assert vislmdb.content_digest(db) == digest and temporaries(fs) == []
    (fs / ".vis_db.tmp-k2j4_x9q").mkdir()  # what fills the disk is a killed pack's leftover
    filler.rename(fs / ".vis_db.tmp-k2j4_x9q/data.mdb")
    assert clipbert("lmdb", "pack", db, *mp4s).returncode == 0
    assert vislmdb.content_digest(db) == digest and temporaries(fs) == []


def test_lmdb_bytes_bounds_what_pack_writes(tmp_path: Path, mp4s: list[Path]) -> None:
    """The free-space check's estimate is an upper bound of the files pack writes."""
    sizes = [p.stat().st_size for p in mp4s]
    for n in (1, 3):
        db = tmp_path / f"db{n}"
        vislmdb.pack_lmdb(db, mp4s[:n])
        used = sum(p.stat().st_size for p in db.iterdir())
        assert used <= vislmdb.lmdb_bytes(sizes[:n]) < used + (256 << 10), (used, n)


def test_a_read_only_file_system_is_named(
    tmp_path: Path, tmpfs: Callable[[int], Path], mp4s: list[Path]
) -> None:
    fs = tmpfs(1 << 20)
    db, out, last = exported(tmp_path, fs, mp4s)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    proc = clipbert("lmdb", "export", db, out)
    assert (proc.returncode, proc.stderr) == (1, f"error: {out}: read-only file system\n")
    assert tree(out) == last


def test_torch_save_on_a_full_disk_says_no_space(tmpfs: Callable[[int], Path]) -> None:
    """torch.save's zip writer reports a full disk as `[enforce fail at inline_container.cc]`
    or `file write failed`, without an errno: it is named as no space left, and the last
    model file stays."""
    import torch

    fs = tmpfs(1 << 20)
    model = fs / "model.pt"
    with atomic_path(model) as tmp:
        torch.save({"w": torch.zeros(16)}, tmp)
    last = file_sha256(model)
    with pytest.raises(MachineError) as e, atomic_path(model) as tmp:
        torch.save({"w": torch.zeros(1 << 19)}, tmp)  # 2 MiB on a 1 MiB disk
    assert str(e.value).startswith(f"{model}: no space left on device (torch.save: ")
    assert len(str(e.value).splitlines()) == 1
    assert file_sha256(model) == last and temporaries(fs) == []


def test_a_killed_writers_temporaries_go_with_the_next_run(
    tmp_path: Path, mp4s: list[Path]
) -> None:
    """SIGKILL (or SIGBUS) leaves `.vis_db.tmp-*` beside the LMDB; the next pack removes it and
    the form earlier versions left, and keeps a live writer's."""
    db = tmp_path / "vis_db"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from clipbert.fsutil import atomic_dir\n"
         "with atomic_dir(Path(sys.argv[1])) as tmp:\n"
         "    (tmp / 'data.mdb').write_bytes(b'half')\n    time.sleep(60)\n", str(db)],
        env=cli_env())
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".vis_db.tmp-*/data.mdb")):
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    killed = temporaries(tmp_path)
    assert [p.name.startswith(f".vis_db.tmp-{writer.pid}-") for p in killed] == [True]
    (tmp_path / ".vis_db.tmp-k2j4_x9q").mkdir()  # before pids were in the names
    live = tmp_path / f".vis_db.tmp-{os.getpid()}-abc"  # this test is alive
    live.mkdir()
    proc = clipbert("lmdb", "pack", db, *mp4s)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(tmp_path) == [live]
    assert remove_stale_temporaries(db) == [] and live.is_dir()


def test_a_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    """Any exception inside atomic_dir or atomic_path removes what it had written."""
    for atomic in (atomic_dir, atomic_path):
        with pytest.raises(ValueError), atomic(tmp_path / "out") as tmp:
            (tmp / "x" if atomic is atomic_dir else tmp).write_text("half")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_in_the_workflow_then_a_plain_rerun(
    tmp_path: Path, tmpfs: Callable[[int], Path]
) -> None:
    """The demo's work/ on a full disk: the job says `no space left on device` with the path,
    not "a bug", and Snakemake stops; once space is freed a plain rerun makes the video LMDB and
    leaves no temporary anywhere."""
    from test_workflow import SMALL, snakemake

    fs = tmpfs(64 << 20)
    (tmp_path / "run").mkdir()
    (tmp_path / "run/work").symlink_to(fs)
    filler = fill(fs)
    proc = snakemake(tmp_path / "run", "work/demo/vis_db", config=SMALL, check=False)
    assert proc.returncode == 1
    assert ("error: work/demo/source/scans/scene0000_00/scene0000_00.sens: no space left on "
            "device\n" in proc.stderr), proc.stderr
    assert "a bug" not in proc.stderr and "Traceback" not in proc.stderr
    filler.unlink()
    snakemake(tmp_path / "run", "work/demo/vis_db", config=SMALL)
    assert len(vislmdb.VideoLMDB(fs / "demo/vis_db")) == 6
    assert temporaries(tmp_path) == [] and temporaries(fs) == []


def test_the_command_line_names_a_failure_of_the_machine(monkeypatch, capsys) -> None:
    """An OSError of the machine that reaches `clipbert`'s top, from any stage, is one line
    naming the file, exit 1; any other OSError is still a bug, with its traceback."""
    from clipbert import cli

    def failing(path: str) -> list:
        raise OSError(errno.EIO, os.strerror(errno.EIO), f"{path}/data.mdb")

    monkeypatch.setattr(vislmdb, "list_lmdb", failing)
    assert cli.main(["lmdb", "ls", "db"]) == 1
    assert capsys.readouterr().err == ("error: db/data.mdb: input/output error (a failing disk "
                                       "or network file system)\n")

    def other(path: str) -> list:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)

    monkeypatch.setattr(vislmdb, "list_lmdb", other)
    with pytest.raises(OSError, match="File name too long"):
        cli.main(["lmdb", "ls", "db"])


def test_an_lmdb_write_error_is_one_line(tmp_path: Path, mp4s: list[Path], monkeypatch) -> None:
    """LMDB reports a failed write with the errno's words only: a failure of the machine is
    named as such, any other names the LMDB; neither leaves a temporary."""
    import lmdb

    for text, want, words in (
        ("mdb_txn_commit: Input/output error", MachineError, "input/output error"),
        ("mdb_put: MDB_CORRUPTED: Located page was wrong type", ClipbertError,
         "cannot write the LMDB"),
    ):
        def failing(env: object, items: object, text: str = text) -> None:
            raise lmdb.Error(text)

        monkeypatch.setattr(vislmdb, "_put_batch", failing)
        with pytest.raises(ClipbertError) as e:
            vislmdb.pack_lmdb(tmp_path / "db", mp4s)
        assert type(e.value) is want and str(e.value).startswith(f"{tmp_path / 'db'}: {words}")
        assert text in str(e.value) and list(tmp_path.iterdir()) == []


def test_a_job_killed_by_sigbus_says_so_in_its_log(tmp_path: Path) -> None:
    """LMDB's memory map on a full disk kills a job with SIGBUS: its log says so and where,
    instead of staying empty."""
    log = tmp_path / "logs/x.log"
    script = ("import os, signal, sys, types\nfrom clipbert.smk import workflow_step\n"
              "with workflow_step(types.SimpleNamespace(log=[sys.argv[1]])):\n"
              "    os.kill(os.getpid(), signal.SIGBUS)\n")
    proc = subprocess.run([sys.executable, "-c", script, log], capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == -signal.SIGBUS
    assert "Fatal Python error: Bus error" in log.read_text(), log.read_text()
