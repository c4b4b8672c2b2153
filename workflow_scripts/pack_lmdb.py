"""Rule pack_lmdb: every scene's mp4 into the video LMDB."""

from clipbert import vislmdb
from clipbert.fsutil import redirect_output

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with redirect_output(snakemake.log[0]):
    n = vislmdb.pack_lmdb(snakemake.output[0], list(snakemake.input))
    print(f"{snakemake.output[0]}: {n} videos")
