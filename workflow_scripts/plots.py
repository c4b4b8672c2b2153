"""Rules plot_*: one figure of the report each, chosen by the rule's name."""

from clipbert import report
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    rule, i, out, p = snakemake.rule, snakemake.input, snakemake.output[0], snakemake.params
    if rule == "plot_data":
        report.plot_data(i.stats, i.lmdb, out)
    elif rule == "plot_training":
        report.plot_training(i[0] if len(i) else None, out, checkpoint=p.checkpoint)
    elif rule == "plot_test_accuracy":
        report.plot_accuracy(i.acc, out, blind_path=i.blind or None)
    elif rule == "plot_confusion":
        report.plot_confusion(i[0], out, top=p.top)
    elif rule == "plot_frames":
        from clipbert.config import make_config

        cfg = make_config(p.preset, p.overrides)
        if p.n_clips is not None:
            cfg.inference_n_clips = p.n_clips
        report.plot_frames(i[0], out, cfg, scenes=p.scenes)
    elif rule == "plot_benchmarks":
        report.plot_benchmarks(report.benchmark_files(p.folder), out)
    else:
        raise ValueError(f"workflow_scripts/plots.py: no plot for rule {rule!r}")
    print(out)
