"""Rule sens_index: the per-scene index of a .sens scan."""

from clipbert import sens
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    sens.write_index(snakemake.input[0], snakemake.output[0])
