"""Rule frames: export every stride-th colour frame (original JPEG bytes)."""

from clipbert import frames
from clipbert.fsutil import redirect_output

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with redirect_output(snakemake.log[0]):
    p = snakemake.params
    index = frames.export_frames(
        snakemake.input.sens, snakemake.output[0], stride=p.stride, depth=p.depth, poses=p.poses
    )
    print(f"{snakemake.output[0]}: {len(index['frames'])} frames")
