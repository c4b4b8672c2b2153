"""Rule scene: one scan -> its index, kept frames and mp4."""

from clipbert import scene
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    p, out = snakemake.params, snakemake.output
    print(scene.build_scene(snakemake.input[0], out.index, out.frames, out.video,
                            stride=p.stride, depth=p.depth, poses=p.poses, size=tuple(p.size),
                            fps=p.fps, codec=p.codec, keep_aspect=p.keep_aspect,
                            preset=p.preset))
