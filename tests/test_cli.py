"""The command line: lazy imports, one-line errors, model summary at every preset, printing,
a closed stdout, and messages that say what is wrong, where, and what to do."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli

from clipbert import demo, frames, sens, sqa, video, vislmdb
from clipbert.cli import _json_text, main
from clipbert.errors import ClipbertError
from clipbert.fsutil import read_jsonl


def test_data_commands_do_not_import_torch(tmp_path):
    """`clipbert sens ...` and `clipbert sqa ...` must not pay seconds for torch."""
    demo_dir = tmp_path / "demo"
    run_cli("demo", "make", demo_dir, "--scenes", "5", "--frames", "3")
    scene = demo.scene_ids(5)[0]
    sens_file = demo_dir / "scans" / scene / f"{scene}.sens"
    code = (
        "import sys\n"
        "from clipbert.cli import main\n"
        f"assert main(['sens', 'info', {str(sens_file)!r}]) == 0\n"
        f"assert main(['sqa', 'convert', {str(demo_dir / 'sqa_task')!r}, "
        f"{str(tmp_path / 'sqa')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.sens"
    bad.write_bytes(b"\x03\x00\x00\x00")
    proc = run_cli("sens", "info", bad, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]


# ---- small data for the tests below ---------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """One demo scan, its one-frame video, an LMDB of it, and the demo's jsonl files."""
    root = tmp_path_factory.mktemp("small")
    demo.make_demo(root / "demo", scenes=5, frames=3)
    scene = demo.scene_ids(5)[0]
    sens_file = root / "demo" / "scans" / scene / f"{scene}.sens"
    frames.export_frames(sens_file, root / "frames" / scene)
    video.encode_video(root / "frames" / scene, root / "videos" / f"{scene}.mp4", size=(32, 32))
    vislmdb.pack_lmdb(root / "vis_db", [root / "videos" / f"{scene}.mp4"])
    sqa.convert(root / "demo" / "sqa_task", root / "sqa")
    return {"sens": sens_file, "mp4": root / "videos" / f"{scene}.mp4", "lmdb": root / "vis_db",
            "sqa": root / "sqa", "scene": Path(scene)}


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`clipbert ARGS` in this process: exit status, stdout, stderr."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- model summary --------------------------------------------------------------------------


@pytest.mark.parametrize("preset, frames_shape, tokens", [
    ("faithful", [1, 1, 2, 3, 448, 448], [1, 100 + 7 * 7, 768]),
    ("improved", [1, 16, 2, 3, 448, 448], [1, 100 + 7 * 7, 768]),
    ("tiny", [1, 2, 2, 3, 128, 128], [1, 40 + 2 * 2, 128]),
])
def test_model_summary_runs_at_each_presets_own_sizes(capsys, preset, frames_shape, tokens):
    """The dummy pass uses the preset's max_img_size, num_frm, inference clips and max_txt_len
    (tiny used to crash: 100 text tokens against its 64 positions)."""
    code, out, err = run_main(capsys, "model", "summary", "--preset", preset)
    assert code == 0, err
    shapes = json.loads(out)["shapes"]
    assert shapes["frames"] == frames_shape and shapes["tokens"] == tokens
    assert "Warning" not in err


def test_model_summary_follows_set(capsys):
    code, out, err = run_main(capsys, "model", "summary", "--preset", "tiny", "--set",
                              "model.num_layers=4", "--set", "max_img_size=256", "--set",
                              "max_txt_len=20", "--set", "inference_n_clips=3")
    assert code == 0, err
    info = json.loads(out)
    assert info["shapes"]["frames"] == [1, 3, 2, 3, 256, 256]
    assert info["shapes"]["grid"] == [6, 4, 4, 128] and info["shapes"]["tokens"] == [1, 36, 128]
    code, deeper, _ = run_main(capsys, "model", "summary", "--preset", "tiny")
    assert info["parameters"]["bert"]["total"] > json.loads(deeper)["parameters"]["bert"]["total"]


@pytest.mark.parametrize("sets, message", [
    (["max_txt_len=100"], "error: --preset tiny --set max_txt_len=100: max_txt_len 100 is outside "
     "1..model.max_position_embeddings (64): lower max_txt_len or raise "
     "model.max_position_embeddings"),
    (["max_img_size=8000"], "error: --preset tiny --set max_img_size=8000: max_img_size 8000 gives "
     "a 125x125 visual grid, more than model.max_grid_positions 100: lower max_img_size or raise "
     "model.max_grid_positions"),
    (["max_img_size=16"], "error: --preset tiny --set max_img_size=16: max_img_size 16 is too "
     "small: the visual grid would be empty; raise max_img_size"),
    (["model.num_heads=3"], "error: --preset tiny --set model.num_heads=3: model.hidden_size 128 "
     "is not a multiple of model.num_heads 3: change one of them"),
    (["model.depths=[1,1]"], "error: --preset tiny --set model.depths=[1,1]: model.depths [1, 1] "
     "and model.widths [16, 32, 64, 128] need one entry per ResNet stage each"),
    (["model.layers=2"], "error: --set model.layers=2: unknown training setting 'model.layers'; "
     "did you mean model.num_layers?"),
    (["epoch=3"], "error: --set epoch=3: unknown training setting 'epoch'; did you mean epochs?"),
    (["model.depths=3"], "error: --set model.depths=3: training setting 'model.depths': expected "
     "a list of numbers, like the preset's [1, 1, 1, 1]"),
    (["max_img_size=big"], "error: --set max_img_size=big: training setting 'max_img_size': "
     "expected a whole number, like the preset's 128"),
    (["model.frozen_bn=1"], "error: --set model.frozen_bn=1: training setting 'model.frozen_bn': "
     "expected true or false, like the preset's false"),
    (["model.score_agg_func=4"], "error: --set model.score_agg_func=4: training setting "
     "'model.score_agg_func': expected a string, like the preset's \"lse\""),
])
def test_bad_settings_are_one_line_errors(capsys, sets, message):
    code, out, err = run_main(capsys, "model", "summary", "--preset", "tiny",
                              *[w for s in sets for w in ("--set", s)])
    assert (code, out, err) == (1, "", message + "\n")


def test_settings_errors_reach_train_too(capsys, tmp_path):
    code, _, err = run_main(capsys, "train", "--preset", "tiny", "--set", "model.layers=2",
                            "--data-dir", tmp_path, "--out", tmp_path / "m.pt",
                            "--state-dir", tmp_path / "st")
    assert code == 1 and "did you mean model.num_layers?" in err
    code, _, err = run_main(capsys, "model", "summary", "--preset", "huge")
    assert (code, err) == (1, "error: --preset huge: unknown preset 'huge' (one of faithful, "
                              "improved, tiny)\n")
    with pytest.raises(SystemExit, match="--set 'x': expected KEY=VALUE"):
        main(["model", "summary", "--set", "x"])
    assert not list(tmp_path.iterdir())


# ---- printing -------------------------------------------------------------------------------


def test_sens_info_prints_each_matrix_as_four_rows(capsys, small):
    code, out, _ = run_main(capsys, "sens", "info", small["sens"])
    assert code == 0
    assert json.loads(out) == sens.sens_info(small["sens"])  # the data is unchanged
    lines = out.splitlines()
    for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        at = lines.index(f'  "{key}": [')
        rows = lines[at + 1:at + 5]
        assert all(re.fullmatch(r"    \[(-?[\d.e+-]+, ){3}-?[\d.e+-]+\],?", r) for r in rows), rows
        assert lines[at + 5] in ("  ],", "  ]")
    assert len(lines) < 50  # was 126


def test_json_text_keeps_short_flat_lists_on_one_line():
    obj = {"shape": [1, 2, 3], "empty": [], "none": {}, "names": ["a", "b"],
           "long": list(range(40)), "nested": {"m": [[1.5, 2], [3, 4]]}, "x": None}
    text = _json_text(obj)
    assert json.loads(text) == obj
    assert '  "shape": [1, 2, 3],' in text and '  "names": ["a", "b"],' in text
    assert '  "empty": [],' in text and '  "none": {},' in text
    assert '      [1.5, 2],\n      [3, 4]\n' in text
    assert '  "long": [\n    0,\n' in text  # too long for one line: one number a line


# ---- a reader that goes away ----------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["video", "probe", "{mp4}"], ["lmdb", "ls", "{lmdb}"], ["sens", "info", "{sens}"],
    ["sens", "--help"],
])
def test_closed_stdout_ends_quietly(small, command):
    """`clipbert ... | head -1`: the reader closes the pipe before the command writes (here:
    before it even starts), so every write fails; that is exit 141 with nothing on stderr."""
    args = [c.format(**small) for c in command]
    proc = subprocess.Popen([sys.executable, "-m", "clipbert", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 141) and err == ""


def test_pipe_into_head(small):
    """The way a user meets it: the first line arrives, and no traceback follows."""
    script = (f"set -o pipefail; {shlex.quote(sys.executable)} -m clipbert video probe "
              f"{shlex.quote(str(small['mp4']))} | head -1")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=cli_env())
    assert proc.returncode in (0, 141) and proc.stdout == "{\n" and proc.stderr == ""


# ---- messages -------------------------------------------------------------------------------


def test_bad_jsonl_line_names_line_and_column(tmp_path, small, cli):
    """The issue's case: a raw tab inside a string on line 6."""
    rows = (small["sqa"] / "val.jsonl").read_text().splitlines()[:5]
    bad = tmp_path / "val.jsonl"
    bad.write_text("\n".join([*rows, '{"video_id": "scene0000_00", "question": "a\tb"}']) + "\n")
    proc = cli("sqa", "scenes", bad, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {bad}: line 6, column 44: not valid JSON (Invalid control "
                           "character); fix or remove that line\n")
    bad.write_text('{"video_id": "scene0000_00"}\n\n[1, 2]\n')
    with pytest.raises(ClipbertError) as e:
        read_jsonl(bad)
    assert str(e.value) == (f"{bad}: line 3: expected a JSON object {{...}}, got an array; fix "
                            "or remove that line")
    bad.write_bytes(b'{"video_id": "scene0000_00"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(ClipbertError) as e:
        read_jsonl(bad)
    assert str(e.value) == (f"{bad}: line 2, column 18: not UTF-8 text (invalid continuation "
                            "byte); save the file as UTF-8")
    with pytest.raises(ClipbertError, match=f"^{re.escape(str(tmp_path / 'no.jsonl'))}: file "
                       "not found$"):
        read_jsonl(tmp_path / "no.jsonl")


def test_missing_video_message_is_grammatical_and_says_where(tmp_path, small, cli):
    one = tmp_path / "train.jsonl"
    one.write_text(json.dumps({"video_id": "scene0099_00", "question_id": 1}) + "\n"
                   + json.dumps({"video_id": str(small["scene"]), "question_id": 2}) + "\n")
    proc = cli("sqa", "check", one, "--videos", small["lmdb"], check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {one}: 1 question (in 1 scene) has no video in "
                           f"{small['lmdb']}: scene0099_00 (question 1); encode the scene's video "
                           "or remove its questions\n")
    many = tmp_path / "val.jsonl"
    rows = [{"video_id": "scene0098_00", "question_id": q} for q in range(10, 15)]
    rows += [{"video_id": f"scene{900 + k:04d}_00", "question_id": k} for k in range(22)]
    many.write_text("".join(json.dumps(r) + "\n" for r in rows))
    listed = tmp_path / "have.txt"
    listed.write_text(f"{small['scene']}\n")
    with pytest.raises(ClipbertError) as e:
        sqa.check_videos(many, sqa.available_videos(listed))
    text = str(e.value)
    assert text.startswith(f"{many}: 27 questions (in 23 scenes) have no video in {listed}: "
                           "scene0098_00 (questions 10, 11, 12 and 2 more), scene0900_00 "
                           "(question 0), scene0901_00 (question 1), ")
    assert text.endswith(", and 3 more scenes; encode the scenes' videos or remove their "
                         "questions")
    assert "scene0918_00 (question 18)" in text and "scene0919_00" not in text
    with pytest.raises(ClipbertError, match=r"have no video: scene0098_00 .*; encode"):
        sqa.check_videos(many, ["scene0000_00"])  # a plain list: no place to name
    with pytest.raises(ClipbertError, match=r"\(in 1 scene\) have no video in here: "):
        sqa.check_videos(many, [f"scene{900 + k:04d}_00" for k in range(22)], where="here")


def test_missing_lmdb_video_says_what_to_do(small):
    with pytest.raises(ClipbertError) as e:
        vislmdb.VideoLMDB(small["lmdb"]).get("scene0099_00")
    assert str(e.value) == (f"{small['lmdb']}: no video 'scene0099_00' in this LMDB; pack the "
                            "scene's mp4 into it or remove its questions")


def test_bad_splits_say_what_a_split_is(tmp_path, cli):
    sqa_dir = tmp_path / "demo" / "sqa_task"
    demo.make_demo(tmp_path / "demo", scenes=5, frames=1)
    for splits, message in (("train,train", "split 'train': given twice; give each split once"),
                            ("train,va l", "split 'va l': not a split name (letters, digits, _ "
                             "and - only, e.g. train,val,test)")):
        proc = cli("sqa", "convert", sqa_dir, tmp_path / "out", "--splits", splits, check=False)
        assert (proc.returncode, proc.stderr) == (1, f"error: {message}\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClipbertError, match="^no splits given; name at least one"):
        sqa.convert(sqa_dir, tmp_path / "out", splits=[])


# ---- plot -------------------------------------------------------------------------------------


def test_plot_commands_draw_without_torch(tmp_path, small):
    """`clipbert plot` of the data, the logs and the results only reads files and draws: no
    torch; each prints the PNG and what it shows, and a bad input is one line."""
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "val_acc": 5.0 * s}) + "\n"
                           for s in (1, 2)))
    acc = tmp_path / "test_acc.json"
    acc.write_text(json.dumps({"overall": 40.0, "per_type": {"what": 40.0}, "n_questions": 5,
                               "majority_baseline": {"overall": 20.0}, "preset": "tiny"}))
    pred = tmp_path / "test_predictions.jsonl"
    pred.write_text('{"answer": "white", "predicted": "white"}\n')
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "train.tsv").write_text("s\tmax_rss\n3.5\t100\n")
    commands = [
        ["data", "--stats", small["sqa"] / "stats.json", "--lmdb", small["lmdb"]],
        ["training", "--log", log], ["training", "--checkpoint", "clipbert.pt"],
        ["test-accuracy", "--acc", acc, "--source", "demo"],
        ["confusion", "--predictions", pred, "--top", "3"],
        ["benchmarks", "--folder", tmp_path / "bench"],
    ]
    code = "import sys\nfrom clipbert.cli import main\n" + "".join(
        f"assert main({['plot', *map(str, c), '--out', str(tmp_path / f'{k}.png')]!r}) == 0\n"
        for k, c in enumerate(commands)) + "assert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout.splitlines()
    assert len(said) == len(commands) and all((tmp_path / f"{k}.png").stat().st_size > 1000
                                              for k in range(len(commands)))
    assert said[1] == (f"{tmp_path / '1.png'}: training: 2 log rows, steps 1-2; best validation "
                       "accuracy 10.00 at step 2")
    assert said[3].startswith(f"{tmp_path / '3.png'}: test accuracy, embedded demo data: ")
    assert said[5] == f"{tmp_path / '5.png'}: benchmarks: train 1 job 3.5 s"
    log.write_text('{"loss": 1}\n')
    proc = run_cli("plot", "training", "--log", log, "--out", tmp_path / "bad.png", check=False)
    assert proc.returncode == 1 and not (tmp_path / "bad.png").exists()
    assert proc.stderr == f"error: {log}: record 1: missing key 'step'\n"
    proc = run_cli("plot", "test-accuracy", "--acc", acc, "--source", "real", "--out",
                   tmp_path / "bad.png", check=False)
    assert proc.returncode == 2 and "invalid choice: 'real'" in proc.stderr


def test_plot_frames_names_a_bad_set(capsys, small, tmp_path):
    code, _, err = run_main(capsys, "plot", "frames", "--lmdb", small["lmdb"], "--preset", "tiny",
                            "--set", "num_frms=2", "--out", tmp_path / "f.png")
    assert code == 1 and err.startswith("error: --set num_frms=2: ") and "num_frm" in err, err
    assert not (tmp_path / "f.png").exists()
