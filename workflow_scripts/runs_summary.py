"""Rule runs_summary: every run's test accuracy into results/runs/summary.{json,tsv}."""

from clipbert import runs
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    o, p = snakemake.output, snakemake.params
    print(runs.write_summary(list(snakemake.input), o.json, o.tsv, p.reference, p.seeds))
