"""SIGTERM is a normal way to stop (SLURM at the time limit, Snakemake on cancel): each long stage
stopped mid-way exits 143 with one line, leaves no temporary beside its target, leaves the target
absent or the previous one whole, and a rerun gives valid output."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env
from PIL import Image

from clipbert import frames, sens, signals, sqa, video, vislmdb
from clipbert.fsutil import atomic_dir, atomic_path
from clipbert.sens import SensFrame, SensHeader

# ---- helpers ---------------------------------------------------------------------------------


def default_sigint() -> None:
    """SIGINT back to its default in a child: a test suite started in the background of a
    shell without job control inherits SIGINT ignored, and Python then keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt in this process too, whatever the suite inherited."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def start(*args: str | Path, cwd: Path) -> tuple[subprocess.Popen, Path]:
    """`python -m clipbert ARGS` in the background; stderr to a file (a pipe could fill up)."""
    err = cwd / f"stderr-{time.monotonic_ns()}.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "clipbert", *map(str, args)],
                                env={**cli_env(), "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=fh,
                                preexec_fn=default_sigint)
    return proc, err


def temporaries(target: Path) -> list[Path]:
    """What `fsutil.atomic_*` leaves beside `target` while it works (`.NAME.tmp-XXXX`)."""
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


def stop_mid_way(proc: subprocess.Popen, err: Path, mid_way: Callable[[], bool],
                 sig: int = signal.SIGTERM, timeout: float = 120) -> int:
    """Wait until `mid_way()` holds, freeze the process and check it still holds (so the signal
    lands mid-way, not after the end), send `sig`, let it go on; returns its exit status."""
    deadline = time.monotonic() + timeout
    while not mid_way():
        if proc.poll() is not None:
            pytest.fail(f"ended (exit status {proc.returncode}) before it was mid-way:\n"
                        f"{err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("never mid-way")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert mid_way(), "the stage got past the point before it could be stopped: make it longer"
        os.kill(proc.pid, sig)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return proc.wait(timeout=120)


def assert_stopped(rc: int, err: Path, sig: int = signal.SIGTERM) -> None:
    """Exit status 128 + signal and one line saying so, no traceback."""
    text = err.read_text()
    assert rc == 128 + sig, text
    assert "Traceback" not in text, text
    assert text.splitlines()[-1] == ("error: stopped by SIGTERM" if sig == signal.SIGTERM
                                     else "error: interrupted (SIGINT)"), text


def jpeg(w: int, h: int, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_scan(path: Path, n: int, w: int = 64, h: int = 48) -> None:
    """`n` frames sharing one small JPEG: cheap to write, long to export one file at a time."""
    colour = jpeg(w, h)
    depth = sens.encode_depth(np.zeros((h, w), np.uint16))
    head = SensHeader(color_width=w, color_height=h, depth_width=w, depth_height=h, num_frames=n)
    sens.write_sens(path, head, (SensFrame(np.eye(4, dtype=np.float32), 1000 * i, 1000 * i,
                                           colour, depth) for i in range(n)))


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- the mechanism ---------------------------------------------------------------------------


def test_terminated_is_not_an_exception_and_exits_143() -> None:
    e = signals.Terminated()
    assert not isinstance(e, Exception) and isinstance(e, BaseException)
    assert (e.exit_status, str(e)) == (143, "stopped by SIGTERM")


def test_sigterm_raises_inside_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.Terminated), signals.sigterm_unwinds():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_ignored_sigterm_stays_ignored() -> None:
    """`trap '' TERM` (or nohup-like wrappers) must keep working."""
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals.sigterm_unwinds():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old)


def test_held_signals_land_after_the_block() -> None:
    steps = []
    with pytest.raises(signals.Terminated), signals.sigterm_unwinds():
        with signals.held():
            signal.raise_signal(signal.SIGTERM)
            steps.append("still inside")
            signal.raise_signal(signal.SIGINT)  # both kinds are held, each delivered once
            steps.append("and on")
        steps.append("not reached")
    assert steps == ["still inside", "and on"]
    with pytest.raises(KeyboardInterrupt), signals.held():
        signal.raise_signal(signal.SIGINT)
        steps.append("SIGINT held too")
    assert steps[-1] == "SIGINT held too"


def test_a_worker_ending_with_the_stop_does_not_replace_it(monkeypatch) -> None:
    """A SIGTERM to the process group ends the DataLoader workers too, and their SIGCHLD reaches
    torch's handler while `Terminated` unwinds: the stop stays `Terminated` (one line, exit 143),
    not torch's "DataLoader worker ... is killed by signal" (seen once in the rerun table's
    test). A worker that dies without a SIGTERM to this process is still torch's error. The
    workers are `sleep`s registered with torch as DataLoader workers, under torch's own handler."""
    import torch
    from torch.utils.data._utils import signal_handling

    old = signal.getsignal(signal.SIGCHLD)
    monkeypatch.setattr(signal_handling, "_SIGCHLD_handler_set", False)  # install it here
    workers: list[subprocess.Popen] = []

    def worker() -> subprocess.Popen:
        workers.append(subprocess.Popen(["sleep", "60"]))
        torch._C._set_worker_pids(id(workers[-1]), (workers[-1].pid,))
        return workers[-1]

    def end(w: subprocess.Popen) -> None:
        """SIGTERM, and its end awaited without reaping it (torch's handler looks it up)."""
        w.send_signal(signal.SIGTERM)
        os.waitid(os.P_PID, w.pid, os.WEXITED | os.WNOWAIT)

    try:
        signal_handling._set_SIGCHLD_handler()
        with pytest.raises(RuntimeError, match="is killed by signal: Terminated"):
            with signals.sigterm_unwinds():
                end(worker())
        torch._C._remove_worker_pids(id(workers[-1]))
        with pytest.raises(signals.Terminated), signals.sigterm_unwinds():
            try:
                signal.raise_signal(signal.SIGTERM)
            finally:  # unwinding: the worker's end arrives
                end(worker())
    finally:
        torch._C._remove_worker_pids(id(workers[-1]))
        for w in workers:
            w.kill()
            w.wait()
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.parametrize("kind", ["dir", "path"])
def test_a_stop_while_renaming_into_place_lands_after_it(tmp_path: Path, kind: str) -> None:
    """SIGTERM during the swap: the new output is complete, the old one gone, no temporary."""
    target = tmp_path / "out"
    if kind == "dir":
        target.mkdir()
        (target / "old.txt").write_text("old")
    else:
        target.write_text("old")
    real = os.replace

    def replace_under_fire(src, dst):
        signal.raise_signal(signal.SIGTERM)
        return real(src, dst)

    with pytest.raises(signals.Terminated), signals.sigterm_unwinds():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "replace", replace_under_fire)
            if kind == "dir":
                with atomic_dir(target) as tmp:
                    (tmp / "new.txt").write_text("new")
            else:
                with atomic_path(target) as tmp:
                    tmp.write_text("new")
    if kind == "dir":
        assert listing(target) == {"new.txt": b"new"}
    else:
        assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_cli_does_not_leave_sigterm_changed(tmp_path: Path) -> None:
    """`main()` installs its handler for the command only (tests call it in-process)."""
    from clipbert.cli import main

    before = signal.getsignal(signal.SIGTERM)
    make_scan(tmp_path / "a.sens", 2)
    assert main(["sens", "info", str(tmp_path / "a.sens")]) == 0
    assert signal.getsignal(signal.SIGTERM) == before


# ---- each long stage -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sens_export(tmp_path: Path, sig: int) -> None:
    scan, out = tmp_path / "big.sens", tmp_path / "frames"
    make_scan(scan, 6000)
    frames.export_frames(scan, out, stride=1000)
    before = listing(out)
    proc, err = start("sens", "export", scan, out, "--stride", "1", cwd=tmp_path)
    rc = stop_mid_way(proc, err, lambda: any(
        len(os.listdir(t)) > 100 for t in temporaries(out)), sig=sig)
    assert_stopped(rc, err, sig)
    assert temporaries(out) == []
    assert listing(out) == before  # the previous export, whole
    index = frames.export_frames(scan, out, stride=1)
    assert len(index["frames"]) == 6000 == len(list(out.glob("*.color.jpg")))
    assert json.loads((out / "index.json").read_text()) == index


def test_video_encode(tmp_path: Path) -> None:
    scan, out = tmp_path / "a.sens", tmp_path / "a.mp4"
    make_scan(scan, 400, 320, 240)
    frames.export_frames(scan, tmp_path / "few", stride=100)
    frames.export_frames(scan, tmp_path / "all", stride=1)
    video.encode_video(tmp_path / "few", out, size=(64, 64))
    before = out.read_bytes()
    proc, err = start("video", "encode", tmp_path / "all", out, "--size", "224x224", cwd=tmp_path)
    rc = stop_mid_way(proc, err, lambda: any(t.stat().st_size > 10_000 for t in temporaries(out)))
    assert_stopped(rc, err)
    assert temporaries(out) == []
    assert out.read_bytes() == before
    video.encode_video(tmp_path / "all", out, size=(224, 224))
    assert video.probe_video(out)["n_frames"] == 400


def padded_videos(folder: Path, n: int, pad: int = 8 << 20) -> list[Path]:
    """`n` names for one short mp4 followed by `pad` zero bytes (a final mp4 box of size 0 runs to
    the end of the file, so it stays a valid video): a slow pack from a cheap input."""
    scan = folder / "a.sens"
    make_scan(scan, 4)
    frames.export_frames(scan, folder / "f", stride=1)
    video.encode_video(folder / "f", folder / "v.mp4", size=(32, 32))
    with open(folder / "v.mp4", "ab") as fh:
        fh.truncate(fh.tell() + pad)
    paths = []
    for i in range(n):
        paths.append(folder / f"scene{i:04d}_00.mp4")
        os.link(folder / "v.mp4", paths[-1])
    return paths


def test_lmdb_pack(tmp_path: Path) -> None:
    out = tmp_path / "vis_db"
    mp4s = padded_videos(tmp_path, 30)
    small = tmp_path / "small"
    small.mkdir()
    vislmdb.pack_lmdb(out, padded_videos(small, 2, pad=0))
    before = listing(out)
    proc, err = start("lmdb", "pack", out, *mp4s, cwd=tmp_path)
    rc = stop_mid_way(proc, err, lambda: any(
        (t / "data.mdb").exists() and (t / "data.mdb").stat().st_size > 20 << 20
        for t in temporaries(out)))
    assert_stopped(rc, err)
    assert temporaries(out) == []
    assert listing(out) == before
    assert vislmdb.pack_lmdb(out, mp4s) == 30
    rows = vislmdb.list_lmdb(out)
    assert len(rows) == 30 and {r["n_frames"] for r in rows} == {4}


def write_sqa(folder: Path, n: int, situation: str = "I am standing by the door.") -> None:
    """An SQA3D-layout folder with `n` train/val/test questions each (long situations, so that
    reading takes a while), all answered from a two-word vocabulary."""
    (folder / "balanced").mkdir(parents=True)
    answers = ["left", "right"]
    (folder / "answer_dict.json").write_text(json.dumps(
        [{a: i for i, a in enumerate(answers)}, {str(i): a for i, a in enumerate(answers)}]))
    for k, split in enumerate(sqa.SPLITS):
        qs, anns = [], []
        for i in range(n):
            qid, scene = k * 10_000_000 + i, f"scene{i % 500:04d}_00"
            qs.append({"question_id": qid, "scene_id": scene, "situation": situation,
                       "question": "Which way is the window?"})
            anns.append({"question_id": qid, "scene_id": scene,
                         "answers": [{"answer": answers[i % 2]}]})
        (folder / "balanced" / sqa.questions_name(split)).write_text(json.dumps({"questions": qs}))
        (folder / "balanced" / sqa.annotations_name(split)).write_text(
            json.dumps({"annotations": anns}))


def _has_open(pid: int, paths: list[Path]) -> bool:
    """Whether process `pid` has one of `paths` open (Linux: /proc/PID/fd)."""
    fd_dir, names = Path(f"/proc/{pid}/fd"), {str(p) for p in paths}
    try:
        return any(os.readlink(fd_dir / fd) in names for fd in os.listdir(fd_dir))
    except OSError:
        return False


@pytest.mark.parametrize("phase", ["reading", "writing"])
def test_sqa_convert(tmp_path: Path, phase: str) -> None:
    """Stopped while it reads (no temporary yet) or while it writes its outputs one after another
    (several temporaries): every previous output stays as it was."""
    small, big, out = tmp_path / "small", tmp_path / "big", tmp_path / "sqa"
    write_sqa(small, 10)
    write_sqa(big, 25_000, situation="I am standing by the door. " * 10)
    sqa.convert(small, out)
    before = listing(out)
    proc, err = start("sqa", "convert", big, out, cwd=tmp_path)
    inputs = sorted((big / "balanced").iterdir())
    if phase == "reading":
        def mid_way() -> bool:
            return _has_open(proc.pid, inputs)
    else:
        def mid_way() -> bool:
            return any(temporaries(out / name) for name in before)
    rc = stop_mid_way(proc, err, mid_way)
    assert_stopped(rc, err)
    assert [p for p in out.iterdir() if p.name.startswith(".")] == []
    assert listing(out) == before
    stats = sqa.convert(big, out)
    assert stats["train"]["questions"] == 25_000
    assert len((out / "test.jsonl").read_text().splitlines()) == 25_000


# ---- training --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict[str, Path]:
    from test_train import make_data

    return make_data(tmp_path_factory.mktemp("demo"))


def train_command(ds: dict[str, Path], out_dir: Path, **overrides) -> list[str]:
    from test_train import SMALL

    from clipbert import distributed

    return ["train", *distributed.train_args(
        "tiny", {**SMALL, "epochs": 2, "checkpoint_every": 2, "val_every": 0.5, **overrides},
        ds["data_dir"], ds["lmdb_dir"], out_dir / "model.pt", out_dir / "state",
        out_dir / "metrics.jsonl", ds["vocab"])]


def run_in_process(args: list[str]) -> None:
    """`clipbert ARGS` in this process, on one thread as the subprocesses (OMP_NUM_THREADS=1):
    the same float results, without paying for another torch import."""
    import torch

    from clipbert.cli import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(ds, tmp_path_factory) -> Path:
    """The uninterrupted run the stopped ones must match."""
    ref = tmp_path_factory.mktemp("reference")
    run_in_process(train_command(ds, ref))
    return ref


def checkpoint_step(last: Path) -> int:
    import torch

    try:
        return torch.load(last, map_location="cpu", weights_only=False)["step"]
    except (OSError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_train_resumes_bit_identically(ds, reference: Path, tmp_path: Path, workers: int,
                                       capsys: pytest.CaptureFixture) -> None:
    """SIGTERM after a checkpoint, between steps: the rerun resumes from that checkpoint and
    ends with the weights and metrics of an uninterrupted run, bit for bit. With DataLoader
    workers too (torch's own SIGTERM handler in each worker is left alone)."""
    import torch

    run = tmp_path / "stopped"
    args = train_command(ds, run, num_workers=workers)
    proc, err = start(*args, cwd=tmp_path)
    last = run / "state" / "last.pt"
    seen: dict[int, int] = {}

    def mid_way() -> bool:
        """A checkpoint at step 4 or later is written, the model not yet."""
        stamp = last.stat().st_mtime_ns if last.exists() else 0
        if stamp not in seen:  # written atomically: a new stamp is a whole file
            seen[stamp] = checkpoint_step(last) if stamp else 0
        return seen[stamp] >= 4 and not (run / "model.pt").exists()

    rc = stop_mid_way(proc, err, mid_way)
    assert_stopped(rc, err)
    step = checkpoint_step(last)
    assert 4 <= step < 16
    assert not (run / "model.pt").exists()
    for target in (run / "model.pt", run / "metrics.jsonl", last, run / "state" / "best.pt"):
        assert temporaries(target) == [], target
    capsys.readouterr()
    run_in_process(args)
    assert f"resuming from {last} at step {step}/16" in capsys.readouterr().out
    a, b = (torch.load(d / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
            for d in (reference, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "examples_per_s"}
             for line in (d / "metrics.jsonl").open()] for d in (reference, run)]
    assert rows[0] == rows[1] and len(rows[0]) == 16


@pytest.mark.slow
def test_sigterm_to_the_train_rule_stops_its_torchrun_workers(ds, tmp_path: Path) -> None:
    """The train rule with several GPUs starts torchrun: stopping the rule's process with SIGTERM
    (SLURM's time limit, Snakemake's cancel) stops torchrun and its workers too."""
    from clipbert import distributed

    run = tmp_path / "ddp"
    args = train_command(ds, run, epochs=20)[1:]
    code = ("import sys; from clipbert import distributed, signals\n"
            "try:\n"
            "    with signals.sigterm_unwinds():\n"
            f"        distributed.launch_torchrun(2, {args!r}, log={str(tmp_path / 'log')!r})\n"
            "except signals.Terminated as e:\n"
            "    sys.exit(e.exit_status)\n")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=fh,
                                env={**cli_env(), "OMP_NUM_THREADS": "1"})
    last = run / "state" / "last.pt"

    def workers() -> list[int]:
        """Processes whose command line names this run's state folder (torchrun's workers)."""
        found = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and str(run / "state") in (d / "cmdline").read_text():
                    found.append(int(d.name))
            except OSError:
                continue
        return found

    rc = stop_mid_way(proc, err, lambda: last.exists() and len(workers()) >= 2, timeout=240)
    assert rc == 143, err.read_text()
    deadline = time.monotonic() + 30
    while workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers() == [], "torchrun workers outlived the train rule's process"
    # torchrun itself was told (SIGKILL would leave the workers to notice on their own)
    assert "Received 15 death signal, shutting down workers" in (tmp_path / "log").read_text()
    assert distributed.torchrun_command(2, args)[:3] == [sys.executable, "-m",
                                                          "torch.distributed.run"]
