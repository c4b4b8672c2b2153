"""The training loop (clipbert.train): presets, schedule, resumable bit-identical runs, DDP."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env

from clipbert import config, data, demo, distributed, frames, optim, sqa, train, video, vislmdb
from clipbert.errors import ClipbertError
from clipbert.qa import TrainFiles

# A model small enough for a few seconds of CPU training: 64 px frames reach a 2x2 grid, then
# one visual token after the grid encoder's pooling.
SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_heads": 2,
         "max_img_size": 64, "batch_size": 8, "epochs": 2, "log_every": 1}


def make_data(root: Path, scenes: int = 6, n_frames: int = 30,
              video_preset: str = "faithful") -> dict[str, Path]:
    """The demo data set, end to end through the real stages, small: 64 train, 16 val, 16 test
    questions over 6 synthetic scenes of 30 frames. The `improved` video preset needs no OpenCV
    (what a bare GPU machine has)."""
    demo.make_demo(root / "demo", scenes=scenes, frames=n_frames)
    mp4s = []
    for s in demo.scene_ids(scenes):
        frames.export_frames(root / f"demo/scans/{s}/{s}.sens", root / f"frames/{s}", stride=10)
        video.encode_video(root / f"frames/{s}", root / f"videos/{s}.mp4", size=(64, 64),
                           preset=video_preset)
        mp4s.append(root / f"videos/{s}.mp4")
    vislmdb.pack_lmdb(root / "vis_db", mp4s)
    sqa.convert(root / "demo/sqa_task", root / "sqa")
    for split, keep in (("train", 64), ("val", 16), ("test", 16)):  # round step counts
        path = root / "sqa" / f"{split}.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    return {"data_dir": root / "sqa", "lmdb_dir": root / "vis_db",
            "vocab": root / "demo" / "vocab.txt"}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a loaded 2-core machine more threads only spin (8x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def env1() -> dict[str, str]:
    return {**cli_env(), "OMP_NUM_THREADS": "1"}


def cli_train(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "clipbert", "train", *args], env=env1(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_train(ds: dict[str, Path], out_dir: Path, preset: str = "tiny", **overrides):
    """`train.train` in this process with the SMALL overrides."""
    cfg = config.make_config(preset, {**SMALL, **overrides})
    result = train.train(cfg, ds["data_dir"], ds["lmdb_dir"], out_dir / "model.pt",
                         out_dir / "state", metrics=out_dir / "metrics.jsonl", vocab=ds["vocab"])
    return result, [json.loads(line) for line in (out_dir / "metrics.jsonl").open()]


def cli_train_args(ds: dict[str, Path], out_dir: Path, overrides: dict) -> list[str]:
    return distributed.train_args("tiny", {**SMALL, **overrides}, ds["data_dir"], ds["lmdb_dir"],
                            out_dir / "model.pt", out_dir / "state", out_dir / "metrics.jsonl",
                            ds["vocab"])


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---- configuration, schedule, parameter groups, batches ---------------------------------------


def test_faithful_preset_is_the_sqa3d_recipe() -> None:
    cfg = config.make_config("faithful")
    assert (cfg.lr, cfg.cnn_lr, cfg.betas, cfg.adam_eps, cfg.weight_decay) == (
        5e-5, 5e-5, (0.9, 0.98), 1e-6, 1e-3)
    assert (cfg.warmup_ratio, cfg.grad_clip, cfg.batch_size, cfg.epochs, cfg.seed) == (
        0.1, 5.0, 16, 10, 0)
    assert (cfg.train_n_clips, cfg.inference_n_clips, cfg.num_frm, cfg.sample_fps) == (8, 1, 2, 2)
    assert (cfg.max_img_size, cfg.max_txt_len, cfg.pad_to_max) == (448, 100, True)
    assert not (cfg.bf16 or cfg.reshuffle or cfg.select_best)
    assert cfg.model.num_labels == 1500 and cfg.model.score_agg_func == "lse"
    imp = config.make_config("improved")
    assert imp.bf16 and imp.reshuffle and imp.select_best and imp.inference_n_clips > 1
    assert imp.model == cfg.model and imp.lr == cfg.lr


def test_unknown_preset_or_setting_is_an_error() -> None:
    with pytest.raises(ClipbertError, match="unknown preset 'huge'"):
        config.make_config("huge")
    with pytest.raises(ClipbertError, match="unknown training setting 'model.layers'"):
        config.make_config("tiny", {"model.layers": 3})
    assert config.make_config("tiny", {"model.num_layers": 3}).model.num_layers == 3


def test_fingerprint_ignores_logging_and_speed_knobs() -> None:
    base = config.make_config("tiny")
    assert config.settings_fingerprint(base) == config.settings_fingerprint(
        config.make_config("tiny", {"log_every": 7, "checkpoint_every": 3, "num_workers": 2,
                                   "channels_last": False, "compile": True}))
    assert config.settings_fingerprint(base) != config.settings_fingerprint(
        config.make_config("tiny", {"lr": 1e-3}))


def test_distributed_backend_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("CLIPBERT_DIST_BACKEND", "mpi")
    with pytest.raises(ClipbertError, match="CLIPBERT_DIST_BACKEND='mpi': nccl or gloo"):
        distributed.setup_distributed()
    monkeypatch.setenv("CLIPBERT_DIST_BACKEND", "gloo")
    d, device = distributed.setup_distributed()
    assert d == distributed.Dist()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_epochs_schedule_warms_up_then_decays_to_zero() -> None:
    def f(s: int) -> float:
        return optim.epochs_factor(s, 100, 0.1)

    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [f(s) for s in (10, 55, 99, 100)] == pytest.approx([1.0, 0.5, 1 / 90, 0.0])


def test_param_groups_split_cnn_transformer_and_decay() -> None:
    cfg = config.make_config("tiny", {**SMALL, "cnn_lr": 1e-3, "lr": 2e-4,
                                     "model.freeze_stem": True, "model.num_labels": 5})
    from clipbert.model import ClipBert

    model = ClipBert(cfg.model)
    groups = model.param_groups(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            seen.add(n)
            assert g["lr"] == (1e-3 if n.startswith("cnn.") else 2e-4), n
            assert g["name"] == ("cnn" if n.startswith("cnn.") else "transformer")
            norm = "LayerNorm" in n or ".bn" in n or "downsample.1" in n  # LN and trained BN
            no_decay = n.endswith(".bias") or norm
            assert g["weight_decay"] == (0.0 if no_decay else cfg.weight_decay), n
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert seen == trainable
    assert not any(n.startswith(("cnn.backbone.conv1", "cnn.backbone.layer1")) for n in seen)


def test_epoch_batches_shuffle_and_shards() -> None:
    faithful = config.make_config("faithful", {"batch_size": 4})
    one = distributed.Dist()
    e0, e1 = (train.epoch_batches(10, e, faithful, one) for e in (0, 1))
    assert e0 == e1  # upstream never reshuffled
    assert sorted(i for b in e0 for i in b) == list(range(10)) and len(e0) == 3
    improved = config.make_config("improved", {"batch_size": 4})
    assert train.epoch_batches(10, 0, improved, one) != train.epoch_batches(10, 1, improved, one)
    half = config.make_config("faithful", {"batch_size": 2})
    shards = [train.epoch_batches(10, 0, half, distributed.Dist(r, 2, r)) for r in (0, 1)]
    for b, s0, s1 in zip(e0, *shards, strict=True):  # same global batches, split between ranks
        assert sorted(s0 + s1) == sorted(b)


def test_torchrun_command_carries_every_setting(tmp_path: Path) -> None:
    args = distributed.train_args("tiny", {"model.hidden_size": 32, "bf16": True}, "d", "l", "o.pt",
                            "st", "m.jsonl", "v.txt")
    cmd = distributed.torchrun_command(4, args)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=4", "-m"]
    assert cmd[6:8] == ["clipbert", "train"]
    from clipbert.cli import _parse_sets, build_parser

    ns = build_parser().parse_args(["train", *args])
    assert (ns.preset, ns.data_dir, ns.lmdb, ns.out, ns.state_dir, ns.metrics, ns.vocab) == (
        "tiny", "d", "l", "o.pt", "st", "m.jsonl", "v.txt")
    assert _parse_sets(ns.set) == {"model.hidden_size": 32, "bf16": True}


# ---- the loop --------------------------------------------------------------------------------


def test_tiny_selects_best_on_val_and_logs_metrics(ds, tmp_path: Path) -> None:
    result, rows = run_train(ds, tmp_path, val_every=0.25)
    assert [r["step"] for r in rows] == list(range(1, 17))
    for r in rows:
        assert {"step", "loss", "lr", "val_acc", "examples_per_s"} <= set(r)
        assert r["loss"] > 0 and r["examples_per_s"] > 0
    assert [r["step"] for r in rows if r["val_acc"] is not None] == [4, 8, 12, 16]
    lr = config.PRESETS["tiny"]["lr"]
    assert rows[0]["lr"] == pytest.approx(lr) and rows[-1]["lr"] == pytest.approx(lr / 15)
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    best = max(r["val_acc"] for r in rows if r["val_acc"] is not None)
    first_best = next(r["step"] for r in rows if r["val_acc"] == best)
    assert model["chosen"] == "best on val" and model["val_accuracy"] == best
    assert model["step"] == first_best and result["best_val_acc"] == best
    assert model["global_batch"] == 8 and model["format"] == "clipbert-native-1"
    # rerunning a finished run trains nothing more and writes the same model
    before = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").unlink()
    run_train(ds, tmp_path, val_every=0.25)
    assert (tmp_path / "model.pt").read_bytes() == before


def test_faithful_keeps_the_final_weights(ds, tmp_path: Path, capsys) -> None:
    result, rows = run_train(ds, tmp_path, preset="faithful", **tiny_model(), epochs=1)
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    assert model["chosen"] == "final" and model["step"] == 8 == rows[-1]["step"]
    assert model["val_accuracy"] == rows[-1]["val_acc"] == result["final_val_acc"]
    assert not (tmp_path / "state" / "best.pt").exists()
    # another setting with the old state folder: not resumed but started over, naming why
    capsys.readouterr()
    _, rows = run_train(ds, tmp_path, preset="faithful", **tiny_model(), epochs=1, lr=1e-3)
    out = capsys.readouterr().out
    assert "not resuming" in out and "(changed: setting lr); training starts over" in out
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert not torch.equal(state_dict(tmp_path / "model.pt")["transformer.classifier.2.weight"],
                           model["state_dict"]["transformer.classifier.2.weight"])


def test_faithful_logs_upstream_rates_and_step_count_and_resumes_exactly(
        ds, tmp_path: Path, monkeypatch, capsys) -> None:
    """64 questions at batch 7 for 1.5 epochs: upstream's ceil(1.5 x 64 / 7) = 14 updates (not
    1.5 x 10), each logged at the rate upstream's formula gives it, by upstream's AdamW; a run that
    dies after a checkpoint resumes to the same weights, bit for bit, and keeps the same models
    of every `keep_every`-th update."""
    settings = {**tiny_model(), "batch_size": 7, "epochs": 1.5, "val_every": 1.0,
                "checkpoint_every": 3, "keep_every": 5}
    result, rows = run_train(ds, tmp_path / "ref", preset="faithful", **settings)
    cfg = config.make_config("faithful", {**SMALL, **settings})
    assert result["steps"] == 14 and [r["step"] for r in rows] == list(range(1, 15))
    for r in rows:  # W = int(1.4) = 1: no warm-up, the last update at 1e-8
        assert r["lr"] == pytest.approx(optim.upstream_rate(cfg.lr, r["step"], 14, 0.1),
                                        rel=1e-12)
        assert r["cnn_lr"] == pytest.approx(optim.upstream_rate(cfg.cnn_lr, r["step"], 14, 0.1),
                                            rel=1e-12)
    assert rows[-1]["lr"] == 1e-8 and rows[0]["lr"] == cfg.lr
    real_step, calls = train.train_step, []

    def dies(run: train.Run, *args):
        assert type(run.optimizer) is optim.UpstreamAdamW
        calls.append(1)
        if len(calls) == 8:
            raise RuntimeError("killed")
        return real_step(run, *args)

    monkeypatch.setattr(train, "train_step", dies)
    with pytest.raises(RuntimeError, match="killed"):
        run_train(ds, tmp_path / "killed", preset="faithful", **settings)
    monkeypatch.setattr(train, "train_step", real_step)
    capsys.readouterr()
    run_train(ds, tmp_path / "killed", preset="faithful", **settings)
    assert "at step 6/14" in capsys.readouterr().out
    a, b = (state_dict(tmp_path / d / "model.pt") for d in ("ref", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every 5th update's model is kept, the one written before the kill and the one after it
    # the same as the uninterrupted run's, and unlike each other
    for run in ("ref", "killed"):
        kept = tmp_path / run / "state" / train.KEPT
        assert sorted(p.name for p in kept.iterdir()) == ["step000005.pt", "step000010.pt"]
    for step in (5, 10):
        a, b = (torch.load(train.kept_path(tmp_path / run / "state", step), weights_only=True)
                for run in ("ref", "killed"))
        assert a["step"] == b["step"] == step and a["chosen"] == f"update {step}"
        assert a["val_accuracy"] is None
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    five, ten = (state_dict(train.kept_path(tmp_path / "ref" / "state", s)) for s in (5, 10))
    assert not torch.equal(five["transformer.classifier.2.weight"],
                           ten["transformer.classifier.2.weight"])


def tiny_model() -> dict:
    """The tiny preset's model and sizes on top of another preset (its optimisation kept)."""
    keep = {k: v for k, v in config.PRESETS["tiny"].items()
            if k.startswith("model.") or k in ("max_txt_len", "train_n_clips", "num_workers")}
    return {**keep, "pad_to_max": False}


def test_all_undecodable_batch_is_skipped_not_substituted(ds, tmp_path: Path,
                                                          monkeypatch) -> None:
    """A global batch whose videos all fail still counts as a step (schedule and data position
    unchanged) but changes no weight; a batch with some failures trains on the rest."""
    cfg = config.make_config("tiny", {**SMALL, "epochs": 1})
    order = train.epoch_batches(64, 0, cfg, distributed.Dist())
    bad = set(order[2]) | {order[3][0]}
    real = data.VideoQADataset.__getitem__

    def flaky(self, index):
        return None if self.train and index in bad else real(self, index)

    monkeypatch.setattr(data.VideoQADataset, "__getitem__", flaky)
    calls = []
    real_step = train.train_step

    def counting(*args, **kwargs):
        calls.append(args[1]["index"].tolist())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", counting)
    _, rows = run_train(ds, tmp_path, epochs=1)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[2]["loss"] is None and rows[3]["loss"] is not None
    assert len(calls) == 7 and calls[2] == order[3][1:]
    assert rows[3]["lr"] < rows[1]["lr"]  # the schedule moved on through the skipped step


def _wait_for_checkpoint(proc: subprocess.Popen, last: Path, after_step: int,
                         timeout: float = 120) -> int:
    """Poll until `last` holds a step beyond `after_step`; returns that step."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen:  # written atomically: a new stamp is a complete file
            seen = stamp
            step = torch.load(last, map_location="cpu", weights_only=True)["step"]
            if step > after_step:
                return step
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before a checkpoint after "
                        f"step {after_step}:\n{proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint in time")


@pytest.mark.slow(seconds=40)
def test_killed_run_resumes_bit_identically(ds, tmp_path: Path) -> None:
    """SIGKILL at random points after checkpoints, rerun: the same weights, bit for bit, and the
    same metrics rows as an uninterrupted run (dropout on, so RNG state matters)."""
    overrides = {"epochs": 3, "checkpoint_every": 3, "val_every": 0.25}
    ref = tmp_path / "ref"
    cli_train(*cli_train_args(ds, ref, overrides))
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "clipbert", "train", *cli_train_args(ds, run, overrides)]
    last = run / "state" / "last.pt"
    rng = random.Random()
    kills, step = [], 0
    for _ in range(2):
        proc = subprocess.Popen(args, env=env1(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        step = _wait_for_checkpoint(proc, last, step)
        time.sleep(rng.uniform(0, 0.3))  # anywhere between checkpoints
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        step = torch.load(last, map_location="cpu", weights_only=True)["step"]
        kills.append(step)
        assert not (run / "model.pt").exists()
    assert 0 < kills[0] < kills[1] < 24, kills
    resumed = cli_train(*args[4:])
    assert f"resuming from {last} at step {kills[1]}/24" in resumed.stdout
    a, b = state_dict(ref / "model.pt"), state_dict(run / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    ra, rb = ([json.loads(x) for x in (d / "metrics.jsonl").open()] for d in (ref, run))
    assert [r["step"] for r in rb] == list(range(1, 25))
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "examples_per_s"} == {
            k: v for k, v in y.items() if k != "examples_per_s"}


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(ds, tmp_path: Path) -> None:
    """torchrun --nproc_per_node 2 on CPU (gloo), batch 4 per process, against one process with
    batch 8: the same loss curve within float tolerance (dropout off: masks differ by rank;
    BatchNorm frozen: trained BN normalises by each process's share of the batch)."""
    overrides = {"model.dropout": 0.0, "model.frozen_bn": True, "epochs": 2,
                 "checkpoint_every": 100, "val_every": 0.5}
    one = tmp_path / "one"
    cli_train(*cli_train_args(ds, one, {**overrides, "batch_size": 8}))
    two = tmp_path / "two"
    proc = subprocess.run(
        distributed.torchrun_command(2, cli_train_args(ds, two, {**overrides, "batch_size": 4})),
        env=env1(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "16 steps of global batch 8 (2 process(es), cpu)" in proc.stdout
    ra, rb = ([json.loads(x) for x in (d / "metrics.jsonl").open()] for d in (one, two))
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 17))
    la, lb = [r["loss"] for r in ra], [r["loss"] for r in rb]
    assert lb == pytest.approx(la, rel=1e-3, abs=1e-4)
    assert la[-1] < la[0]  # it learned something, so the match is not one of constants
    assert [r["val_acc"] for r in rb] == [r["val_acc"] for r in ra]
    wa, wb = state_dict(one / "model.pt"), state_dict(two / "model.pt")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-4), k


def test_each_process_gets_its_share_of_the_job_cpus(monkeypatch) -> None:
    """Threads and loader workers per rank are the job's CPUs over the node's processes: under
    torchrun by hand (which sets OMP_NUM_THREADS=1) and under Snakemake (whose rule threads every
    rank would inherit) alike; the job never counts more CPUs than its affinity mask."""
    from clipbert import runtime

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv(runtime.JOB_CPUS_ENV, raising=False)
    assert runtime.rank_cpus(None) is None  # one process, nothing given: torch's default
    assert (runtime.rank_cpus(4), runtime.rank_cpus(64)) == (4, 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert runtime.rank_cpus(None) == 2  # torchrun by hand: the mask over 8 ranks
    monkeypatch.setenv(runtime.JOB_CPUS_ENV, "12")  # the rule's threads, as the workflow passes
    assert runtime.rank_cpus(None) == 1 and runtime.rank_cpus(16) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)  # OMP_NUM_THREADS of all 16
    assert runtime.loader_workers(4) == 2
    assert distributed.torchrun_env(12)[runtime.JOB_CPUS_ENV] == "12"
    monkeypatch.setenv(runtime.JOB_CPUS_ENV, "all")
    with pytest.raises(ClipbertError, match="CLIPBERT_JOB_CPUS='all': not a whole number"):
        runtime.rank_cpus(None)


@pytest.mark.slow
def test_two_gloo_processes_split_the_job_cpus(ds, tmp_path: Path, monkeypatch) -> None:
    """The workflow's torchrun launch with 4 CPUs given (the rule's threads) to 2 processes on
    gloo: each rank trains with 2 torch threads and 2 loader workers (the setting asks for 4),
    although torchrun and the environment say OMP_NUM_THREADS=1. The 2-core machine's mask is
    made to read as 4 CPUs (tests/cpu_mask) so that the cap at the mask does not hide the split."""
    out = tmp_path / "run"
    for key, value in env1().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(Path(__file__).parent / "cpu_mask"), os.environ["PYTHONPATH"]]))
    monkeypatch.setenv("CLIPBERT_TEST_CPUS", "4")
    args = cli_train_args(ds, out, {"epochs": 0.25, "num_workers": 4, "val_every": 1.0,
                                    "model.dropout": 0.0})
    distributed.launch_torchrun(2, args, log=tmp_path / "train.log", job_cpus=4)
    log = (tmp_path / "train.log").read_text()
    assert "1 steps of global batch 16 (2 process(es), cpu); 2 CPU thread(s) and 2 loader " \
           "worker(s) each;" in log, log[-3000:]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").open()] == [1]


@pytest.mark.parametrize("gpus", [1, 2])
def test_workflow_script_starts_torchrun_for_several_gpus(tmp_path: Path, monkeypatch,
                                                          gpus: int) -> None:
    """The train rule's script: one GPU trains in-process, N > 1 launches N torchrun workers
    with exactly the rule's settings."""
    import runpy
    from types import SimpleNamespace

    from snakemake.iocontainers import Namedlist

    calls = []
    monkeypatch.setattr(distributed, "launch_torchrun",
                        lambda n, args, log, job_cpus: calls.append((n, args, job_cpus)))
    monkeypatch.setattr(train, "train", lambda cfg, **kw: calls.append((cfg, kw)))
    smk = SimpleNamespace(
        params=SimpleNamespace(preset="tiny", overrides={"epochs": 3}, state_dir="st"),
        input=Namedlist(fromdict={"train": "sqa/train.jsonl", "val": "sqa/val.jsonl",
                                  "ans2label": "sqa/ans.json", "lmdb": "vis_db",
                                  "vocab": "vocab.txt", "weights_resnet": "r50.pt"}),
        output=SimpleNamespace(model="model.pt", metrics="log.jsonl"),
        resources=SimpleNamespace(gpu=gpus), threads=2, log=[str(tmp_path / "train.log")])
    script = Path(__file__).resolve().parents[1] / "workflow_scripts" / "train.py"
    runpy.run_path(str(script), init_globals={"snakemake": smk})
    assert len(calls) == 1
    files = TrainFiles(Path("sqa/train.jsonl"), Path("sqa/val.jsonl"), Path("sqa/ans.json"))
    if gpus == 1:
        cfg, kw = calls[0]
        assert cfg == config.make_config("tiny", {"epochs": 3})
        assert kw == {"data_dir": files, "lmdb_dir": "vis_db", "out": "model.pt",
                      "state_dir": "st", "metrics": "log.jsonl", "vocab": "vocab.txt",
                      "weights": {"resnet": "r50.pt"}, "threads": 2}
    else:
        args = distributed.train_args("tiny", {"epochs": 3}, files, "vis_db", "model.pt", "st",
                                      "log.jsonl", "vocab.txt", weights={"resnet": "r50.pt"})
        assert calls[0] == (2, args, 2)  # the rule's threads, shared by the ranks
        assert args[2:8] == ["--train", "sqa/train.jsonl", "--answers", "sqa/ans.json",
                             "--val", "sqa/val.jsonl"]
        assert args[-2:] == ["--init", "resnet=r50.pt"]


@pytest.mark.parametrize("overrides", [{"log_every": 1}, {"log_every": 5, "select_best": False}])
def test_a_diverged_run_stops_naming_the_step_and_writes_no_model(ds, tmp_path: Path,
                                                                    overrides) -> None:
    """A loss or gradient norm that is not finite stops training with one line naming the step,
    the loss and the rate, before any log row, state or model of the diverged steps is written;
    with rows logged every 5 steps the first bad step is still the one named."""
    with pytest.raises(ClipbertError) as info:
        run_train(ds, tmp_path, epochs=1, lr=1e30, val_every=1.0, checkpoint_every=100,
                  **overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    found = re.fullmatch(r"train: (loss is (nan|inf)|gradient norm is (nan|inf) \(loss \S+\)) "
                         r"at step (\d+) \(lr (\S+)\): the run diverged; lower train\.lr or "
                         r"lengthen the warm-up", msg)
    assert found, msg
    step = int(found[4])
    assert 1 <= step <= 3 and float(found[5]) > 1e28, msg
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.jsonl").exists()
    rows_file = tmp_path / "state" / "metrics.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.exists() else []
    assert [r["step"] for r in rows] == (list(range(1, step)) if overrides["log_every"] == 1
                                         else [])
    assert not (tmp_path / "state" / "best.pt").exists()
    assert not (tmp_path / "state" / "last.pt").exists()


@pytest.mark.slow
def test_a_diverged_run_is_one_line_and_exit_status_1(ds, tmp_path: Path) -> None:
    """`lr: 1e30` from the command line: exit status 1, the one line on stderr, no model."""
    args = cli_train_args(ds, tmp_path, {"epochs": 1, "lr": 1e30, "select_best": False})
    proc = subprocess.run([sys.executable, "-m", "clipbert", "train", *args], env=env1(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert re.fullmatch(r"error: train: loss is nan at step 2 \(lr \S+\): the run diverged; "
                        r"lower train\.lr or lengthen the warm-up", line), proc.stderr
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_watch_names_a_gradient_norm_that_is_not_finite() -> None:
    """A finite loss with an infinite gradient norm is named as such, with its loss."""
    watch = train.DivergenceWatch()
    for step, norm in ((1, 2.0), (2, float("inf")), (3, float("nan"))):
        watch.at(step, 1e-3)
        watch.add(torch.tensor(3.25), torch.tensor(norm))
    with pytest.raises(ClipbertError, match=r"^train: gradient norm is inf \(loss 3\.25\) at "
                                            r"step 2 \(lr 0\.001\): the run diverged"):
        watch.check()
    watch.check()  # checked steps are not named again


def test_missing_inputs_are_one_line_errors(ds, tmp_path: Path) -> None:
    cfg = config.make_config("tiny", SMALL)
    with pytest.raises(ClipbertError, match=r"train\.jsonl: not found"):
        train.train(cfg, tmp_path, ds["lmdb_dir"], tmp_path / "m.pt", tmp_path / "st",
                    vocab=ds["vocab"])
    assert not (tmp_path / "m.pt").exists()


def test_questions_without_video_stop_before_training(ds, tmp_path: Path) -> None:
    """A scene with no video in the LMDB is reported, naming it, before any step is taken."""
    import shutil

    data_dir = tmp_path / "sqa"
    shutil.copytree(ds["data_dir"], data_dir)
    rows = (data_dir / "train.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    row["video_id"] = "scene0999_00"
    (data_dir / "train.jsonl").write_text("\n".join([json.dumps(row), *rows[1:]]) + "\n")
    cfg = config.make_config("tiny", SMALL)
    with pytest.raises(ClipbertError, match="scene0999_00"):
        train.train(cfg, data_dir, ds["lmdb_dir"], tmp_path / "m.pt", tmp_path / "st",
                    vocab=ds["vocab"])
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "st" / "last.pt").exists()


def test_blind_baseline_trains_and_answers_without_video(ds, tmp_path: Path) -> None:
    """`model.variant: blind`: trained and scored from the questions alone; no LMDB is needed,
    even when one is given it is never opened; a video model without an LMDB is a one-line error."""
    from clipbert import evaluate

    cfg = config.make_config("tiny", {**SMALL, "model.variant": "blind", "epochs": 4})
    result = train.train(cfg, ds["data_dir"], None, tmp_path / "blind.pt", tmp_path / "state",
                         metrics=tmp_path / "metrics.jsonl", vocab=ds["vocab"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert rows[-1]["loss"] < rows[0]["loss"] and result["best_val_acc"] is not None
    acc = evaluate.infer(tmp_path / "blind.pt", ds["data_dir"] / "test.jsonl", "/nonexistent",
                         tmp_path / "pred.jsonl", tmp_path / "acc.json")
    assert acc["blind"] is True and acc["n_questions"] == 16
    with pytest.raises(ClipbertError, match="no video LMDB given"):
        train.train(config.make_config("tiny", SMALL), ds["data_dir"], None, tmp_path / "m.pt",
                    tmp_path / "st", vocab=ds["vocab"])
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_state_of_another_run_is_set_aside(ds, tmp_path: Path, capsys) -> None:
    """A resumable state is resumed only by the same run: changed questions or videos start
    training over, the log naming what changed; the same inputs resume (a finished run then
    writes the same model again without a step)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(ds["data_dir"], root / "sqa")
    shutil.copytree(ds["lmdb_dir"], root / "vis_db")
    inputs = {"data_dir": root / "sqa", "lmdb_dir": root / "vis_db", "vocab": ds["vocab"]}
    out = tmp_path / "run"
    _, first = run_train(inputs, out, epochs=1)
    model = (out / "model.pt").read_bytes()
    capsys.readouterr()
    _, again = run_train(inputs, out, epochs=1)
    log = capsys.readouterr().out
    assert f"resuming from {out / 'state' / 'last.pt'} at step 8/8" in log
    assert (out / "model.pt").read_bytes() == model and again == first

    lines = (root / "sqa" / "train.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["answer"] = next(a for a in json.loads((root / "sqa" / "train_ans2label.json")
                                               .read_text()) if a != row["answer"])
    (root / "sqa" / "train.jsonl").write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    planted = train.kept_path(out / "state", 3)  # the other run's kept model goes with it
    planted.parent.mkdir()
    planted.write_bytes(b"another run's model")
    _, rows = run_train(inputs, out, epochs=1)
    log = capsys.readouterr().out
    assert "not resuming" in log and "(changed: train.jsonl); training starts over" in log
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert not planted.parent.exists()

    # The same frames, encoded by another codec: other bytes, so another run.
    scene = json.loads(lines[1])["video_id"]
    frames_dir = ds["data_dir"].parent / "frames" / scene
    mp4s = sorted((ds["data_dir"].parent / "videos").glob("*.mp4"))
    video.encode_video(frames_dir, tmp_path / "videos" / f"{scene}.mp4", size=(64, 64),
                       codec="libx264")
    vislmdb.pack_lmdb(root / "vis_db", [tmp_path / "videos" / f"{scene}.mp4" if p.stem == scene
                                        else p for p in mp4s])
    _, rows = run_train(inputs, out, epochs=1)
    log = capsys.readouterr().out
    assert "(changed: video LMDB); training starts over" in log
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_a_failed_retrain_keeps_the_finished_state(ds, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    """A retrain with other settings keeps its state beside the finished one and swaps it in
    only once it has written its model. One that fails (here: it diverges after a checkpoint)
    leaves the finished training's state as it was, and its settings then rewrite its model and
    log byte for byte without a step; a retrain that is stopped resumes from its own state."""
    _, rows = run_train(ds, tmp_path, epochs=1)
    state = tmp_path / "state"
    model = (tmp_path / "model.pt").read_bytes()
    log = (tmp_path / "metrics.jsonl").read_bytes()
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    (tmp_path / "model.pt").unlink()
    (tmp_path / "metrics.jsonl").unlink()
    with pytest.raises(ClipbertError, match="at step 2 .*the run diverged"):
        run_train(ds, tmp_path, epochs=1, lr=1e30, val_every=0.125)
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "state.next"]
    capsys.readouterr()
    _, again = run_train(ds, tmp_path, epochs=1)
    assert f"resuming from {state / 'last.pt'} at step 8/8" in capsys.readouterr().out
    assert (tmp_path / "model.pt").read_bytes() == model and again == rows
    assert (tmp_path / "metrics.jsonl").read_bytes() == log

    real_save = train.save_state

    def stop_after_step_4(run, st, path):
        real_save(run, st, path)
        if st.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_state", stop_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_train(ds, tmp_path, epochs=1, lr=1e-3, val_every=0.25)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    capsys.readouterr()
    _, other = run_train(ds, tmp_path, epochs=1, lr=1e-3, val_every=0.25)
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'state.next' / 'last.pt'} at step 4/8" in out, out
    assert [r["step"] for r in other] == list(range(1, 9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "model.pt", "state"]
    saved = torch.load(state / "last.pt", map_location="cpu", weights_only=True)
    assert saved["settings"]["lr"] == 1e-3 and saved["step"] == 8


@pytest.mark.parametrize("killed", ["before its state", "after its state", "mid-swap"])
def test_state_files_recover_what_a_kill_left(tmp_path: Path, killed: str) -> None:
    """A run killed while its state waited beside another's: a pending folder with no saved
    state goes, one with a state stays (to be resumed), a swap cut short is finished."""
    home = tmp_path / "train_state"
    home.mkdir()
    (home / "last.pt").write_text("finished run")
    files = train.StateFiles(home)
    files.start_pending()
    assert files.dir == tmp_path / "train_state.next" and files.last.parent == files.dir
    if killed != "before its state":
        files.last.write_text("new run")
    if killed == "mid-swap":
        home.rename(tmp_path / "train_state.old")
    train.StateFiles(home).recover()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["train_state", "train_state.next"] if killed == "after its state"
                    else ["train_state"])
    assert (home / "last.pt").read_text() == ("new run" if killed == "mid-swap"
                                              else "finished run")


def test_a_state_without_run_identity_is_not_resumed(ds, tmp_path: Path, capsys) -> None:
    """A state written before inputs were recorded (or by anything else) starts a fresh run."""
    run_train(ds, tmp_path, epochs=1)
    last = tmp_path / "state" / "last.pt"
    st = torch.load(last, map_location="cpu", weights_only=True)
    del st["inputs"]
    torch.save(st, last)
    capsys.readouterr()
    _, rows = run_train(ds, tmp_path, epochs=1)
    assert "(changed: the state's format (saved by an older version))" in capsys.readouterr().out
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    """The RNG streams saved as tensors and plain types come back exactly: the same draws."""
    import numpy as np

    train.seed_everything(5)
    random.random(), np.random.rand(), torch.rand(1)
    cpu = torch.device("cpu")
    state = train.rng_state(cpu)
    assert state["cuda"] is None  # no GPU stream of a CPU process (nor of any other device)
    torch.save(state, tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(3).tolist())
    train.seed_everything(9)
    old = torch.load(tmp_path / "rng.pt", weights_only=True)
    old["cuda"] = []  # an older state's list of every visible GPU's stream: read, not indexed
    train.set_rng_state(old, cpu)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == want


class Planted:
    """Unpickling it would create the marker file: what a state planted in a shared work folder
    could do if the state were unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("case", ["planted pickle", "junk"])
def test_a_state_that_is_not_plain_tensors_is_set_aside_unrun(ds, tmp_path: Path, capsys,
                                                              case: str) -> None:
    """The resumable state loads with weights_only=True (RNG streams stored as tensors and plain
    types). One whose pickle would run code, or a damaged one, is never executed: it is set
    aside, the log says so in one line naming it, and training starts over."""
    run_train(ds, tmp_path, epochs=1)
    last = tmp_path / "state" / "last.pt"
    st = torch.load(last, map_location="cpu", weights_only=True)
    assert st["ranks"][0]["rng"]["numpy"]["key"].dtype == torch.int64
    marker = tmp_path / "ran"
    if case == "junk":
        last.write_bytes(b"junk")
    else:
        st["ranks"][0]["rng"]["python"] = Planted(marker)
        torch.save(st, last)
    capsys.readouterr()
    _, rows = run_train(ds, tmp_path, epochs=1)
    out = capsys.readouterr().out
    line = (f"not resuming {last}: it does not load as plain tensors (weights_only=True refused "
            "it; set aside as last.pt.set-aside); training starts over")
    assert line in out.splitlines(), out
    assert not marker.exists()
    assert (last.parent / "last.pt.set-aside").is_file()
    assert [r["step"] for r in rows] == list(range(1, 9))


class BagOfWords(torch.nn.Module):
    """A third model variant, defined here: the mean of the question's word embeddings, then a
    linear answer head. It needs no video."""

    needs_video = False

    def __init__(self, cfg) -> None:
        super().__init__()
        self.config = cfg
        self.words = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.head = torch.nn.Linear(cfg.hidden_size, cfg.num_labels)

    def param_groups(self, cfg) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": 1e-2, "weight_decay": 0.0,
                 "name": "transformer"}]

    def forward(self, frames, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.words(input_ids) * mask).sum(1) / mask.sum(1))


def test_a_new_model_variant_is_one_class(ds, tmp_path: Path, monkeypatch) -> None:
    """Registering a class under a variant name is all it takes: training, resuming, the model
    file and inference run it with no change to train.py or evaluate.py."""
    from clipbert import evaluate, model

    monkeypatch.setitem(model.VARIANTS, "bag_of_words", BagOfWords)
    cfg = config.make_config("tiny", {**SMALL, "model.variant": "bag_of_words", "epochs": 4})
    train.train(cfg, ds["data_dir"], None, tmp_path / "bow.pt", tmp_path / "state",
                metrics=tmp_path / "metrics.jsonl", vocab=ds["vocab"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = torch.load(tmp_path / "bow.pt", weights_only=True)
    assert set(saved["state_dict"]) == {"words.weight", "head.weight", "head.bias"}
    acc = evaluate.infer(tmp_path / "bow.pt", ds["data_dir"] / "test.jsonl", None,
                         tmp_path / "pred.jsonl", tmp_path / "acc.json")
    assert acc["variant"] == "bag_of_words" and acc["blind"] is True
    assert acc["n_questions"] == 16


@pytest.mark.slow
def test_training_files_can_be_named(ds, tmp_path: Path) -> None:
    """`clipbert train --train T --answers A [--val V]`: the files the workflow names, wherever
    they are; the same run as from their folder (so it resumes that run's state)."""
    import shutil

    named = tmp_path / "elsewhere"
    named.mkdir()
    for name, new in (("train.jsonl", "t.jsonl"), ("val.jsonl", "v.jsonl"),
                      ("train_ans2label.json", "a.json")):
        shutil.copyfile(ds["data_dir"] / name, named / new)
    overrides = {**SMALL, "epochs": 1}
    by_folder = cli_train_args(ds, tmp_path / "folder", overrides)
    cli_train(*by_folder)
    by_name = distributed.train_args(
        "tiny", overrides, TrainFiles(named / "t.jsonl", named / "v.jsonl", named / "a.json"),
        ds["lmdb_dir"], tmp_path / "folder" / "model2.pt", tmp_path / "folder" / "state",
        vocab=ds["vocab"])
    proc = cli_train(*by_name)
    assert f"resuming from {tmp_path / 'folder' / 'state' / 'last.pt'} at step 8/8" in proc.stdout
    assert (tmp_path / "folder" / "model2.pt").read_bytes() == (
        tmp_path / "folder" / "model.pt").read_bytes()
    bad = subprocess.run([sys.executable, "-m", "clipbert", "train", "--train",
                          str(named / "t.jsonl"), "--out", str(tmp_path / "m.pt"),
                          "--state-dir", str(tmp_path / "st")],
                         env=env1(), capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr == (f"error: --train {named / 't.jsonl'}: give its answer map too "
                          "(--answers)\n")


# ---- the GPU check (benchmarks/gpu_check.sh) on a machine without a GPU -----------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_check_stops_with_one_line_where_torch_sees_no_gpu(tmp_path: Path) -> None:
    """Not a pass of skipped tests: exit status 1 and one line saying that no GPU is visible."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**env1(), "OUT": str(tmp_path),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU visible: torch "), lines


def test_the_gpu_checks_data_need_no_opencv(tmp_path: Path, monkeypatch) -> None:
    """tests/test_cuda.py's data (the `improved` encode) are made where `import cv2` fails, as on
    a bare GPU machine; the faithful encode there would fail on it."""
    monkeypatch.setitem(sys.modules, "cv2", None)
    got = make_data(tmp_path, video_preset="improved")
    assert len(vislmdb.VideoLMDB(got["lmdb_dir"]).keys()) == 6
    scene = demo.scene_ids(6)[0]
    with pytest.raises(ImportError):
        video.encode_video(tmp_path / f"frames/{scene}", tmp_path / "faithful.mp4", size=(64, 64))
