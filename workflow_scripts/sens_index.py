"""Rule sens_index: the per-scene index of a .sens scan."""

from clipbert import sens
from clipbert.fsutil import redirect_output

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with redirect_output(snakemake.log[0]):
    sens.write_index(snakemake.input[0], snakemake.output[0])
