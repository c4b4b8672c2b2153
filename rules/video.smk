# mp4 encoding per scene and the video LMDB (ClipBERT's vis_db).
from clipbert.video import ENCODERS


rule encode_video:
    """Encode one scene's kept frames as an mp4 (faithful: SQA3D's jpg2mp4, 224x224 squashed,
    20 fps, mpeg4 as OpenCV's writer). `encoder` names the recipe and its revision: a new one
    changes the params, so Snakemake re-encodes the videos of an existing work folder."""
    input:
        rules.frames.output[0],
    output:
        f"{WORK}/videos/{{scene}}.mp4",
    log:
        "logs/encode_video/{scene}.log",
    benchmark:
        "logs/benchmarks/encode_video/{scene}.tsv"
    conda:
        ENV
    params:
        size=config["video"]["size"],
        fps=config["video"]["fps"],
        codec=config["video"]["codec"],
        keep_aspect=config["video"]["keep_aspect"],
        preset=config["video"]["preset"],
        encoder=ENCODERS[config["video"]["preset"]],
    script:
        "../workflow_scripts/encode_video.py"


rule pack_lmdb:
    """All videos in one LMDB: key = scene id, value = the mp4 bytes."""
    input:
        [video_path(s) for s in SCENES],
    output:
        directory(f"{WORK}/vis_db"),
    log:
        "logs/pack_lmdb.log",
    benchmark:
        "logs/benchmarks/pack_lmdb.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/pack_lmdb.py"
