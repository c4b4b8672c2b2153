"""Rule demo_data: write the embedded demo (scans, questions, vocabulary)."""

from clipbert import demo
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    p = snakemake.params
    print(demo.make_demo(p.out_dir, scenes=p.scenes, seed=p.seed, frames=p.frames))
