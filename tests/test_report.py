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


def test_progress_redraws_one_line_on_a_terminal():
    out = io.StringIO()
    bar = Progress("lmdb", None, unit="videos", stream=out, tty=True)
    bar.every_s = 0.0
    for _ in range(3):
        bar.update()
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "lmdb: 3 videos" in text


# ---- plots from files ---------------------------------------------------------------------

def test_training_plot(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-4, "cnn_lr": 1e-3,
                                       "val_acc": 10.0 * s if s % 2 == 0 else None}) + "\n"
                           for s in range(1, 9)))
    w, h = png_size(report.plot_training(log, tmp_path / "p" / "training.png"))
    assert w > 500 and h > 200


def test_training_plot_when_nothing_was_trained(tmp_path):
    """Evaluation only (infer.model): no log, a figure that says so and names the checkpoint."""
    out = report.plot_training(None, tmp_path / "training.png", checkpoint="rel/clipbert.pt")
    with Image.open(out) as im:
        assert im.text["Description"] == ("not trained here: the test accuracy comes from the "
                                          "given checkpoint clipbert.pt (infer.model)")
        assert im.size[0] > 500


def test_bad_input_names_the_file_and_leaves_no_png(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2}\n{"step": 2, "loss"\n')
    out = tmp_path / "training.png"
    with pytest.raises(ClipbertError, match=r"train_log.jsonl: line 2"):
        report.plot_training(log, out)
    log.write_text('{"loss": 2}\n')
    with pytest.raises(ClipbertError, match=r"train_log.jsonl: record 1: missing key 'step'"):
        report.plot_training(log, out)
    with pytest.raises(ClipbertError, match=r"nope.json: no such file"):
        report.plot_accuracy(tmp_path / "nope.json", out)
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
    assert png_size(report.plot_confusion(pred, tmp_path / "confusion.png", top=2))[0] > 200


def test_accuracy_plot(tmp_path):
    acc = {"overall": 50.0, "per_type": {"what": 40.0, "is": 70.0}, "counts": {"what": 5, "is": 2},
           "n_questions": 7, "ceiling": 90.0, "preset": "tiny",
           "majority_baseline": {"overall": 30.0, "per_type": {"what": 20.0, "is": 50.0}}}
    path = tmp_path / "test_acc.json"
    path.write_text(json.dumps(acc))
    assert png_size(report.plot_accuracy(path, tmp_path / "acc.png"))[0] > 500
    blind = tmp_path / "blind" / "test_acc.json"
    blind.parent.mkdir()
    blind.write_text(json.dumps({**acc, "overall": 35.0, "per_type": {"what": 30.0}}))
    assert png_size(report.plot_accuracy(path, tmp_path / "acc2.png", blind_path=blind))[0] > 500
    blind.write_text(json.dumps({"per_type": {}}))
    with pytest.raises(ClipbertError, match="blind/test_acc.json: top level: missing key 'ov"):
        report.plot_accuracy(path, tmp_path / "acc3.png", blind_path=blind)
    assert not (tmp_path / "acc3.png").exists()
    path.write_text(json.dumps({"overall": 1.0}))
    with pytest.raises(ClipbertError, match="test_acc.json: top level: missing key 'per_type'"):
        report.plot_accuracy(path, tmp_path / "acc.png")


def test_benchmarks_aggregate_per_rule(tmp_path):
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {"frames/a.tsv": "1.5\t0:00:01\t10\t-\t-\t-\t-\t-\t-\t-\n",
             "frames/b.tsv": "2.5\t0:00:02\t30\t-\t-\t-\t-\t-\t-\t-\n",
             "train.tsv": "9.0\t0:00:09\t-\t-\t-\t-\t-\t-\t-\t-\n"}
    for name, row in files.items():
        (tmp_path / "benchmarks" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "benchmarks" / name).write_text(head + row)
    paths = report.benchmark_files(tmp_path / "benchmarks")
    assert report.read_benchmarks(paths) == {
        "frames": {"jobs": 2, "seconds": 4.0, "longest": 2.5, "max_rss": 30.0},
        "train": {"jobs": 1, "seconds": 9.0, "longest": 9.0, "max_rss": 0.0}}
    assert png_size(report.plot_benchmarks(paths, tmp_path / "b.png"))[0] > 500
    (tmp_path / "benchmarks" / "train.tsv").write_text(head + "x\t-\t-\t-\t-\t-\t-\t-\t-\t-\n")
    with pytest.raises(ClipbertError, match=r"train.tsv: line 2"):
        report.read_benchmarks(paths)
    assert report.benchmark_files(tmp_path / "absent") == []


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
    cfg = make_config("tiny", {"max_img_size": 32})
    w, h = png_size(report.plot_frames(lmdb, tmp_path / "frames.png", cfg, scenes=3))
    assert w > 300 and h > 200
    stats = {s: {"questions": 4, "scenes": 1, "answer_types": {"what": 3, "is": 1},
                 "unknown": 1, "unknown_percent": 25.0, "accuracy_ceiling": 75.0}
             for s in ("train", "val", "test")}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    assert png_size(report.plot_data(tmp_path / "stats.json", lmdb, tmp_path / "data.png"))[0] > 500


# ---- the Snakemake report on the demo -------------------------------------------------------

@pytest.mark.slow
def test_snakemake_report_has_every_plot(tmp_path):
    snakemake(tmp_path, config=SMALL)  # the default target: test accuracy and every plot
    for name in PLOTS:
        path = tmp_path / "results" / "plots" / f"{name}.png"
        assert png_size(path)[0] > 200, name
    snakemake(tmp_path, "--report", "report.html", config=SMALL)
    html = (tmp_path / "report.html").read_text()
    for name in PLOTS:
        m = re.search(rf'"results/plots/{name}\.png": \{{.*?"data_uri": "data:image/png[^"]*'
                      rf'base64,([^"]+)"', html, re.S)
        assert m and len(m.group(1)) > 1000, f"{name}.png is missing or empty in the report"
    assert "workflow-desc" in html and "preset <tt" in html
