"""Seeds and variants (config `runs`): planning, the pandas summary, its plot, and the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, job_stats
from test_report import description, lines
from test_workflow import DETAILS, SMALL, snakemake

from clipbert import qa, report, runs
from clipbert.config import settings_fingerprint
from clipbert.errors import ClipbertError
from clipbert.smk import config_problems

SCHEMA = yaml.safe_load((REPO / "config/schema.yaml").read_text())
TWO_BY_THREE = {**SMALL, "runs": {"seeds": [0, 1, 2], "variants": {
    "video": {}, "blind": {"train": {"overrides": {"model.variant": "blind"}}}}}}


def full_config(extra: dict) -> dict:
    """A config as the Snakefile sees it: the demo's file, `extra` on top, schema defaults."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    assert config_problems(config, SCHEMA) == []
    return config


# ---- the plan ---------------------------------------------------------------------------------

def test_variants_are_layered_on_the_main_config_and_seeded():
    config = full_config({"train": {"preset": "tiny", "overrides": {"lr": 1e-3, "log_every": 5}},
                          "infer": {"n_clips": 3},
                          "runs": {"seeds": [4, 7], "variants": {
                              "base": None,
                              "faithful": {"train": {"preset": "faithful"}},
                              "deep": {"train": {"overrides": {"model.num_layers": 3}},
                                       "infer": {"n_clips": 1}}}}})
    plan = runs.plan_variants(config)
    assert list(plan) == ["base", "faithful", "deep"]
    base, faithful, deep = plan.values()
    assert (base.preset, base.cfg.lr, base.cfg.model.num_layers, base.n_clips) == \
        ("tiny", 1e-3, 2, 3)
    assert (faithful.preset, faithful.cfg.lr, faithful.cfg.model.hidden_size) == \
        ("faithful", 1e-3, 768)
    assert (deep.cfg.model.num_layers, deep.cfg.lr, deep.n_clips) == (3, 1e-3, 1)
    assert base.run_names(config["runs"]["seeds"]) == ["seed4", "seed7"]
    assert base.run_config(7).seed == 7 and base.run_config(4).seed == 4
    # The resume fingerprint sees the seed: one seed's state is never resumed by another.
    assert settings_fingerprint(base.run_config(4)) != settings_fingerprint(base.run_config(7))
    # The rerun trigger: every result-changing setting, resolved, the seed among them; no
    # speed knob (log_every is given, checkpoint_every comes with the preset).
    settings = deep.result_settings(7)
    assert settings["seed"] == 7 and settings["model.num_layers"] == 3
    assert settings["lr"] == 1e-3 and settings["model.hidden_size"] == 128
    assert settings["preset"] == "tiny"
    assert "log_every" not in settings and "checkpoint_every" not in settings
    assert runs.reference_of(config, plan) == "base"


def test_default_variants_are_the_default_targets_models():
    plan = runs.plan_variants(full_config({}))
    assert list(plan) == ["video", "blind"]
    assert (plan["video"].blind, plan["blind"].blind) == (False, True)
    assert runs.reference_of(full_config({}), plan) == "blind"
    no_blind = full_config({"baselines": {"blind": False}})
    assert list(runs.plan_variants(no_blind)) == ["video"]


@pytest.mark.parametrize(("variants", "reference", "message"), [
    ({"deep": {"train": {"overrides": {"model.layers": 3}}}}, None,
     "runs.variants.deep.train.overrides: unknown training setting 'model.layers'; did you mean "
     "model.num_layers?"),
    ({"fast": {"train": {"overrides": {"lr": "high"}}}}, None,
     "runs.variants.fast.train.overrides: training setting 'lr': expected a number"),
    ({"s": {"train": {"overrides": {"seed": 3}}}}, None,
     "runs.variants.s.train.overrides: seed: the seeds are runs.seeds"),
    ({"a": {}}, "b", "runs.reference: 'b' is not a variant (runs.variants: a)"),
])
def test_bad_variants_name_the_variant_and_key(variants, reference, message):
    config = full_config({"runs": {"variants": variants, "reference": reference}})
    with pytest.raises(ClipbertError, match=None) as e:
        runs.plan_variants(config)
    assert message in str(e.value)


def test_schema_checks_the_runs_block():
    bad = {"runs": {"seeds": [], "variants": {"a/b": {}, "c": {"train": {"preset": "x"}},
                                               "d": {"infer": {"clips": 2}}}}}
    config = yaml.safe_load((REPO / "config/config.yaml").read_text()) | bad
    problems = "\n".join(config_problems(config, SCHEMA))
    assert "runs.seeds" in problems
    assert "runs.variants" in problems and "a/b" in problems
    assert "runs.variants.c.train.preset" in problems
    assert "runs.variants.d.infer.clips: unknown key" in problems


# ---- the summary ------------------------------------------------------------------------------

def write_result(root: Path, variant: str, run: str, overall: float, **per_type: float) -> Path:
    path = root / "results/runs" / variant / run / "test_acc.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overall": overall, "per_type": per_type}))
    return path


def three_seeds(tmp_path: Path) -> list[Path]:
    # video - blind per seed: overall 1, 2, 3 (mean 2, sd 1); `what` 10 each seed.
    return [write_result(tmp_path, "video", "seed0", 41.0, what=20.0, can=50.0),
            write_result(tmp_path, "video", "seed1", 43.0, what=21.0, can=50.0),
            write_result(tmp_path, "video", "seed2", 45.0, what=22.0, can=50.0),
            write_result(tmp_path, "blind", "seed0", 40.0, what=10.0, can=40.0),
            write_result(tmp_path, "blind", "seed1", 41.0, what=11.0, can=50.0),
            write_result(tmp_path, "blind", "seed2", 42.0, what=12.0, can=60.0)]


def test_summary_spread_and_paired_interval(tmp_path):
    out_json, out_tsv = tmp_path / "summary.json", tmp_path / "summary.tsv"
    printed = runs.write_summary(three_seeds(tmp_path), out_json, out_tsv, "blind", [0, 1, 2])
    summary = json.loads(out_json.read_text())
    assert summary["reference"] == "blind" and summary["seeds"] == [0, 1, 2]
    assert summary["measures"] == ["overall", "what", "can"]
    assert summary["metric"] == qa.METRIC and summary["environment"]["python"]
    assert "libavcodec" in summary["environment"]["pyav_ffmpeg"]
    video, blind = summary["variants"]["video"], summary["variants"]["blind"]
    assert video["n"] == blind["n"] == 3
    assert video["accuracy"]["overall"] == {"mean": 43.0, "std": 2.0, "min": 41.0, "max": 45.0}
    assert blind["accuracy"]["can"] == {"mean": 50.0, "std": 10.0, "min": 40.0, "max": 60.0}
    assert video["runs"]["seed1"] == {"overall": 43.0, "what": 21.0, "can": 50.0}
    assert blind["vs_reference"] is None
    d = video["vs_reference"]["overall"]
    # Differences 1, 2, 3: mean 2, standard error 1/sqrt(3), t(0.975, 2 df) = 4.302653.
    half = 4.302653 / 3 ** 0.5
    assert d["pairs"] == 3 and d["per_run"] == {"seed0": 1.0, "seed1": 2.0, "seed2": 3.0}
    assert (d["mean"], d["low"], d["high"]) == (2.0, round(2 - half, 2), round(2 + half, 2))
    what = video["vs_reference"]["what"]
    assert (what["mean"], what["low"], what["high"]) == (10.0, 10.0, 10.0)  # no spread at all
    # Unpaired, the spread of `can` (std 10 in blind) would hide a difference the pairing shows.
    assert video["vs_reference"]["can"]["per_run"] == {"seed0": 10.0, "seed1": 0.0,
                                                       "seed2": -10.0}
    table = out_tsv.read_text().splitlines()
    assert table[0].split("\t") == ["variant", "measure", "n", "mean", "std", "min", "max",
                                    "pairs", "diff_mean", "diff_low", "diff_high"]
    assert table[1].split("\t") == ["video", "overall", "3", "43.0", "2.0", "41.0", "45.0", "3",
                                    "2.0", str(round(2 - half, 2)), str(round(2 + half, 2))]
    assert table[4].split("\t")[:3] == ["blind", "overall", "3"]
    assert table[4].split("\t")[7:] == ["0", "", "", ""]
    assert "video    3 43.00 2.00 41.00 45.00" in printed and "+2.00 [-0.48, +4.48]" in printed


def test_one_variant_alone_has_no_differences(tmp_path):
    summary, flat = runs.summarize(runs.read_results(three_seeds(tmp_path)[:3]))
    assert summary["reference"] == "video" and summary["variants"]["video"]["n"] == 3
    assert summary["variants"]["video"]["vs_reference"] is None
    assert flat["pairs"].tolist() == [0, 0, 0] and flat["diff_low"].isna().all()


def test_a_scored_checkpoint_pairs_with_every_seed(tmp_path):
    paths = three_seeds(tmp_path)[:3] + [write_result(tmp_path, "released", "checkpoint", 40.0)]
    summary, flat = runs.summarize(runs.read_results(paths), "released")
    assert summary["variants"]["released"]["n"] == 1
    assert summary["variants"]["released"]["accuracy"]["overall"]["std"] is None
    vs = summary["variants"]["video"]["vs_reference"]["overall"]
    assert vs["per_run"] == {"seed0": 1.0, "seed1": 3.0, "seed2": 5.0} and vs["mean"] == 3.0
    assert list(flat["variant"].unique()) == ["video", "released"]


def test_bad_results_name_the_file(tmp_path):
    bad = tmp_path / "results/runs/video/seed0/test_acc.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"per_type": {}}))
    with pytest.raises(ClipbertError, match=f"{bad}: top level: missing key 'overall'"):
        runs.read_results([bad])
    bad.write_text(json.dumps({"overall": "high"}))
    with pytest.raises(ClipbertError, match=f"{bad}: overall: expected a number"):
        runs.read_results([bad])
    other = write_result(tmp_path, "video", "best", 1.0)
    with pytest.raises(ClipbertError, match="not a run's result"):
        runs.read_results([other])
    with pytest.raises(ClipbertError, match="no runs to summarize"):
        runs.read_results([])
    out = tmp_path / "summary.json"
    with pytest.raises(ClipbertError):
        runs.write_summary([bad], out, tmp_path / "summary.tsv")
    assert not out.exists()


def test_runs_plot(tmp_path):
    runs.write_summary(three_seeds(tmp_path), tmp_path / "summary.json",
                       tmp_path / "summary.tsv", "blind")
    fig = report.figure("runs", summary=tmp_path / "summary.json", source="demo")
    (ax,) = fig.axes
    drawn = {c.get_label(): [round(b.get_height(), 2) for b in c.patches]
             for c in ax.containers if hasattr(c, "patches")}  # bars, not their error bars
    assert drawn["video (3 seeds)"] == [43.0, 21.0, 50.0]
    assert drawn["blind (3 seeds)"] == [41.0, 11.0, 50.0]
    assert drawn["ClipBERT, published (real SQA3D test split)"][0] == 43.31
    points = lines(ax)
    assert sorted(y for _, y in points["_seeds of video"]) == sorted(
        [41.0, 43.0, 45.0, 20.0, 21.0, 22.0, 50.0, 50.0, 50.0])
    label = fig.get_label()
    assert "video 43.00 ± 2.00 (41.00-45.00), vs blind +2.00 [-0.48, +4.48]" in label
    assert "embedded demo data" in label
    out = tmp_path / "runs.png"
    assert report.draw("runs", out, summary=tmp_path / "summary.json", source="scannet") == \
        description(out)
    with pytest.raises(ClipbertError, match="data source 'x'"):
        report.figure("runs", summary=tmp_path / "summary.json", source="x")


# ---- the DAG ----------------------------------------------------------------------------------

def test_two_variants_three_seeds_share_one_data_half(tmp_path):
    proc = snakemake(tmp_path, "-n", "results/runs/summary.json", *DETAILS, config=TWO_BY_THREE)
    counts = job_stats(proc.stdout)
    assert counts == {"demo_data": 1, "scene": 6, "pack_lmdb": 1, "sqa_convert": 1,
                      "train_run": 6, "infer_run": 6, "runs_summary": 1, "total": 22}, counts
    trains = proc.stdout.split("rule train_run:")[1:]
    blind = [t for t in trains if "results/runs/blind/" in t.split("output:")[1][:200]]
    assert len(blind) == 3
    for t in blind:  # the blind runs read no video, so a new video never reruns them
        assert "vis_db" not in t.split("output:")[0]
    for seed in (0, 1, 2):
        assert f"results/runs/video/seed{seed}/model.pt" in proc.stdout
    # The default target is today's: no run in it.
    assert "train_run" not in job_stats(snakemake(tmp_path, "-n", config=TWO_BY_THREE).stdout)


def test_misspelt_variant_override_stops_the_dry_run(tmp_path):
    cfg = {**SMALL, "runs": {"variants": {"video": {}, "deep": {
        "train": {"overrides": {"model.num_layer": 3}}}}}}
    proc = snakemake(tmp_path, "-n", "results/runs/summary.json", config=cfg, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("error: config: runs.variants.deep.train.overrides: unknown training setting "
            "'model.num_layer'; did you mean model.num_layers?") in out, out
    assert "Traceback" not in out and not (tmp_path / "work").exists()


def test_a_checkpoint_variant_is_scored_not_trained(tmp_path):
    (tmp_path / "released.pt").write_bytes(b"read only when the job runs")
    cfg = {**SMALL, "runs": {"seeds": [0, 1], "variants": {
        "video": {}, "released": {"infer": {"model": "released.pt"}}}}}
    proc = snakemake(tmp_path, "-n", "results/runs/summary.json", *DETAILS, config=cfg)
    counts = job_stats(proc.stdout)
    assert counts["train_run"] == 2 and counts["infer_run"] == 3, counts
    assert "results/runs/released/checkpoint/test_acc.json" in proc.stdout
    cfg["runs"]["variants"]["released"]["infer"]["model"] = "missing.pt"
    proc = snakemake(tmp_path, "-n", "results/runs/summary.json", config=cfg, check=False)
    assert proc.returncode != 0
    assert "error: config: runs.variants.released.infer.model: missing.pt not found" in \
        proc.stderr
