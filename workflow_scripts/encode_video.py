"""Rule encode_video: one scene's frames -> mp4."""

from clipbert import video
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    p = snakemake.params
    print(video.encode_video(snakemake.input[0], snakemake.output[0], size=tuple(p.size),
                             fps=p.fps, codec=p.codec, keep_aspect=p.keep_aspect,
                             preset=p.preset))
