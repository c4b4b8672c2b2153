"""The `clipbert` help: every command's `--help` explains each argument (with its default) and
shows examples, and every example, of the help texts and of docs/cli.md's command-line block,
runs as written on the demo's files laid out as the workflow writes them."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env, run_cli

from clipbert import demo, frames, runs, sqa, video, vislmdb
from clipbert.cli import build_parser, main

SCENES = 5  # the demo's minimum: 3 train, 1 val, 1 test scene


def parsers(parser: argparse.ArgumentParser | None = None,
            path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command tree with its command words, the top level first."""
    parser = parser or build_parser()
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += parsers(child, (*path, name))
    return out


def help_text(path: tuple[str, ...], capsys) -> str:
    """What `clipbert PATH --help` prints (through `main`, as the command does)."""
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def example_lines(text: str) -> list[str]:
    """The `clipbert ...` lines of the `Examples:` part of a help text."""
    if "\nExamples:\n" not in text:
        return []
    block = text.split("\nExamples:\n", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("clipbert ")]


def readme_lines() -> list[str]:
    """The `clipbert ...` lines of the plain code blocks of docs/cli.md (the command line's
    document) and README.md (a block tagged with a language, such as a config file or an
    example on data this checkout cannot have, is not run)."""
    text = "\n".join((REPO / name).read_text() for name in ("docs/cli.md", "README.md"))
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)
    blocks = [text for tag, text in blocks if not tag]
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.startswith("clipbert ")]


def _all_help_examples() -> list[str]:
    seen: dict[str, None] = {}
    for _, parser in parsers():
        for line in example_lines(parser.format_help()):
            seen[line] = None
    return list(seen)


def _command(line: str) -> list[str]:
    """The command words of an example line (`clipbert sens info FILE` -> sens, info)."""
    words = shlex.split(line)[1:]
    tree = {path for path, _ in parsers()}
    n = max(k for k in range(len(words) + 1) if tuple(words[:k]) in tree)
    return words[:n]


# ---- every --help ---------------------------------------------------------------------------


def test_top_level_help_speaks_to_a_user():
    proc = run_cli("--help")
    out = proc.stdout
    assert "import" not in out.lower() and "lazy" not in out.lower()
    assert "Start with `./run snakemake --cores 2`" in out  # where to start
    for name in ("demo", "sens", "video", "lmdb", "sqa", "model", "train", "infer", "plot"):
        assert re.search(rf"^    {name} +\S", out, re.M), f"{name} is not listed with its help"


def test_every_help_explains_each_argument_and_shows_an_example(capsys):
    tree = parsers()
    assert len(tree) >= 24
    for path, parser in tree:
        where = f"clipbert {' '.join(path)} --help".replace("  ", " ")
        out = help_text(path, capsys)
        assert parser.description, f"{where}: no description"
        examples = example_lines(out)
        assert examples, f"{where}: no example"
        for line in examples:
            assert _command(line)[:len(path)] == list(path), f"{where}: example {line!r}"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{where}: {choice.dest} has no help"
                    assert re.search(rf"^    {choice.dest} +\S", out, re.M), where
                continue
            name = action.option_strings[0] if action.option_strings else action.metavar
            assert name and name in out, f"{where}: {action.dest} is not named"
            assert action.help and action.help.strip(), f"{where}: {name} has no help"
            shown = formatter._expand_help(action)
            takes_value = action.option_strings and action.nargs != 0
            if takes_value and not action.required:
                assert "default" in shown, f"{where}: {name} does not say its default"


def test_defaults_are_the_real_ones(capsys):
    out = " ".join(help_text(("sens", "export"), capsys).split())
    assert "--stride STRIDE keep every N-th frame (the published baseline keeps every 20th) " \
           "(default: 20)" in out
    out = " ".join(help_text(("video", "encode"), capsys).split())
    assert "(default: 224x224)" in out and "(default: mpeg4)" in out and "(default: 20)" in out
    a = build_parser().parse_args(["video", "encode", "f", "o.mp4"])
    assert a.size == (224, 224)  # the shown default string is parsed like a given one
    out = " ".join(help_text(("demo", "make"), capsys).split())
    assert "(default: 60)" in out and "(default: 0)" in out


def test_the_model_key_in_the_help_is_a_real_one(capsys):
    """`--set model.layers=2` was the documented example, and it is refused."""
    out = help_text(("train",), capsys)
    keys = set(re.findall(r"--set ([a-z][\w.]*)=", out))
    assert "model.num_layers" in keys and "model.layers" not in out
    from clipbert.config import make_config

    base = make_config("faithful").to_dict()
    for key in keys:
        name = key.removeprefix("model.")
        assert name in (base["model"] if key.startswith("model.") else base), key


# ---- every example runs ---------------------------------------------------------------------


def _needs_model(line: str) -> bool:
    """Training, inference and converting the trained model: the slow examples; and the plots
    of what they wrote (results/, logs/benchmarks/)."""
    if "--help" in line.split():
        return False
    if _command(line)[:1] == ["plot"]:
        return any(w.startswith(("results/", "logs/")) for w in shlex.split(line))
    return "results/model.pt" in line or _command(line)[:1] in (["train"], ["infer"])


def _slow(line: str) -> bool:
    """Seconds each: what imports torch (model, train, infer) and the full-size demo."""
    words, argv = _command(line), shlex.split(line)
    if "--help" in argv:
        return False
    if words[:1] in (["model"], ["train"], ["infer"]):
        return True
    if words[:1] == ["plot"]:  # the frames figure runs the model's preprocessing (torch)
        return _needs_model(line) or words == ["plot", "frames"]
    scenes = int(argv[argv.index("--scenes") + 1]) if "--scenes" in argv else 60
    return words == ["demo", "make"] and scenes >= 30


def _cases() -> list:
    lines = dict.fromkeys(_all_help_examples())
    readme = readme_lines()
    lines.update(dict.fromkeys(readme))
    cases = []
    for line in lines:
        marks = [pytest.mark.slow] if _slow(line) else []
        cases.append(pytest.param(line, marks=marks, id=line[9:80]))
    return cases


def test_examples_are_found():
    """The README block and the help texts between them cover every command."""
    readme = readme_lines()
    assert len(readme) >= 15
    help_examples = _all_help_examples()
    leaves = [path for path, p in parsers()
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    covered = {tuple(_command(line)) for line in help_examples}
    assert set(leaves) <= covered
    in_readme = {tuple(_command(line)) for line in readme}
    missing = [p for p in leaves if p not in in_readme]
    assert not missing, f"docs/cli.md's command-line block has no line for {missing}"


@pytest.fixture(scope="session")  # once per test process (test_workflow.run_dir says why)
def workspace(tmp_path_factory) -> Path:
    """The paths the examples name, as the workflow writes them for the demo (small)."""
    root = tmp_path_factory.mktemp("ws")
    work = root / "work" / "demo"
    demo.make_demo(work / "source", scenes=SCENES, frames=40)
    for s in demo.scene_ids(SCENES):
        frames.export_frames(work / f"source/scans/{s}/{s}.sens", work / f"frames/{s}", stride=20)
        video.encode_video(work / f"frames/{s}", work / f"videos/{s}.mp4", size=(64, 64))
    vislmdb.pack_lmdb(work / "vis_db", sorted((work / "videos").glob("*.mp4")))
    sqa.convert(work / "source/sqa_task", work / "sqa")
    return root


@pytest.fixture(scope="session")  # once per test process (test_workflow.run_dir says why)
def workspace_with_model(workspace, tmp_path_factory) -> Path:
    """The workspace plus what the workflow's training and inference write: `results/model.pt`
    (the tiny preset, one epoch; its resumable state kept elsewhere, so that the examples' own
    `--state-dir` start fresh), its metrics log, the test predictions and accuracy, and
    benchmark files in Snakemake's format under logs/benchmarks/."""
    import torch

    from clipbert import evaluate, train
    from clipbert.config import make_config

    root = tmp_path_factory.mktemp("wsm")
    shutil.copytree(workspace, root, dirs_exist_ok=True)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.train(make_config("tiny", {"epochs": 1}), root / "work/demo/sqa",
                    root / "work/demo/vis_db", root / "results/model.pt",
                    tmp_path_factory.mktemp("st"), vocab=root / "work/demo/source/vocab.txt",
                    metrics=root / "results/train_log.jsonl")
        evaluate.infer(root / "results/model.pt", root / "work/demo/sqa/test.jsonl",
                       root / "work/demo/vis_db", root / "results/test_predictions.jsonl",
                       root / "results/test_acc.json", device="cpu")
    finally:
        torch.set_num_threads(n)
    # Two seeds' results (the one model's, twice) and their summary, as the runs write them.
    runs_dir = root / "results/runs"
    for seed in (0, 1):
        (runs_dir / f"video/seed{seed}").mkdir(parents=True)
        shutil.copy(root / "results/test_acc.json", runs_dir / f"video/seed{seed}")
    runs.write_summary(sorted(runs_dir.glob("*/*/test_acc.json")), runs_dir / "summary.json",
                       runs_dir / "summary.tsv")
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, row in (("train.tsv", "12.5\t0:00:12\t900.1"), ("frames/scene0000_00.tsv",
                                                                "0.4\t0:00:00\t20.3")):
        (root / "logs/benchmarks" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "logs/benchmarks" / name).write_text(head + row + "\t-" * 7 + "\n")
    return root


def _paths(line: str) -> list[str]:
    return [w for w in shlex.split(line) if re.match(r"(work|results)/", w) and "*" not in w]


def _workflow_files(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file outside work/try/."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).as_posix().startswith("work/try/")}


@pytest.mark.parametrize("line", _cases())
def test_example_runs(line, request, tmp_path):
    """Each example runs on its own copy of the files, through bash (globs expand as in a
    shell); every path it names exists afterwards (the inputs it read, the outputs it wrote),
    and nothing outside work/try/ has changed: the workflow's files are only read."""
    source = request.getfixturevalue("workspace_with_model" if _needs_model(line)
                                     else "workspace")
    ws = tmp_path / "ws"
    shutil.copytree(source, ws)
    before = _workflow_files(ws)
    command = f"{shlex.quote(sys.executable)} -m {line}"
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-c", command], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    for p in _paths(line):
        assert (ws / p).exists(), f"{line}: {p} does not exist afterwards"
    assert _workflow_files(ws) == before, f"{line}: changed files outside work/try/"
