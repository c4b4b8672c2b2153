"""Seeds and variants: several trainings of one workflow, and what their spread says.

One training is one number; whether 43.31 is inside the noise of a reproduction, or how far one
setting moves the result, needs several. The config's `runs` block names variants (settings
layered on the main config: a preset, overrides, `infer.n_clips`, or a released checkpoint to
score instead of training) and seeds; every (variant, seed) pair is one run of the workflow
(rules/runs.smk), all on the same data.

With no variants named, the runs are those of the default target: `video`, the main config's
model, and `blind`, its blind baseline (when baselines.blind is on), compared with `blind`.
`plan_variants` resolves and checks the variants when the workflow starts (torch-free, like
`config`), so a misspelt override stops the dry run naming the variant and the key.
`summarize` reads every run's test_acc.json into one pandas table and gives, per variant, the
spread of overall and per-type accuracy and the difference against a reference variant paired
by seed, with a Student-t 95 % interval (the runs of one seed share the seed's draws, so the
paired difference is the tighter and the honest comparison).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipbert.config import TrainConfig, make_config, result_settings
from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_open, read_json, write_json
from clipbert.qa import ANSWER_TYPES, METRIC

if TYPE_CHECKING:
    import pandas as pd

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
CHECKPOINT_RUN = "checkpoint"  # the run folder of a variant that scores a given checkpoint
MEASURES = ("overall", *ANSWER_TYPES)
LEVEL = 0.95  # the paired difference's interval
BLIND = {"train": {"overrides": {"model.variant": "blind"}}}


@dataclass(frozen=True)
class Variant:
    """One variant of the runs block, resolved against the main config (without a seed)."""

    name: str
    preset: str
    overrides: dict  # the main config's train.overrides, then the variant's
    n_clips: int | None  # infer.n_clips (None: the preset's inference_n_clips)
    checkpoint: str | None  # a fine-tuned checkpoint scored instead of training
    cfg: TrainConfig

    @property
    def trained(self) -> bool:
        return self.checkpoint is None

    @property
    def blind(self) -> bool:
        """The question-only model: it reads no video, so the video LMDB is not its input."""
        return self.cfg.model.variant == "blind"

    def run_names(self, seeds: Sequence[int]) -> list[str]:
        """Its run folders under results/runs/<name>/: one per seed, or the one scoring of its
        checkpoint (the seed changes nothing there)."""
        return [f"seed{s}" for s in seeds] if self.trained else [CHECKPOINT_RUN]

    def run_config(self, seed: int) -> TrainConfig:
        return make_config(self.preset, {**self.overrides, "seed": seed})

    def result_settings(self, seed: int) -> dict:
        """Every setting of the run with `seed` that changes its result, resolved (the preset's
        values included; speed knobs are not among them): what the rules give Snakemake's
        rerun trigger, so that a run reruns when what it computes changes, and only then."""
        return result_settings(self.run_config(seed))


def plan_variants(config: Mapping[str, Any]) -> dict[str, Variant]:
    """The config's `runs.variants`, each layered on the main config and checked: a bad name, an
    unknown training setting or a seed set by hand is a ClipbertError naming the variant's key."""
    block = config.get("runs") or {}
    main_train, main_infer = config["train"], config["infer"]
    variants: dict[str, Variant] = {}
    for name, spec in (block.get("variants") or default_variants(config)).items():
        where = f"runs.variants.{name}"
        if not NAME.fullmatch(str(name)):
            raise ClipbertError(f"{where}: a variant's name is a folder name: letters, digits, "
                                "_ and -")
        spec = spec or {}
        train, infer = spec.get("train") or {}, spec.get("infer") or {}
        given = train.get("overrides") or {}
        if "seed" in given:
            raise ClipbertError(f"{where}.train.overrides: seed: the seeds are runs.seeds")
        preset = train.get("preset", main_train["preset"])
        overrides = {**main_train["overrides"], **given}
        overrides.pop("seed", None)
        try:
            cfg = make_config(preset, overrides)
        except ClipbertError as e:
            origin = "train" if "preset" in train or set(given) else "(the main config's) train"
            raise ClipbertError(f"{where}.{origin}.overrides: {e}") from None
        variants[name] = Variant(name, preset, overrides,
                                 infer.get("n_clips", main_infer["n_clips"]),
                                 infer.get("model"), cfg)
    reference = block.get("reference")
    if reference is not None and reference not in variants:
        raise ClipbertError(f"runs.reference: {reference!r} is not a variant (runs.variants: "
                            f"{', '.join(variants) or 'none'})")
    return variants


def default_variants(config: Mapping[str, Any]) -> dict[str, dict]:
    """The variants when the config names none: the default target's models, seeded."""
    blind = config.get("baselines", {}).get("blind", True)
    return {"video": {}, **({"blind": BLIND} if blind else {})}


def reference_of(config: Mapping[str, Any], variants: Mapping[str, Variant]) -> str | None:
    """The variant the others are compared with: runs.reference, else the default variants'
    blind baseline, else the first."""
    block = config.get("runs") or {}
    if block.get("reference"):
        return block["reference"]
    if not block.get("variants") and "blind" in variants:
        return "blind"
    return next(iter(variants), None)


# ---- the summary ------------------------------------------------------------------------------

def read_results(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Every run's test_acc.json (results/runs/<variant>/<run>/test_acc.json) as one long table:
    variant, run, seed (none for a scored checkpoint), measure (overall or an answer type),
    accuracy."""
    import pandas as pd

    rows = []
    for path in map(Path, paths):
        variant, run = path.parent.parent.name, path.parent.name
        m = re.fullmatch(r"seed(\d+)", run)
        if not m and run != CHECKPOINT_RUN:
            raise ClipbertError(f"{path}: not a run's result (results/runs/<variant>/seed<N>/"
                                "test_acc.json)")
        result = read_json(path)
        if not isinstance(result, dict) or "overall" not in result:
            raise ClipbertError(f"{path}: top level: missing key 'overall'")
        scores = {"overall": result["overall"], **(result.get("per_type") or {})}
        for measure, acc in scores.items():
            if not isinstance(acc, int | float) or isinstance(acc, bool):
                raise ClipbertError(f"{path}: {measure}: expected a number, got {acc!r}")
            rows.append({"variant": variant, "run": run, "seed": int(m[1]) if m else None,
                         "measure": measure, "accuracy": float(acc)})
    if not rows:
        raise ClipbertError("no runs to summarize: config runs.variants is empty")
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    return table


def _t_interval(diffs: pd.Series) -> tuple[float, float]:
    """The `LEVEL` Student-t interval of the mean of `diffs` (NaN with fewer than two)."""
    from scipy import stats

    n = int(diffs.count())
    if n < 2:
        return float("nan"), float("nan")
    if float(diffs.std()) == 0.0:
        return float(diffs.mean()), float(diffs.mean())
    low, high = stats.t.interval(LEVEL, n - 1, loc=diffs.mean(), scale=diffs.sem())
    return float(low), float(high)


def paired_differences(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each run's accuracy minus the reference variant's of the same seed and measure (a scored
    checkpoint, one result, pairs with every seed). Columns: variant, run, measure, diff."""
    ref = table[table["variant"] == reference]
    if ref.empty:
        raise ClipbertError(f"runs.reference: {reference!r} has no results")
    others = table[table["variant"] != reference]
    ref_single = ref["seed"].isna().all()
    parts = []
    for _, own in others.groupby("variant", sort=False):
        on = ["measure"] if ref_single or own["seed"].isna().all() else ["seed", "measure"]
        merged = own.merge(ref[[*on, "accuracy"]], on=on, suffixes=("", "_ref"))
        parts.append(merged.assign(diff=merged["accuracy"] - merged["accuracy_ref"]))
    if not parts:
        return table.iloc[:0].assign(diff=[])[["variant", "run", "measure", "diff"]]
    import pandas as pd

    return pd.concat(parts)[["variant", "run", "measure", "diff"]]


def summarize(table: pd.DataFrame, reference: str | None = None,
              seeds: Sequence[int] = ()) -> tuple[dict, pd.DataFrame]:
    """The summary of `read_results`' table: a JSON-ready dict and the flat table (one row per
    variant and measure) written as summary.tsv."""
    import numpy as np

    order = list(dict.fromkeys(table["variant"]))
    reference = reference or order[0]
    measures = [m for m in MEASURES if m in set(table["measure"])]
    keys = ["variant", "measure"]
    stats = table.groupby(keys, sort=False)["accuracy"].agg(
        n="count", mean="mean", std="std", min="min", max="max")
    diffs = paired_differences(table, reference)
    paired = diffs.groupby(keys, sort=False)["diff"].agg(
        pairs="count", diff_mean="mean", diff_low=lambda d: _t_interval(d)[0],
        diff_high=lambda d: _t_interval(d)[1])
    flat = stats.join(paired, how="left").reset_index()
    flat["variant"] = _categorical(flat["variant"], order)
    flat["measure"] = _categorical(flat["measure"], measures)
    flat = flat.sort_values(keys).reset_index(drop=True)
    flat["pairs"] = flat["pairs"].fillna(0).astype(int)
    numbers = ["mean", "std", "min", "max", "diff_mean", "diff_low", "diff_high"]
    flat[numbers] = flat[numbers].astype(float).round(2)

    def value(x: Any) -> Any:
        return None if x is None or (isinstance(x, float) and np.isnan(x)) else x

    per_run = table.pivot_table(index=["variant", "run"], columns="measure",
                                values="accuracy", sort=False)
    per_diff = diffs.pivot_table(index=["variant", "run"], columns="measure", values="diff",
                                 sort=False).round(2)
    summary: dict[str, Any] = {"reference": reference, "seeds": list(seeds) or sorted(
        int(s) for s in table["seed"].dropna().unique()), "measures": measures,
        "level": LEVEL, "variants": {}}
    for name in order:
        rows = flat[flat["variant"] == name].set_index("measure")
        runs = per_run.loc[name]
        entry: dict[str, Any] = {
            "runs": {run: {m: value(runs.loc[run].get(m)) for m in measures} for run in runs.index},
            "n": int(rows.loc["overall", "n"]),
            "accuracy": {m: {k: value(float(rows.loc[m, k])) for k in
                             ("mean", "std", "min", "max")} for m in measures if m in rows.index},
            "vs_reference": None,
        }
        if name != reference:
            d = per_diff.loc[name]
            entry["vs_reference"] = {m: {
                "pairs": int(rows.loc[m, "pairs"]),
                "per_run": {run: value(d.loc[run].get(m)) for run in d.index},
                **{k: value(float(rows.loc[m, f"diff_{k}"])) for k in ("mean", "low", "high")},
            } for m in measures if m in rows.index}
        summary["variants"][name] = entry
    return summary, flat


def _categorical(column: pd.Series, order: Sequence[str]) -> pd.Categorical:
    """`column` sorted as `order` (the config's variants, then the measures), not by name."""
    import pandas as pd

    return pd.Categorical(column, categories=list(order), ordered=True)


def write_summary(results: Sequence[str | os.PathLike], json_out: str | os.PathLike,
                  tsv_out: str | os.PathLike, reference: str | None = None,
                  seeds: Sequence[int] = ()) -> str:
    """Read every run's result, write summary.json (with the metric and the provenance record of
    the environment that summarizes; each run's own is in its test_acc.json) and summary.tsv
    atomically; returns the overall accuracy per variant as a text table (what the rule prints to
    its log)."""
    from clipbert import provenance

    summary, flat = summarize(read_results(results), reference, seeds)
    summary = {"metric": METRIC, **summary, "environment": provenance.record()}
    write_json(json_out, summary)
    with atomic_open(tsv_out) as fh:
        flat.to_csv(fh, sep="\t", index=False, na_rep="")
    return format_summary(flat, summary["reference"])


def format_summary(flat: pd.DataFrame, reference: str) -> str:
    """Overall accuracy per variant: n, mean, std, min, max, and the paired difference against
    the reference with its interval."""
    overall = flat[flat["measure"] == "overall"].drop(columns="measure").set_index("variant")
    pct = int(LEVEL * 100)
    interval = overall.apply(
        lambda r: "" if r["pairs"] == 0 else f"{r['diff_mean']:+.2f} [{r['diff_low']:+.2f}, "
        f"{r['diff_high']:+.2f}]" if r["pairs"] > 1 else f"{r['diff_mean']:+.2f}", axis=1)
    shown = overall[["n", "mean", "std", "min", "max"]].assign(
        **{f"vs {reference} (paired, {pct} % CI)": interval})
    return ("overall test accuracy % over the seeds\n"
            + shown.to_string(na_rep="-", float_format=lambda v: f"{v:.2f}"))


def read_summary(path: str | os.PathLike) -> dict:
    """summary.json as `write_summary` wrote it (for the report's plot)."""
    summary = read_json(path)
    for key in ("reference", "variants", "measures"):
        if not isinstance(summary, dict) or key not in summary:
            raise ClipbertError(f"{path}: top level: missing key {key!r}")
    return summary
