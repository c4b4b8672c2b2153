# One job per scene: ScanNet .sens -> index, every stride-th frame, mp4 (clipbert.scene).
from clipbert.video import encoder_key


rule scene:
    """A scene's three stages in one job (issue 23: Snakemake's main process spends a fixed CPU
    time per job, so one job per scene instead of three). Each output is still a file target;
    a changed frames or video setting reruns the whole scene (a few tenths of a second more than
    re-encoding alone). `encoder` names the video recipe, its revision and the versions of the libraries
    that decide the bytes (libavcodec, libswscale, OpenCV or Pillow: clipbert.video.encoder_key):
    a new one changes the params, so Snakemake re-encodes the videos of an existing work folder."""
    input:
        sens_path("{scene}"),
    output:
        index=f"{WORK}/index/{{scene}}.json",
        frames=directory(f"{WORK}/frames/{{scene}}"),
        video=f"{WORK}/videos/{{scene}}.mp4",
    log:
        "logs/scene/{scene}.log",
    benchmark:
        "logs/benchmarks/scene/{scene}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("scene", SMALL_DATA),
        runtime=job_runtime("scene", SMALL_DATA),
    params:
        stride=config["frames"]["stride"],
        depth=config["frames"]["depth"],
        poses=config["frames"]["poses"],
        size=config["video"]["size"],
        fps=config["video"]["fps"],
        codec=config["video"]["codec"],
        keep_aspect=config["video"]["keep_aspect"],
        preset=config["video"]["preset"],
        encoder=encoder_key(config["video"]["preset"]),
    script:
        "../workflow_scripts/scene.py"
