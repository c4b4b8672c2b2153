"""One scene's data stages in one call: the `.sens` index, the kept frames, the mp4.

The workflow runs them as one job per scene (rule `scene`). Snakemake's main process spends a
roughly fixed CPU time on every job (~0.01 s measured, benchmarks/bench_scheduler.py), serial, so
one job per scene is a third of three; one job also starts one Python instead of three (most of
the wall time of small scenes), and walks the scan's frame heads once for index and export.
Each stage is still a function and a command of its own (`clipbert sens index`, `clipbert sens
export`, `clipbert video encode`) for running one by hand.
"""

from __future__ import annotations

import os
from typing import Any

from clipbert import frames, sens, video


def build_scene(
    sens_path: str | os.PathLike,
    index_json: str | os.PathLike,
    frames_dir: str | os.PathLike,
    video_out: str | os.PathLike,
    *,
    stride: int = 20,
    depth: bool = False,
    poses: bool = False,
    size: tuple[int, int] = (224, 224),
    fps: float = 20,
    codec: str = "mpeg4",
    keep_aspect: bool = False,
    preset: str = "faithful",
) -> dict[str, Any]:
    """Write the scene's index, frames folder and video (each atomically, in that order) and
    return the video's description (`n_frames`: the kept frames) with the scan's frame count."""
    with sens.SensReader(sens_path) as r:
        sens.write_index(sens_path, index_json, reader=r)
        index = frames.export_frames(sens_path, frames_dir, stride, depth, poses, reader=r)
    info = video.encode_video(frames_dir, video_out, size=size, fps=fps, codec=codec,
                              keep_aspect=keep_aspect, preset=preset)
    return {"source_frames": index["num_source_frames"], **info}
