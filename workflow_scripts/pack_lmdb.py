"""Rule pack_lmdb: every scene's mp4 into the video LMDB."""

from clipbert import vislmdb
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    n = vislmdb.pack_lmdb(snakemake.output[0], list(snakemake.input))
    print(f"{snakemake.output[0]}: {n} videos")
