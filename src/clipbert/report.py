"""The plots of the Snakemake report: what a researcher looks at to judge a run.

Each function reads the files a workflow stage wrote and writes one PNG atomically (matplotlib's
object API, no pyplot: no global state, no display needed). A missing or malformed input is a
ClipbertError naming the file, and no half-written PNG is left behind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_path, read_json, read_jsonl
from clipbert.qa import ANSWER_TYPES
from clipbert.sqa import PUBLISHED_BLIND, PUBLISHED_CLIPBERT

DPI = 110


def _figure(width: float, height: float):
    """A figure detached from pyplot, so plotting works headless and in any thread."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, out: str | os.PathLike, description: str | None = None) -> Path:
    """Write the PNG atomically; `description` also goes into its metadata (a PNG text chunk),
    where a reader or a test finds what the figure says without looking at it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png",
                    metadata={"Description": description} if description else None)
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


# ---- data statistics --------------------------------------------------------------------------

def video_frame_counts(lmdb_dir: str | os.PathLike) -> dict[str, int]:
    """Frames of every video in the LMDB: what the model can sample from, scene by scene."""
    from clipbert.video import probe_video
    from clipbert.vislmdb import VideoLMDB

    db = VideoLMDB(lmdb_dir)
    return {k: probe_video(db.get(k), name=f"{lmdb_dir}: {k}")["n_frames"] for k in db.keys()}


def plot_data(stats_path: str | os.PathLike, lmdb_dir: str | os.PathLike,
              out: str | os.PathLike) -> Path:
    """Questions per split and answer type, `unknown` share and accuracy ceiling, frames/scene."""
    stats = read_json(stats_path)
    if not isinstance(stats, dict) or not stats:
        raise ClipbertError(f"{stats_path}: no splits")
    splits = list(stats)
    counts = {s: _need(stats_path, s, stats[s], "answer_types") for s in splits}
    frames = video_frame_counts(lmdb_dir)

    fig = _figure(13, 4)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bottom = np.zeros(len(splits))
    for t in ANSWER_TYPES:
        v = np.array([counts[s].get(t, 0) for s in splits], dtype=float)
        ax1.bar(splits, v, bottom=bottom, label=t)
        bottom += v
    for i, s in enumerate(splits):
        ax1.annotate(f"{int(bottom[i])} q\n{_need(stats_path, s, stats[s], 'scenes')} scenes",
                     (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax1.set_ylim(0, max(bottom.max(), 1) * 1.25)
    ax1.set_title("questions per split and answer type")
    ax1.legend(fontsize=7, ncols=3, loc="upper right")

    x = np.arange(len(splits))
    unknown = [_need(stats_path, s, stats[s], "unknown_percent") for s in splits]
    ceiling = [_need(stats_path, s, stats[s], "accuracy_ceiling") for s in splits]
    b1 = ax2.bar(x - 0.2, unknown, 0.4, label="'unknown' answers %")
    b2 = ax2.bar(x + 0.2, ceiling, 0.4, label="accuracy ceiling %")
    ax2.bar_label(b1, fmt="%.1f", fontsize=8)
    ax2.bar_label(b2, fmt="%.1f", fontsize=8)
    ax2.set_xticks(x, splits)
    ax2.set_ylim(0, 115)
    ax2.set_title("answers outside the vocabulary")
    ax2.legend(fontsize=7, loc="upper left")

    n = np.array(list(frames.values()))
    ax3.hist(n, bins=min(30, max(len(set(n.tolist())), 1)))
    ax3.set_xlabel("video frames per scene")
    ax3.set_ylabel("scenes")
    ax3.set_title(f"{len(n)} scene videos: {n.min()}-{n.max()} frames, median {np.median(n):g}"
                  if len(n) else "no videos")
    return _save(fig, out)


# ---- training -------------------------------------------------------------------------------

def plot_training(log_path: str | os.PathLike | None, out: str | os.PathLike,
                  checkpoint: str | os.PathLike | None = None) -> Path:
    """Loss, learning rates and validation accuracy against the optimisation step. Without a
    log (the workflow only evaluated `checkpoint`, infer.model) the figure says that nothing
    was trained here, so the report has no empty or stale panel."""
    if log_path is None:
        text = "not trained here: " + (
            f"the test accuracy comes from the given checkpoint {Path(checkpoint).name} "
            "(infer.model)" if checkpoint else "no training log")
        fig = _figure(13, 1.6)
        fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=13)
        return _save(fig, out, description=text)
    rows = _read_rows(log_path)
    if not rows:
        raise ClipbertError(f"{log_path}: no training log rows")
    for n, r in enumerate(rows, 1):
        _need(log_path, f"record {n}", r, "step")

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = _figure(13, 3.6)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(*series("loss"), marker=".", lw=1)
    ax1.set_title("training loss (mean over the logging interval)")
    for key, label in (("lr", "transformer"), ("cnn_lr", "CNN")):
        steps, values = series(key)
        if steps:
            ax2.plot(steps, values, label=label)
    ax2.set_title("learning rate")
    ax2.legend(fontsize=8)
    steps, acc = series("val_acc")
    ax3.plot(steps, acc, marker="o", ms=3)
    if acc:
        best = int(np.argmax(acc))
        ax3.annotate(f"best {acc[best]:.2f}", (steps[best], acc[best]), fontsize=8,
                     xytext=(0, 6), textcoords="offset points", ha="center")
    ax3.set_title("validation accuracy %")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, out)


# ---- test accuracy --------------------------------------------------------------------------

def plot_accuracy(acc_path: str | os.PathLike, out: str | os.PathLike,
                  blind_path: str | os.PathLike | None = None) -> Path:
    """This run per answer type beside the published ClipBERT, the blind baselines (this run's
    when it trained one, the published figure) and the majority answer of this very split (the
    bar a model must clear by looking)."""
    acc = read_json(acc_path)
    per_type = _need(acc_path, "top level", acc, "per_type")
    overall = _need(acc_path, "top level", acc, "overall")
    majority = _need(acc_path, "top level", acc, "majority_baseline")
    groups = ["overall"] + [t for t in ANSWER_TYPES if t in per_type]
    name = (f"this run ({acc.get('preset', '?')})" if acc.get("trained_here", True) else
            f"{acc.get('checkpoint_name', '?')} ({acc.get('preset', '?')}), not trained here")
    series = [
        (name, [overall] + [per_type[t] for t in groups[1:]]),
        ("ClipBERT, published", [PUBLISHED_CLIPBERT[g] for g in groups]),
    ]
    if blind_path is not None:
        blind = read_json(blind_path)
        b_types = _need(blind_path, "top level", blind, "per_type")
        series.append(("blind baseline, this run" if blind.get("trained_here", True) else
                       f"blind baseline ({blind.get('checkpoint_name', '?')}), not trained here",
                       [_need(blind_path, "top level", blind, "overall")]
                       + [b_types.get(t, 0.0) for t in groups[1:]]))
    series.append(("majority answer, this split",
                   [majority.get("overall", 0.0)]
                   + [majority.get("per_type", {}).get(t, 0.0) for t in groups[1:]]))

    fig = _figure(10, 4.8)
    ax = fig.subplots()
    x = np.arange(len(groups))
    w = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * w, values, w, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.hlines(PUBLISHED_BLIND, -0.5, 0.5, colors="k", linestyles="--",
              label=f"blind text-only, published ({PUBLISHED_BLIND})")
    if "ceiling" in acc:
        ax.axhline(acc["ceiling"], color="grey", lw=0.8, ls=":",
                   label=f"ceiling of this split ({acc['ceiling']})")
    counts = acc.get("counts", {})
    ax.set_xticks(x, [g if g == "overall" else f"{g}\n(n={counts.get(g, '?')})" for g in groups])
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 110)
    ax.set_title(f"test accuracy, {acc.get('n_questions', '?')} questions")
    fig.legend(fontsize=8, ncols=3, loc="outside lower center")
    return _save(fig, out)


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


def plot_confusion(pred_path: str | os.PathLike, out: str | os.PathLike, top: int = 15) -> Path:
    """Row-normalised confusion of the most frequent gold answers of the test split."""
    rows = _read_rows(pred_path)
    if not rows:
        raise ClipbertError(f"{pred_path}: no predictions")
    for n, r in enumerate(rows, 1):
        for key in ("answer", "predicted"):
            _need(pred_path, f"record {n}", r, key)
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
    return _save(fig, out)


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


def plot_frames(lmdb_dir: str | os.PathLike, out: str | os.PathLike, cfg,
                scenes: int = 4) -> Path:
    """A contact sheet: each row one scene's evaluation clips (`cfg.inference_n_clips` clips of
    `cfg.num_frm` frames), sampled and resized as inference does; `cfg` is a TrainConfig."""
    from clipbert.video import read_clips
    from clipbert.vislmdb import VideoLMDB

    if scenes < 1:
        raise ClipbertError(f"plot_frames: scenes must be >= 1, got {scenes}")
    db = VideoLMDB(lmdb_dir)
    keys = sorted(db.keys())
    if not keys:
        raise ClipbertError(f"{lmdb_dir}: no videos")
    keys = [keys[round(i * (len(keys) - 1) / max(scenes - 1, 1))]
            for i in range(min(scenes, len(keys)))]
    keys = list(dict.fromkeys(keys))
    n_clips, num_frm = cfg.inference_n_clips, cfg.num_frm
    cols = n_clips * num_frm
    fig = _figure(1.6 * cols + 0.8, 1.7 * len(keys) + 0.5)
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
    fig.suptitle(f"evaluation input: {n_clips} clip(s) x {num_frm} frames at "
                 f"{cfg.sample_fps:g} fps of {'/'.join(sorted(rates))} fps video, "
                 f"{cfg.max_img_size} px canvas", fontsize=9)
    return _save(fig, out)


# ---- benchmarks -----------------------------------------------------------------------------

def benchmark_files(folder: str | os.PathLike) -> list[Path]:
    """Every `.tsv` under `folder` (none when it does not exist: a run made before the
    benchmark directives)."""
    return sorted(Path(folder).rglob("*.tsv"))


def read_benchmarks(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, float]]:
    """Per rule (the benchmark file's folder under logs/benchmarks/, else the file's stem):
    jobs, total and longest wall seconds, peak RSS in MB (`-`, not measured, counts as 0)."""
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
        rss = (pd.to_numeric(t["max_rss"].replace("-", "0"), errors="coerce") if "max_rss" in t
               else s * 0)
        bad = s.isna() | rss.isna()
        if bad.any():
            raise ClipbertError(f"{p}: line {int(bad.to_numpy().argmax()) + 2}: no numeric 's' / "
                                "'max_rss' column")
        tables.append(pd.DataFrame({"rule": p.parent.name if p.parent.name != "benchmarks"
                                    else p.stem, "s": s, "max_rss": rss}))
    if not tables:
        return {}
    agg = pd.concat(tables).groupby("rule", sort=False).agg(
        jobs=("s", "size"), seconds=("s", "sum"), longest=("s", "max"), max_rss=("max_rss", "max"))
    return {rule: {k: (int(v) if k == "jobs" else float(v)) for k, v in row.items()}
            for rule, row in agg.iterrows()}


def plot_benchmarks(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Wall time and peak memory of every rule, from Snakemake's `benchmark:` files."""
    bench = read_benchmarks(paths)
    if not bench:
        fig = _figure(6, 1.5)
        fig.text(0.5, 0.5, "no benchmark files: the stages ran before the workflow recorded them",
                 ha="center", va="center")
        return _save(fig, out)
    rules = sorted(bench, key=lambda r: bench[r]["seconds"])
    y = np.arange(len(rules))
    fig = _figure(11, 1 + 0.35 * len(rules))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    bars = ax1.barh(y, [bench[r]["seconds"] for r in rules])
    ax1.bar_label(bars, labels=[f"{bench[r]['seconds']:.1f} s ({int(bench[r]['jobs'])} jobs, "
                                f"longest {bench[r]['longest']:.1f})" for r in rules], fontsize=7)
    ax1.set_yticks(y, rules)
    ax1.set_xlabel("wall seconds, all jobs of the rule")
    ax1.margins(x=0.45)
    bars = ax2.barh(y, [bench[r]["max_rss"] for r in rules], color="tab:orange")
    ax2.bar_label(bars, fmt="%.0f MB", fontsize=7)
    ax2.set_xlabel("peak resident memory of one job, MB")
    ax2.margins(x=0.3)
    return _save(fig, out)
