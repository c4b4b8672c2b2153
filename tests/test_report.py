"""Report plots, progress lines, config documentation, and the Snakemake report on the demo."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO
from PIL import Image
from test_workflow import SMALL, snakemake

from clipbert import report
from clipbert.config import make_config
from clipbert.errors import ClipbertError
from clipbert.progress import Progress, progress

PLOTS = ("data", "training", "test_accuracy", "confusion", "frames", "benchmarks")


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ---- config documentation -------------------------------------------------------------------

def schema_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        keys.append(key)
        keys += schema_keys(sub, key + ".")
    return keys


def test_config_readme_names_every_schema_key():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    keys = schema_keys(schema)
    assert "weights.bert" in keys and "data.scene_lists.test" in keys  # the walk reaches leaves
    text = (REPO / "config" / "README.md").read_text()
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"config/README.md does not document {missing}"


# ---- progress -------------------------------------------------------------------------------

def test_progress_is_silent_for_short_loops_in_a_file():
    out = io.StringIO()
    assert list(progress(range(5), "x", stream=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue() == ""


def test_progress_writes_plain_lines_to_a_file():
    out = io.StringIO()
    assert sum(progress(range(4), "frames", unit="frames", stream=out, every_s=0.0)) == 6
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("frames: 1/4 frames (25%)")
    assert lines[-1].startswith("frames: 4/4 frames (100%)")  # the final count closes it
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]  # each once


def test_progress_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    bar = Progress("lmdb", None, unit="videos", stream=out, tty=True)
    bar.every_s = 0.0
    for _ in range(3):
        bar.update()
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "lmdb: 3 videos" in text


# ---- plots from files: what each series holds ----------------------------------------------

def bars(ax, horizontal: bool = False) -> dict[str, list[float]]:
    """Each bar series of an axes (its label) -> the bar lengths, in order."""
    return {c.get_label(): [round(float(b.get_width() if horizontal else b.get_height()), 2)
                            for b in c.patches] for c in ax.containers}


def lines(ax) -> dict[str, list[tuple[float, float]]]:
    return {line.get_label(): [(float(x), float(y)) for x, y in line.get_xydata()]
            for line in ax.get_lines()}


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def legend(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def drawn(fig):
    """The figure laid out and rendered (constrained layout runs at draw time), so that the
    window extents of its texts are where the PNG has them; and its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def description(path: Path) -> str:
    with Image.open(path) as im:
        return im.text["Description"]


def test_training_plot(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4, "cnn_lr": 1e-3,
                                       "val_acc": 10.0 * s if s % 2 == 0 else None}) + "\n"
                           for s in range(1, 9)))
    out = tmp_path / "p" / "training.png"
    said = report.draw("training", out, log=log)
    w, h = png_size(out)
    assert w > 500 and h > 200
    assert said == description(out) == ("training: 8 log rows, steps 1-8; best validation "
                                         "accuracy 80.00 at step 8")
    fig = report.figure("training", log=log)
    loss, lr, val = fig.axes
    assert lines(loss) == {"loss": [(s, 3.0 / s) for s in range(1, 9)]}
    assert lines(lr) == {"transformer": [(s, 1e-4) for s in range(1, 9)],
                         "CNN": [(s, 1e-3) for s in range(1, 9)]}
    assert lines(val) == {"validation accuracy %": [(2, 20.0), (4, 40.0), (6, 60.0), (8, 80.0)]}
    (best,) = val.texts
    assert best.get_text() == "best 80.00" and best.xy == (8, 80.0)


def test_training_plot_best_label_clears_the_title(tmp_path):
    """The best validation point is the highest one: its label must stay inside the panel,
    clear of the title (it touched it)."""
    log = tmp_path / "train_log.jsonl"
    for accs in ([10.0, 71.3], [71.3, 71.3], [5.0, 71.3, 40.0], [71.3]):
        log.write_text("".join(json.dumps({"step": s, "loss": 1.0, "val_acc": a}) + "\n"
                               for s, a in enumerate(accs, 1)))
        fig = report.figure("training", log=log)
        renderer = drawn(fig)
        ax = fig.axes[2]
        (best,) = ax.texts
        label = best.get_window_extent(renderer)
        panel = ax.get_window_extent(renderer)
        title = ax.title.get_window_extent(renderer)
        assert best.get_text() == "best 71.30"
        assert panel.y0 <= label.y0 and label.y1 <= panel.y1 - 2, (accs, label, panel)
        assert panel.x0 < label.x0 and label.x1 < panel.x1, (accs, label, panel)
        assert label.y1 < title.y0, (accs, label, title)


def test_training_plot_when_nothing_was_trained(tmp_path):
    """Evaluation only (infer.model): no log, a figure that says so and names the checkpoint."""
    out = tmp_path / "training.png"
    said = report.draw("training", out, log=None, checkpoint="rel/clipbert.pt")
    assert said == description(out) == ("not trained here: the test accuracy comes from the "
                                        "given checkpoint clipbert.pt (infer.model)")
    assert png_size(out)[0] > 500
    fig = report.figure("training", checkpoint="rel/clipbert.pt")
    assert fig.axes == [] and [t.get_text() for t in fig.texts] == [said]


def test_bad_input_names_the_file_and_leaves_no_png(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2}\n{"step": 2, "loss"\n')
    out = tmp_path / "training.png"
    with pytest.raises(ClipbertError, match=r"train_log.jsonl: line 2"):
        report.draw("training", out, log=log)
    log.write_text('{"loss": 2}\n')
    with pytest.raises(ClipbertError, match=r"train_log.jsonl: record 1: missing key 'step'"):
        report.draw("training", out, log=log)
    with pytest.raises(ClipbertError, match=r"nope.json: no such file"):
        report.draw("test_accuracy", out, acc=tmp_path / "nope.json", source="demo")
    with pytest.raises(ClipbertError, match=r"figure 'loss': unknown \(known: data, training"):
        report.draw("loss", out, log=log)
    assert list(tmp_path.iterdir()) == [log]


def test_confusion_counts_and_plot(tmp_path):
    pairs = [("white", "white")] * 5 + [("white", "black")] * 2 + [("two", "two")] * 3 \
        + [("two", "xyz")] + [("rare", "white")]
    rows = [{"answer": g, "predicted": p} for g, p in pairs]
    labels, m = report.confusion(rows, top=2)
    assert labels == ["white", "two"]
    # columns: white, two, (other); 'black' and 'xyz' are other; 'rare' is not a top gold
    assert m.tolist() == [[5, 0, 2], [0, 3, 1]]
    pred = tmp_path / "test_predictions.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "confusion.png"
    said = report.draw("confusion", out, predictions=pred, top=2)
    assert png_size(out)[0] > 200
    assert said == ("confusion of the 2 most frequent test answers: 8 of 11 of their questions "
                    "answered right")
    ax = report.figure("confusion", predictions=pred, top=2).axes[0]
    assert np.allclose(ax.images[0].get_array(), [[5 / 7, 0, 2 / 7], [0, 3 / 4, 1 / 4]])
    assert texts(ax) == ["5", "2", "3", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["white (7)", "two (4)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["white", "two", "(other)"]
    with pytest.raises(ClipbertError, match="test_predictions.jsonl: top must be >= 1, got 0"):
        report.figure("confusion", predictions=pred, top=0)


ACC = {"overall": 50.0, "per_type": {"what": 40.0, "is": 70.0}, "counts": {"what": 5, "is": 2},
       "n_questions": 7, "ceiling": 90.0, "preset": "tiny",
       "majority_baseline": {"overall": 30.0, "per_type": {"what": 20.0, "is": 50.0}}}
PUBLISHED = "published (real SQA3D test split)"


def test_accuracy_plot(tmp_path):
    path = tmp_path / "test_acc.json"
    path.write_text(json.dumps(ACC))
    out = tmp_path / "acc.png"
    said = report.draw("test_accuracy", out, acc=path, source="demo")
    assert png_size(out)[0] > 500
    assert said == description(out)
    assert said.startswith("test accuracy, embedded demo data: this run (tiny), embedded demo "
                           "data 50.00 overall; ClipBERT, published (real SQA3D test split) "
                           "43.31 overall; majority answer, this split 30.00 overall")
    fig = report.figure("test_accuracy", acc=path, source="demo")
    ax = fig.axes[0]
    assert bars(ax) == {"this run (tiny), embedded demo data": [50.0, 40.0, 70.0],
                        f"ClipBERT, {PUBLISHED}": [43.31, 30.24, 60.12],
                        "majority answer, this split": [30.0, 20.0, 50.0]}
    assert [c.patches[0].get_hatch() for c in ax.containers] == [None, "//", None]
    assert texts(ax)[:3] == ["50.0", "40.0", "70.0"]  # the bars' own labels
    assert legend(fig) == [*bars(ax), f"blind text-only, {PUBLISHED}: 43.65",
                           "ceiling of this split (90.0)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["overall", "what\n(n=5)", "is\n(n=2)"]
    title = ax.get_title()
    assert "7 questions of the embedded demo (synthetic scenes, not SQA3D)" in title
    assert "hatched: published on the real SQA3D test split" in title
    assert "reproduces nothing" in title
    (blind_line,) = ax.collections
    assert np.allclose(blind_line.get_segments()[0][:, 1], 43.65)
    assert lines(ax) == {"ceiling of this split (90.0)": [(0.0, 90.0), (1.0, 90.0)]}
    assert title.startswith("test accuracy: 7 questions")
    path.write_text(json.dumps({**ACC, "split": "val"}))  # `clipbert plot` on another split
    fig = report.figure("test_accuracy", acc=path, source="demo")
    assert fig.axes[0].get_title().startswith("val accuracy: 7 questions")
    assert fig.get_label().startswith("val accuracy, embedded demo data: ")


def test_accuracy_plot_on_sqa3d_with_a_blind_baseline(tmp_path):
    path = tmp_path / "test_acc.json"
    path.write_text(json.dumps({**ACC, "trained_here": False, "checkpoint_name": "clipbert.pt",
                                "preset": "faithful"}))
    blind = tmp_path / "blind" / "test_acc.json"
    blind.parent.mkdir()
    blind.write_text(json.dumps({**ACC, "overall": 35.0, "per_type": {"what": 30.0}}))
    out = tmp_path / "acc2.png"
    report.draw("test_accuracy", out, acc=path, source="scannet", blind=blind)
    assert png_size(out)[0] > 500
    fig = report.figure("test_accuracy", acc=path, source="scannet", blind=blind)
    ax = fig.axes[0]
    assert bars(ax) == {"clipbert.pt (faithful), not trained here, SQA3D data": [50.0, 40.0, 70.0],
                        f"ClipBERT, {PUBLISHED}": [43.31, 30.24, 60.12],
                        "blind baseline, this run (tiny)": [35.0, 30.0, 0.0],
                        "majority answer, this split": [30.0, 20.0, 50.0]}
    assert "7 questions of SQA3D (data.source: scannet)" in ax.get_title()
    assert "demo" not in ax.get_title() + " ".join(legend(fig))
    blind.write_text(json.dumps({"per_type": {}}))
    with pytest.raises(ClipbertError, match="blind/test_acc.json: top level: missing key 'ov"):
        report.draw("test_accuracy", tmp_path / "acc3.png", acc=path, source="demo", blind=blind)
    assert not (tmp_path / "acc3.png").exists()
    with pytest.raises(ClipbertError, match="test_acc.json: data source 'real': expected one of "
                       "demo, scannet"):
        report.figure("test_accuracy", acc=path, source="real")
    path.write_text(json.dumps({"overall": 1.0}))
    with pytest.raises(ClipbertError, match="test_acc.json: top level: missing key 'per_type'"):
        report.draw("test_accuracy", tmp_path / "acc.png", acc=path, source="demo")


BENCH_HEAD = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmarks(folder: Path) -> None:
    """Two jobs of `frames` (a folder per rule) and one of `train` (RULE.tsv), as Snakemake
    writes them."""
    files = {"frames/a.tsv": "1.5\t0:00:01\t10\t-\t-\t-\t-\t-\t-\t-\n",
             "frames/b.tsv": "2.5\t0:00:02\t30\t-\t-\t-\t-\t-\t-\t-\n",
             "train.tsv": "9.0\t0:00:09\t-\t-\t-\t-\t-\t-\t-\t-\n"}
    for name, row in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(BENCH_HEAD + row)


def test_benchmarks_aggregate_per_rule(tmp_path):
    write_benchmarks(tmp_path / "benchmarks")
    paths = report.benchmark_files(tmp_path / "benchmarks")
    assert report.read_benchmarks(paths) == {
        "frames": {"jobs": 2, "seconds": 4.0, "longest": 2.5, "max_rss": 30.0},
        "train": {"jobs": 1, "seconds": 9.0, "longest": 9.0, "max_rss": None}}
    out = tmp_path / "b.png"
    said = report.draw("benchmarks", out, folder=tmp_path / "benchmarks")
    assert png_size(out)[0] > 500
    assert said == "benchmarks: frames 2 jobs 4.0 s, train 1 job 9.0 s"
    write_benchmarks(tmp_path / "elsewhere")  # the rules are named from the folder given
    assert report.figure("benchmarks", folder=tmp_path / "elsewhere").get_label() == said
    time, memory = report.figure("benchmarks", folder=tmp_path / "benchmarks").axes
    assert bars(time, horizontal=True) == {"wall seconds": [4.0, 9.0]}
    assert bars(memory, horizontal=True) == {"peak MB": [30.0, 0.0]}
    assert [t.get_text() for t in time.get_yticklabels()] == ["frames", "train"]
    assert texts(time) == ["4.0 s (2 jobs, longest 2.5)", "9.0 s (1 job, longest 9.0)"]
    assert texts(memory) == ["30 MB", "not sampled (too short)"]  # `-`, not 0 MB
    assert "max_rss" in memory.get_xlabel() and "summed" in memory.get_xlabel()
    # This run's files only: a leftover of an earlier config is not read.
    this_run = [tmp_path / "benchmarks/frames/a.tsv", tmp_path / "benchmarks/train.tsv",
                tmp_path / "benchmarks/infer.tsv"]  # infer: not run yet, absent
    assert report.benchmark_files(tmp_path / "benchmarks", this_run) == this_run[:2]
    only = report.figure("benchmarks", folder=tmp_path / "benchmarks", files=this_run)
    assert only.get_label() == "benchmarks: frames 1 job 1.5 s, train 1 job 9.0 s"
    (tmp_path / "benchmarks" / "train.tsv").write_text(BENCH_HEAD + "x" + "\t-" * 9 + "\n")
    with pytest.raises(ClipbertError, match=r"train.tsv: line 2"):
        report.read_benchmarks(paths)
    assert report.benchmark_files(tmp_path / "absent") == []
    said = report.draw("benchmarks", tmp_path / "none.png", folder=tmp_path / "absent")
    assert said.startswith(f"no benchmark files in {tmp_path / 'absent'}")


def test_model_view_is_the_padded_canvas():
    frames = np.full((1, 2, 30, 60, 3), 200, dtype=np.uint8)  # landscape: padded at the bottom
    view = report.model_view(frames, 32)
    assert view.shape == (1, 2, 32, 32, 3) and view.dtype == np.uint8
    assert (view[..., :16, :, :] == 200).all()  # 30x60 -> 16x32 keeps the colour
    assert (view[..., 16:, :, :] == 0).all()  # zero padding shows black


def test_frames_and_data_plots_from_a_small_lmdb(tmp_path):
    from clipbert import video, vislmdb

    mp4s = []
    for s in range(2):
        d = tmp_path / "frames" / f"scene000{s}_00"
        d.mkdir(parents=True)
        for k in range(12):
            Image.new("RGB", (48, 32), (20 * k, 100, 50 * s)).save(d / f"frame-{k}.color.jpg")
        mp4s.append(tmp_path / f"scene000{s}_00.mp4")
        video.encode_video(d, mp4s[-1], size=(48, 32), fps=20)
    lmdb = tmp_path / "vis_db"
    vislmdb.pack_lmdb(lmdb, mp4s)
    assert report.video_frame_counts(lmdb) == {"scene0000_00": 12, "scene0001_00": 12}
    sheet = {"lmdb": lmdb, "preset": "tiny", "overrides": {"max_img_size": 32}, "scenes": 3}
    report.draw("frames", tmp_path / "frames.png", **sheet)
    w, h = png_size(tmp_path / "frames.png")
    assert w > 300 and h > 200
    cfg = make_config("tiny", {"max_img_size": 32})
    for n_clips in (None, 3):
        fig = report.figure("frames", **sheet, n_clips=n_clips)
        clips = n_clips or cfg.inference_n_clips
        cols = clips * cfg.num_frm
        assert len(fig.axes) == 2 * cols  # 3 scenes asked, 2 in the LMDB
        assert [ax.get_ylabel() for ax in fig.axes[::cols]] == ["scene0000_00", "scene0001_00"]
        assert all(ax.images[0].get_array().shape == (32, 32, 3) for ax in fig.axes)
        assert fig.axes[cols - 1].get_title() == f"clip {clips}, frame {cfg.num_frm}"
        assert fig.get_suptitle().startswith(f"evaluation input: {clips} clip(s) x "
                                             f"{cfg.num_frm} frames")
    # One clip of two frames (the faithful preset): the title fits inside the figure.
    fig = report.figure("frames", lmdb=lmdb, preset="faithful", overrides={"max_img_size": 32})
    assert len(fig.axes) == 4
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (box, fig.bbox)
    with pytest.raises(ClipbertError, match="vis_db: n_clips must be >= 1, got 0"):
        report.figure("frames", **sheet, n_clips=0)
    with pytest.raises(ClipbertError, match="vis_db: scenes must be >= 1, got 0"):
        report.figure("frames", lmdb=lmdb, preset="tiny", scenes=0)

    stats = {s: {"questions": 4, "scenes": 1, "answer_types": {"what": 3, "is": 1},
                 "unknown": 1, "unknown_percent": 25.0, "accuracy_ceiling": 75.0}
             for s in ("train", "val", "test")}
    stats["train"] = {**stats["train"], "questions": 6, "scenes": 2,
                      "answer_types": {"what": 3, "is": 1, "how": 2}}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    out = tmp_path / "data.png"
    said = report.draw("data", out, stats=tmp_path / "stats.json", lmdb=lmdb)
    assert png_size(out)[0] > 500
    assert said == ("questions per split: train 6, val 4, test 4; 2 scene videos: 12-12 frames, "
                    "median 12")
    types, unknown, frames = report.figure("data", stats=tmp_path / "stats.json",
                                           lmdb=lmdb).axes
    assert bars(types) == {"what": [3.0] * 3, "is": [1.0] * 3, "how": [2.0, 0.0, 0.0],
                           "can": [0.0] * 3, "which": [0.0] * 3, "others": [0.0] * 3}
    assert texts(types) == ["6 q\n2 scenes", "4 q\n1 scene", "4 q\n1 scene"]
    assert bars(unknown) == {"'unknown' answers %": [25.0] * 3, "accuracy ceiling %": [75.0] * 3}
    assert sum(p.get_height() for p in frames.patches) == 2
    with pytest.raises(ClipbertError, match=r"stats.json: val: missing key 'answer_types'"):
        (tmp_path / "stats.json").write_text(json.dumps({**stats, "val": {}}))
        report.figure("data", stats=tmp_path / "stats.json", lmdb=lmdb)


# ---- the figures by name: the plot rules and `clipbert plot` -----------------------------------

def plot_rules() -> dict[str, dict[str, list[str]]]:
    """rules/report.smk's plot rules: rule -> its figure and the names of its inputs and
    params (the figure's arguments)."""
    text = (REPO / "rules" / "report.smk").read_text()
    out = {}
    for m in re.finditer(r"^rule (plot_\w+):\n(.*?)(?=^rule |\Z)", text, re.S | re.M):
        sections = dict(re.findall(r"^    (\w+):\n((?:        .*\n|\n)*)", m.group(2), re.M))
        names = {k: re.findall(r"^        (\w+)=", v, re.M) for k, v in sections.items()}
        params = names.get("params", [])
        figure = re.search(r'^        figure="(\w+)"', sections.get("params", ""), re.M)
        out[m.group(1)] = {"figure": figure and figure.group(1), "input": names.get("input", []),
                           "params": [p for p in params if p != "figure"]}
    return out


def test_every_plot_rule_names_a_figure_and_its_arguments():
    """The workflow chooses the figure by the rule's data: each plot rule names a figure and
    gives exactly arguments of its builder, every argument without a default among them."""
    import inspect

    rules = plot_rules()
    made_with_the_runs = ["runs"]  # plot_runs: not part of the default target
    assert len(rules) == len(PLOTS) + len(made_with_the_runs)
    assert sorted(r["figure"] for r in rules.values()) == sorted(report.FIGURES) == sorted(
        [*PLOTS, *made_with_the_runs])
    for rule, r in rules.items():
        sig = inspect.signature(report.FIGURES[r["figure"]]).parameters
        # `settings`: plot_frames's rerun trigger (the resolved training settings), which
        # workflow_scripts/plots.py does not pass on
        given = r["input"] + [p for p in r["params"] if p != "settings"]
        assert set(given) <= set(sig), (rule, given, list(sig))
        required = {n for n, p in sig.items() if p.default is inspect.Parameter.empty}
        assert required <= set(given), (rule, required)
    assert rules["plot_test_accuracy"]["params"] == ["source"]
    assert rules["plot_benchmarks"]["input"] == []  # waits on the results, reads the folder


def test_every_figure_has_a_plot_command():
    """`clipbert plot NAME` exists for every figure and passes only the builder's arguments."""
    import argparse
    import inspect

    from clipbert.cli import build_parser

    def choices(parser):
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return sub.choices

    commands = choices(choices(build_parser())["plot"])
    seen = {}
    for name, parser in commands.items():
        figure, inputs = parser.get_default("figure"), parser.get_default("inputs")
        seen[figure] = name
        sig = inspect.signature(report.FIGURES[figure]).parameters
        assert set(inputs) <= set(sig), (name, inputs)
        required = {n for n, p in sig.items() if p.default is inspect.Parameter.empty}
        assert required <= set(inputs) | ({"overrides"} if figure == "frames" else set()), name
    assert sorted(seen) == sorted(report.FIGURES)


@pytest.mark.slow
def test_the_benchmarks_plot_waits_for_every_result(tmp_path):
    """benchmarks.png lists every rule that ran, so its job comes after the blind baseline's
    too; when only evaluating it pulls in no training."""
    from conftest import job_stats
    from test_evaluate import standin_checkpoint

    def benchmark_inputs(proc) -> list[str]:
        block = proc.stdout.split("rule plot_benchmarks:", 1)[1]
        return block.split("input: ", 1)[1].split("\n", 1)[0].split(", ")

    details = ("--quiet", "host")  # the default profile keeps each job's inputs quiet
    proc = snakemake(tmp_path, "-n", *details, config=SMALL)
    assert benchmark_inputs(proc) == ["results/test_acc.json", "results/blind/test_acc.json"]
    (tmp_path / "ck").mkdir()
    standin_checkpoint(tmp_path / "ck/clipbert.pt", "tiny", SMALL["train"]["overrides"], 20, 99)
    proc = snakemake(tmp_path, "-n", *details, config={**SMALL,
                                                      "infer": {"model": "ck/clipbert.pt"}})
    assert benchmark_inputs(proc) == ["results/test_acc.json"]
    assert not {"train", "train_blind", "infer_blind"} & set(job_stats(proc.stdout))


@pytest.mark.slow
def test_the_benchmarks_plot_reads_this_runs_files_only(tmp_path):
    """The files the benchmarks plot reads (rules/report.smk run_benchmarks) are those of the
    jobs this config runs: an evaluation-only run on 6 demo scenes reads no train file and no
    scene's file beyond its 6, whatever an earlier run left in logs/benchmarks."""
    import shutil
    import subprocess
    import sys

    from conftest import cli_env
    from test_evaluate import standin_checkpoint

    shutil.copytree(REPO / "config", tmp_path / "config")
    (tmp_path / "Snakefile").write_text(f'include: "{REPO / "Snakefile"}"\n'
                                        'print("FILES", " ".join(run_benchmarks()))\n')
    (tmp_path / "ck").mkdir()
    standin_checkpoint(tmp_path / "ck/clipbert.pt", "tiny", SMALL["train"]["overrides"], 20, 99)
    (tmp_path / "c.yaml").write_text(json.dumps({**SMALL, "infer": {"model": "ck/clipbert.pt"}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", "Snakefile", "--cores", "1",
                           "-n", "--configfile", "c.yaml"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("FILES ")]
    assert line, proc.stdout + proc.stderr
    files = line[0].split()[1:]
    scenes = [f"scene{i:04d}_00" for i in range(6)]
    assert files == ["logs/benchmarks/demo_data.tsv",
                     *[f"logs/benchmarks/scene/{s}.tsv" for s in scenes],
                     "logs/benchmarks/pack_lmdb.tsv", "logs/benchmarks/sqa_convert.tsv",
                     "logs/benchmarks/infer.tsv"], files


# ---- the Snakemake report on the demo -------------------------------------------------------

@pytest.mark.slow(seconds=80)
def test_snakemake_report_has_every_plot(tmp_path):
    snakemake(tmp_path, config=SMALL)  # the default target: test accuracy and every plot
    for name in PLOTS:
        path = tmp_path / "results" / "plots" / f"{name}.png"
        assert png_size(path)[0] > 200, name
    said = description(tmp_path / "results/plots/test_accuracy.png")
    assert said.startswith("test accuracy, embedded demo data: this run (tiny), embedded demo "
                           "data") and f"ClipBERT, {PUBLISHED}" in said, said
    said = description(tmp_path / "results/plots/benchmarks.png")
    rules = dict(re.findall(r"(\w+) (\d+) jobs? ", said))
    assert {"train", "infer", "train_blind", "infer_blind", "pack_lmdb"} <= set(rules), said
    assert rules["scene"] == "6" and rules["train_blind"] == "1" and "1 jobs" not in said, said
    snakemake(tmp_path, "--report", "report.html", config=SMALL)
    html = (tmp_path / "report.html").read_text()
    for name in PLOTS:
        m = re.search(rf'"results/plots/{name}\.png": \{{.*?"data_uri": "data:image/png[^"]*'
                      rf'base64,([^"]+)"', html, re.S)
        assert m and len(m.group(1)) > 1000, f"{name}.png is missing or empty in the report"
        assert re.search(rf'"results/plots/{name}\.png": \{{[^{{}}]*"labels": \{{"figure": ',
                         html), f"{name}.png has no labels in the report"
    assert "workflow-desc" in html and "preset <tt" in html
