# The video LMDB (ClipBERT's vis_db): every scene's mp4, ours (rules/scans.smk) or released.


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
    threads: 1
    resources:
        mem_mb=job_mem_mb("pack_lmdb", SMALL_DATA),
        runtime=job_runtime("pack_lmdb", SMALL_DATA),
    script:
        "../workflow_scripts/pack_lmdb.py"
