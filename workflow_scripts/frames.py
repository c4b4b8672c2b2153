"""Rule frames: export every stride-th colour frame (original JPEG bytes)."""

from clipbert import frames
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    p = snakemake.params
    index = frames.export_frames(
        snakemake.input.sens, snakemake.output[0], stride=p.stride, depth=p.depth, poses=p.poses
    )
    print(f"{snakemake.output[0]}: {len(index['frames'])} frames")
