# ScanNet .sens decoding and frame downsampling, one job per scene.


rule sens_index:
    """One streaming pass over a scan: header and every frame's offset, pose and timestamps."""
    input:
        sens_path("{scene}"),
    output:
        f"{WORK}/index/{{scene}}.json",
    log:
        "logs/sens_index/{scene}.log",
    benchmark:
        "logs/benchmarks/sens_index/{scene}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/sens_index.py"


rule frames:
    """Every stride-th colour frame as its original JPEG bytes (+ optional depth and poses)."""
    input:
        sens=sens_path("{scene}"),
        index=rules.sens_index.output[0],
    output:
        directory(f"{WORK}/frames/{{scene}}"),
    log:
        "logs/frames/{scene}.log",
    benchmark:
        "logs/benchmarks/frames/{scene}.tsv"
    conda:
        ENV
    params:
        stride=config["frames"]["stride"],
        depth=config["frames"]["depth"],
        poses=config["frames"]["poses"],
    script:
        "../workflow_scripts/frames.py"
