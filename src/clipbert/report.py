"""The plots of the Snakemake report: what a researcher looks at to judge a run.

One builder per figure reads the files a workflow stage wrote and returns a matplotlib Figure
(the object API, no pyplot: no global state, no display needed); `draw(name, out, **inputs)`
writes it as a PNG atomically. The workflow's plot rules and `clipbert plot` both go through
`draw`, naming the figure and passing the builder's arguments by name. Each figure's label (one
line: what it shows, with its numbers) also goes into the PNG's metadata. A missing or
malformed input is a ClipbertError naming the file, and no half-written PNG is left behind.
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_open, atomic_path, read_json, read_jsonl
from clipbert.qa import ANSWER_TYPES
from clipbert.sqa import PUBLISHED_BLIND, PUBLISHED_CLIPBERT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clipbert.config import TrainConfig

DPI = 110
# What a run's questions are, by the workflow's data.source: the published figures are on the
# real SQA3D test split, and the demo's numbers must not read as a reproduction of them.
SOURCES = {"demo": "embedded demo data", "scannet": "SQA3D data"}
PUBLISHED = "published (real SQA3D test split)"


def _figure(width: float, height: float) -> Figure:
    """A figure detached from pyplot, so plotting works headless and in any thread."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _message(text: str) -> Figure:
    """A figure that is one sentence (nothing to plot, and why); the sentence is its label."""
    fig = _figure(13, 1.6)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=13)
    fig.set_label(text)
    return fig


def _save(fig: Figure, out: str | os.PathLike) -> Path:
    """Write the PNG atomically; the figure's label goes into its metadata (a PNG text chunk
    `Description`), where a reader or a test finds what the figure says without looking."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    label = fig.get_label()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Description": label} if label else None)
    return out


def _read_rows(path: str | os.PathLike) -> list[dict]:
    if not Path(path).is_file():
        raise ClipbertError(f"{path}: no such file")
    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ClipbertError(f"{path}: record {n}: not a JSON object")
    return rows


def _need(path: str | os.PathLike, where: str, obj: Any, key: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ClipbertError(f"{path}: {where}: missing key {key!r}")
    return obj[key]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---- data statistics --------------------------------------------------------------------------

def video_frame_counts(lmdb_dir: str | os.PathLike) -> dict[str, int]:
    """Frames of every video in the LMDB: what the model can sample from, scene by scene."""
    from clipbert.video import probe_video
    from clipbert.vislmdb import VideoLMDB

    db = VideoLMDB(lmdb_dir)
    return {k: probe_video(db.get(k), name=f"{lmdb_dir}: {k}")["n_frames"] for k in db.keys()}


def data_figure(stats: str | os.PathLike, lmdb: str | os.PathLike) -> Figure:
    """Questions per split and answer type, `unknown` share and accuracy ceiling (from
    `sqa convert`'s stats.json), frames per scene (from the video LMDB)."""
    table = read_json(stats)
    if not isinstance(table, dict) or not table:
        raise ClipbertError(f"{stats}: no splits")
    splits = list(table)
    counts = {s: _need(stats, s, table[s], "answer_types") for s in splits}
    frames = video_frame_counts(lmdb)

    fig = _figure(13, 4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bottom = np.zeros(len(splits))
    for t in ANSWER_TYPES:
        v = np.array([counts[s].get(t, 0) for s in splits], dtype=float)
        ax1.bar(splits, v, bottom=bottom, label=t)
        bottom += v
    for i, s in enumerate(splits):
        ax1.annotate(f"{int(bottom[i])} q\n{_plural(_need(stats, s, table[s], 'scenes'), 'scene')}",
                     (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax1.set_ylim(0, max(bottom.max(), 1) * 1.25)
    ax1.set_title("questions per split and answer type")
    ax1.legend(fontsize=7, ncols=3, loc="upper right")

    x = np.arange(len(splits))
    unknown = [_need(stats, s, table[s], "unknown_percent") for s in splits]
    ceiling = [_need(stats, s, table[s], "accuracy_ceiling") for s in splits]
    b1 = ax2.bar(x - 0.2, unknown, 0.4, label="'unknown' answers %")
    b2 = ax2.bar(x + 0.2, ceiling, 0.4, label="accuracy ceiling %")
    ax2.bar_label(b1, fmt="%.1f", fontsize=8)
    ax2.bar_label(b2, fmt="%.1f", fontsize=8)
    ax2.set_xticks(x, splits)
    ax2.set_ylim(0, 130)  # room for the legend above a 100 % bar and its label
    ax2.set_title("answers outside the vocabulary")
    ax2.legend(fontsize=7, loc="upper center", ncols=2)

    n = np.array(list(frames.values()))
    ax3.hist(n, bins=min(30, max(len(set(n.tolist())), 1)))
    ax3.set_xlabel("video frames per scene")
    ax3.set_ylabel("scenes")
    videos = (f"{len(n)} scene videos: {n.min()}-{n.max()} frames, median {np.median(n):g}"
              if len(n) else "no videos")
    ax3.set_title(videos)
    fig.set_label("questions per split: " + ", ".join(
        f"{s} {int(b)}" for s, b in zip(splits, bottom, strict=True)) + f"; {videos}")
    return fig


# ---- training -------------------------------------------------------------------------------

def training_figure(log: str | os.PathLike | None = None,
                    checkpoint: str | os.PathLike | None = None) -> Figure:
    """Loss, learning rates and validation accuracy against the optimisation step. Without a
    log (the workflow only evaluated `checkpoint`, infer.model) the figure says that nothing
    was trained here, so the report has no empty or stale panel."""
    if log is None:
        return _message("not trained here: " + (
            f"the test accuracy comes from the given checkpoint {Path(checkpoint).name} "
            "(infer.model)" if checkpoint else "no training log"))
    rows = _read_rows(log)
    if not rows:
        raise ClipbertError(f"{log}: no training log rows")
    for n, r in enumerate(rows, 1):
        _need(log, f"record {n}", r, "step")

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = _figure(13, 3.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(*series("loss"), marker=".", lw=1, label="loss")
    ax1.set_title("training loss (mean over the logging interval)")
    for key, label in (("lr", "transformer"), ("cnn_lr", "CNN")):
        steps, values = series(key)
        if steps:
            ax2.plot(steps, values, label=label)
    ax2.set_title("learning rate")
    if ax2.get_lines():
        ax2.legend(fontsize=8)
    steps, acc = series("val_acc")
    ax3.plot(steps, acc, marker="o", ms=3, label="validation accuracy %")
    summary = (f"training: {_plural(len(rows), 'log row')}, steps {rows[0]['step']}-"
               f"{rows[-1]['step']}")
    if acc:
        best = int(np.argmax(acc))
        # Headroom above the best point, so that its label stays inside the panel, clear of
        # the title.
        lo, hi = min(acc), max(acc)
        span = max(hi - lo, 1.0)
        ax3.set_ylim(lo - 0.1 * span, hi + 0.3 * span)
        # ... and inside it sideways: at the first or last step the label leans inwards.
        ha = ("right" if steps[best] == max(steps) and len(steps) > 1 else
              "left" if steps[best] == min(steps) and len(steps) > 1 else "center")
        ax3.annotate(f"best {acc[best]:.2f}", (steps[best], acc[best]), fontsize=8,
                     xytext=(0, 6), textcoords="offset points", ha=ha)
        summary += f"; best validation accuracy {acc[best]:.2f} at step {steps[best]}"
    ax3.set_title("validation accuracy %")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.set_label(summary)
    return fig


# ---- test accuracy --------------------------------------------------------------------------

def _run_name(result: dict, where: str, blind: bool = False) -> str:
    """Which model a series is: trained by this run, or a given checkpoint scored here."""
    preset = result.get("preset", "?")
    if result.get("trained_here", True):
        return f"blind baseline, this run ({preset})" if blind else f"this run ({preset}), {where}"
    return (f"{'blind baseline ' if blind else ''}{result.get('checkpoint_name', '?')} "
            f"({preset}), not trained here, {where}")


def accuracy_figure(acc: str | os.PathLike, source: str,
                    blind: str | os.PathLike | None = None) -> Figure:
    """This run per answer type beside the published ClipBERT, the blind baselines (this run's
    when it has one, the published figure) and the majority answer of this very split (the bar
    a model must clear by looking). `source` is the run's data.source: the legend and title say
    whether its questions are the embedded demo's or SQA3D's, and the published figures (hatched)
    say that they are the real SQA3D test split's, so that the demo reads as what it is."""
    if source not in SOURCES:
        raise ClipbertError(f"{acc}: data source {source!r}: expected one of "
                            f"{', '.join(SOURCES)}")
    where = SOURCES[source]
    result = read_json(acc)
    per_type = _need(acc, "top level", result, "per_type")
    overall = _need(acc, "top level", result, "overall")
    majority = _need(acc, "top level", result, "majority_baseline")
    groups = ["overall"] + [t for t in ANSWER_TYPES if t in per_type]
    series = [
        (_run_name(result, where), [overall] + [per_type[t] for t in groups[1:]], False),
        (f"ClipBERT, {PUBLISHED}", [PUBLISHED_CLIPBERT[g] for g in groups], True),
    ]
    if blind is not None:
        other = read_json(blind)
        b_types = _need(blind, "top level", other, "per_type")
        series.append((_run_name(other, where, blind=True),
                       [_need(blind, "top level", other, "overall")]
                       + [b_types.get(t, 0.0) for t in groups[1:]], False))
    series.append(("majority answer, this split", [majority.get("overall", 0.0)]
                   + [majority.get("per_type", {}).get(t, 0.0) for t in groups[1:]], False))

    fig = _figure(10, 5.2)
    ax = fig.subplots()
    x = np.arange(len(groups))
    w = 0.8 / len(series)
    handles = []
    for k, (label, values, published) in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * w, values, w, label=label,
                      hatch="//" if published else None, edgecolor="white" if published else None)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        handles.append(bars)
    handles.append(ax.hlines(PUBLISHED_BLIND, -0.5, 0.5, colors="k", linestyles="--",
                             label=f"blind text-only, {PUBLISHED}: {PUBLISHED_BLIND}"))
    if "ceiling" in result:
        handles.append(ax.axhline(result["ceiling"], color="grey", lw=0.8, ls=":",
                                  label=f"ceiling of this split ({result['ceiling']})"))
    counts = result.get("counts", {})
    ax.set_xticks(x, [g if g == "overall" else f"{g}\n(n={counts.get(g, '?')})" for g in groups])
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 110)
    n = result.get("n_questions", "?")
    split = result.get("split", "test")
    ax.set_title(
        f"{split} accuracy: {n} questions of the embedded demo (synthetic scenes, not SQA3D)\n"
        "hatched: published on the real SQA3D test split; the demo checks the stages, it "
        "reproduces nothing" if source == "demo" else
        f"{split} accuracy: {n} questions of SQA3D (data.source: {source})\n"
        "hatched: published on the real SQA3D test split", fontsize=10)
    fig.legend(handles=handles, fontsize=8, ncols=2, loc="outside lower center")
    fig.set_label(f"{split} accuracy, {where}: " + "; ".join(
        f"{label} {values[0]:.2f} overall" for label, values, _ in series)
        + f"; blind text-only, {PUBLISHED} {PUBLISHED_BLIND}")
    return fig


def confusion(rows: Sequence[dict], top: int) -> tuple[list[str], np.ndarray]:
    """Counts of (gold, predicted) over the `top` most frequent gold answers; the last column
    collects every other prediction, so each row sums to that answer's questions."""
    golds = [a for a, _ in Counter(r["answer"] for r in rows).most_common(top)]
    pos = {a: i for i, a in enumerate(golds)}
    m = np.zeros((len(golds), len(golds) + 1), dtype=np.int64)
    for r in rows:
        if r["answer"] in pos:
            m[pos[r["answer"]], pos.get(r["predicted"], len(golds))] += 1
    return golds, m


def confusion_figure(predictions: str | os.PathLike, top: int = 15) -> Figure:
    """Row-normalised confusion of the most frequent gold answers of the test split."""
    if top < 1:
        raise ClipbertError(f"{predictions}: top must be >= 1, got {top}")
    rows = _read_rows(predictions)
    if not rows:
        raise ClipbertError(f"{predictions}: no predictions")
    for n, r in enumerate(rows, 1):
        for key in ("answer", "predicted"):
            _need(predictions, f"record {n}", r, key)
    labels, m = confusion(rows, top)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = 3 + 0.45 * len(labels)
    fig = _figure(size + 1.5, size)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(m):
        if c:
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels) + 1), labels + ["(other)"], rotation=60, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(labels)), [f"{a} ({m[i].sum()})" for i, a in enumerate(labels)],
                  fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold (questions)")
    ax.set_title(f"confusion of the {len(labels)} most frequent test answers")
    fig.colorbar(im, ax=ax, label="share of the row", shrink=0.8)
    right = int(np.trace(m[:, :len(labels)]))
    fig.set_label(f"confusion of the {len(labels)} most frequent test answers: {right} of "
                  f"{int(m.sum())} of their questions answered right")
    return fig


# ---- frames as the model sees them ----------------------------------------------------------

def model_view(frames: np.ndarray, max_img_size: int) -> np.ndarray:
    """uint8 frames (..., H, W, 3) after the model's own resize and padding, back in RGB.

    Runs `data.preprocess_frames` and undoes only its mean subtraction and channel flip, so the
    picture shows exactly the canvas the network gets (the padding appears black).
    """
    import torch

    from clipbert.data import IMAGE_MEAN, preprocess_frames

    x = preprocess_frames(torch.from_numpy(np.ascontiguousarray(frames)), max_img_size)
    x = x.flip(-3) + torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    return x.clamp(0, 255).round().to(torch.uint8).movedim(-3, -1).numpy()


def frames_figure(lmdb: str | os.PathLike, preset: str = "faithful",
                  overrides: dict | None = None, n_clips: int | None = None,
                  scenes: int = 4) -> Figure:
    """A contact sheet: each row one scene's evaluation clips, sampled and resized as inference
    does with the settings of `preset` + `overrides` (`n_clips` evaluation clips if given, as
    infer.n_clips, else the preset's inference_n_clips)."""
    from clipbert.config import make_config

    cfg = make_config(preset, overrides or {})
    if n_clips is not None:
        if n_clips < 1:
            raise ClipbertError(f"{lmdb}: n_clips must be >= 1, got {n_clips}")
        cfg.inference_n_clips = n_clips
    return contact_sheet(lmdb, cfg, scenes)


def contact_sheet(lmdb_dir: str | os.PathLike, cfg: TrainConfig, scenes: int = 4) -> Figure:
    """The frames figure for a TrainConfig `cfg`: `scenes` scenes spread over the sorted keys,
    each `cfg.inference_n_clips` clips of `cfg.num_frm` frames."""
    from clipbert.video import read_clips
    from clipbert.vislmdb import VideoLMDB

    if scenes < 1:
        raise ClipbertError(f"{lmdb_dir}: scenes must be >= 1, got {scenes}")
    db = VideoLMDB(lmdb_dir)
    keys = sorted(db.keys())
    if not keys:
        raise ClipbertError(f"{lmdb_dir}: no videos")
    n = min(scenes, len(keys))  # spread over what there is: 3 asked of 2 shows both
    keys = [keys[round(i * (len(keys) - 1) / max(n - 1, 1))] for i in range(n)]
    n_clips, num_frm = cfg.inference_n_clips, cfg.num_frm
    cols = n_clips * num_frm
    width = max(1.6 * cols + 0.8, 6.0)  # room for the title over a sheet of one or two frames
    fig = _figure(width, 1.7 * len(keys) + 0.7)
    axes = np.array(fig.subplots(len(keys), cols, squeeze=False))
    rates = set()
    for r, key in enumerate(keys):
        clips = read_clips(db.get(key), num_frm=num_frm, fps=cfg.sample_fps, n_clips=n_clips,
                           train=False, name=f"{lmdb_dir}: {key}")
        rates.add(f"{float(clips.timing.rate):g}")
        view = model_view(clips.frames, cfg.max_img_size)
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(view[c // num_frm, c % num_frm])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"clip {c // num_frm + 1}, frame {c % num_frm + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(key, fontsize=8)
    title = (f"evaluation input: {n_clips} clip(s) x {num_frm} frames at {cfg.sample_fps:g} fps "
             f"of {'/'.join(sorted(rates))} fps video, {cfg.max_img_size} px canvas")
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 12))), fontsize=9)
    fig.set_label(f"{title}; scenes {', '.join(keys)}")
    return fig


# ---- benchmarks -----------------------------------------------------------------------------

def benchmark_files(folder: str | os.PathLike,
                    files: Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """The `.tsv` files to read: of `files` (the benchmark files of this run's jobs), those that
    exist, so that files left by an earlier run with another config are not read; without
    `files`, every `.tsv` under `folder` (none when it does not exist: a run made before the
    benchmark directives)."""
    if files is not None:
        return sorted(Path(f) for f in files if Path(f).is_file())
    return sorted(Path(folder).rglob("*.tsv"))


def _rule_of(path: Path, root: str | os.PathLike | None) -> str:
    """A benchmark file's rule: RULE.tsv directly in `root`, else the folder under `root` it
    is in (one file a job: RULE/SCENE.tsv). Without `root`, the folder is the rule unless it
    is called benchmarks."""
    if root is not None:
        parts = path.relative_to(root).parts
        return parts[0] if len(parts) > 1 else path.stem
    return path.parent.name if path.parent.name != "benchmarks" else path.stem


def read_benchmarks(paths: Sequence[str | os.PathLike],
                    root: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """Per rule (see _rule_of): jobs, total and longest wall seconds, peak RSS in MB (None when
    no job of the rule was sampled: `-`, a job shorter than Snakemake's first sample). The RSS
    is Snakemake's `max_rss`: the job's process tree summed, so pages that data-loader workers
    share with their parent count once per process."""
    import pandas as pd

    tables = []
    for p in map(Path, paths):
        try:
            t = pd.read_csv(p, sep="\t", dtype=str)
        except FileNotFoundError:
            raise ClipbertError(f"{p}: no such file") from None
        except pd.errors.EmptyDataError:
            t = pd.DataFrame()
        if t.empty:
            raise ClipbertError(f"{p}: no benchmark rows")
        if "s" not in t:
            raise ClipbertError(f"{p}: line 1: no 's' column (not a Snakemake benchmark file)")
        s = pd.to_numeric(t["s"], errors="coerce")
        unsampled = t["max_rss"] == "-" if "max_rss" in t else s.notna()
        rss = (pd.to_numeric(t["max_rss"].replace("-", "0"), errors="coerce") if "max_rss" in t
               else s * 0)
        bad = s.isna() | rss.isna()
        rss = rss.mask(unsampled)
        if bad.any():
            raise ClipbertError(f"{p}: line {int(bad.to_numpy().argmax()) + 2}: no numeric 's' / "
                                "'max_rss' column")
        tables.append(pd.DataFrame({"rule": _rule_of(p, root), "s": s, "max_rss": rss}))
    if not tables:
        return {}
    agg = pd.concat(tables).groupby("rule", sort=False).agg(
        jobs=("s", "size"), seconds=("s", "sum"), longest=("s", "max"), max_rss=("max_rss", "max"))
    return {rule: {k: (int(v) if k == "jobs" else None if pd.isna(v) else float(v))
                   for k, v in row.items()} for rule, row in agg.iterrows()}


def benchmarks_figure(folder: str | os.PathLike = "logs/benchmarks",
                      files: Sequence[str | os.PathLike] | None = None) -> Figure:
    """Wall time and peak memory of every rule, from the Snakemake `benchmark:` files under
    `folder`: those of `files` (this run's jobs) when given, else every one there."""
    bench = read_benchmarks(benchmark_files(folder, files), root=folder)
    if not bench:
        return _message(f"no benchmark files in {folder}: the stages ran before the workflow "
                        "recorded them")
    rules = sorted(bench, key=lambda r: bench[r]["seconds"])
    y = np.arange(len(rules))
    fig = _figure(11, 1 + 0.35 * len(rules))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    bars = ax1.barh(y, [bench[r]["seconds"] for r in rules], label="wall seconds")
    ax1.bar_label(bars, labels=[f"{bench[r]['seconds']:.1f} s "
                                f"({_plural(bench[r]['jobs'], 'job')}, "
                                f"longest {bench[r]['longest']:.1f})" for r in rules], fontsize=7)
    ax1.set_yticks(y, rules)
    ax1.set_xlabel("wall seconds, all jobs of the rule")
    ax1.margins(x=0.45)
    rss = [bench[r]["max_rss"] for r in rules]
    bars = ax2.barh(y, [m or 0.0 for m in rss], color="tab:orange", label="peak MB")
    ax2.bar_label(bars, labels=["not sampled (too short)" if m is None else f"{m:.0f} MB"
                                for m in rss], fontsize=7)
    ax2.set_xlabel("peak memory of one job, MB: Snakemake's max_rss, the resident memory of "
                   "the job's processes summed\n(pages that data-loader workers share count "
                   "once per process: more than any one process holds)", fontsize=8)
    ax2.margins(x=0.3)
    fig.set_label("benchmarks: " + ", ".join(
        f"{r} {_plural(bench[r]['jobs'], 'job')} {bench[r]['seconds']:.1f} s" for r in rules))
    return fig


# ---- seeds and variants ---------------------------------------------------------------------

def _interval_words(vs: dict | None) -> str:
    """`+38.55 [+36.59, +40.50]` (a single pair: the difference alone)."""
    if not vs or vs.get("mean") is None:
        return ""
    if vs.get("low") is None:
        return f"{vs['mean']:+.2f}"
    return f"{vs['mean']:+.2f} [{vs['low']:+.2f}, {vs['high']:+.2f}]"


def runs_figure(summary: str | os.PathLike, source: str) -> Figure:
    """Every variant of the runs (results/runs/summary.json) overall and per answer type: the
    mean (bar), one standard deviation (whisker) and each seed (dots), beside the published
    ClipBERT figures (hatched) and the published blind one (dashed); the title gives each
    variant's paired difference from the reference with its 95 % interval."""
    from clipbert.runs import CHECKPOINT_RUN, read_summary

    if source not in SOURCES:
        raise ClipbertError(f"{summary}: data source {source!r}: expected one of "
                            f"{', '.join(SOURCES)}")
    data = read_summary(summary)
    variants, reference = data["variants"], data["reference"]
    if not variants:
        raise ClipbertError(f"{summary}: no variants")
    groups = list(data["measures"])
    fig = _figure(max(10, 1.6 * len(groups) * (len(variants) + 1) / 2), 5.4)
    ax = fig.subplots()
    x = np.arange(len(groups))
    w = 0.8 / (len(variants) + 1)
    offsets = (np.arange(len(variants) + 1) - len(variants) / 2) * w
    published = ax.bar(x + offsets[-1], [PUBLISHED_CLIPBERT.get(g, 0.0) for g in groups], w,
                       label=f"ClipBERT, {PUBLISHED}", hatch="//", edgecolor="white",
                       color="lightgrey")
    ax.bar_label(published, fmt="%.1f", fontsize=7)
    words = []
    for k, (name, v) in enumerate(variants.items()):
        acc = v["accuracy"]
        mean = [acc[g]["mean"] if g in acc else np.nan for g in groups]
        std = [(acc[g]["std"] or 0.0) if g in acc else 0.0 for g in groups]
        n = v["n"]
        runs = _plural(n, "seed") if CHECKPOINT_RUN not in v["runs"] else "given checkpoint"
        bars = ax.bar(x + offsets[k], mean, w, yerr=std, capsize=3, alpha=0.8,
                      label=f"{name} ({runs})")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        points = [(x[i] + offsets[k], r[g]) for i, g in enumerate(groups)
                  for r in v["runs"].values() if r.get(g) is not None]
        # One series per variant, kept out of the legend by its leading underscore.
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", ms=3, color="black",
                zorder=3, label=f"_seeds of {name}")
        overall = acc["overall"]
        text = (f"{name} {overall['mean']:.2f}" + (
            f" ± {overall['std']:.2f} ({overall['min']:.2f}-{overall['max']:.2f})"
            if overall["std"] is not None else ""))
        vs = (v.get("vs_reference") or {}).get("overall")
        if vs:
            text += f", vs {reference} {_interval_words(vs)}"
        words.append(text)
    ax.plot([], [], "o", ms=3, color="black", label="one seed")
    ax.hlines(PUBLISHED_BLIND, x[0] - 0.45, x[0] + 0.45, colors="k", linestyles="--",
              label=f"blind text-only, {PUBLISHED}: {PUBLISHED_BLIND}")
    ax.set_xticks(x, groups)
    ax.set_ylabel("test accuracy %")
    ax.set_ylim(0, 110)
    level = int(round(100 * data.get("level", 0.95)))
    ax.set_title(f"runs on {SOURCES[source]}: mean ± std over the seeds, dots the seeds; "
                 f"difference from {reference} paired by seed, {level} % interval\n"
                 + "; ".join(words), fontsize=9)
    fig.legend(fontsize=8, ncols=3, loc="outside lower center")
    fig.set_label(f"runs, {SOURCES[source]}: " + "; ".join(words)
                  + f"; ClipBERT, {PUBLISHED} {PUBLISHED_CLIPBERT['overall']}")
    return fig


# ---- the environment table ---------------------------------------------------------------------


def environment_table(acc: str | os.PathLike, out: str | os.PathLike) -> str:
    """The provenance record of an accuracy file (its `environment`, clipbert.provenance) as a
    two-column TSV, the report's table of what made the result; returns its one-line summary."""
    from clipbert import provenance

    env = _need(acc, "top level", read_json(acc), "environment")
    if not isinstance(env, dict):
        raise ClipbertError(f"{acc}: environment: expected the provenance record, got {env!r}")
    rows = provenance.rows(env)
    with atomic_open(out) as fh:
        fh.write("key\tvalue\n")
        fh.writelines(f"{k}\t{v}\n" for k, v in rows)
    lock = env.get("lock", {})
    return (f"{len(rows)} rows; PyAV's libavcodec {env.get('pyav_ffmpeg', {}).get('libavcodec')}"
            f", installed set {'matches' if lock.get('matches') else 'differs from'} "
            f"{lock.get('file', 'the lock')}")


# ---- by name: the workflow's plot rules and `clipbert plot` -----------------------------------

FIGURES: dict[str, Callable[..., Figure]] = {
    "data": data_figure,
    "training": training_figure,
    "test_accuracy": accuracy_figure,
    "confusion": confusion_figure,
    "frames": frames_figure,
    "benchmarks": benchmarks_figure,
    "runs": runs_figure,
}


def figure(name: str, **inputs: Any) -> Figure:
    """The figure `name` (a key of FIGURES) of `inputs`, the builder's arguments by name."""
    if name not in FIGURES:
        raise ClipbertError(f"figure {name!r}: unknown (known: {', '.join(FIGURES)})")
    return FIGURES[name](**inputs)


def draw(name: str, out: str | os.PathLike, **inputs: Any) -> str:
    """Build the figure `name` of `inputs` and write it to `out` as a PNG, atomically; returns
    its one-line description (also in the PNG's metadata), for the log or the terminal."""
    fig = figure(name, **inputs)
    _save(fig, out)
    return fig.get_label()
