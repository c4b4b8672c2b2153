# SQA3D annotations -> ClipBERT jsonl.


rule sqa_convert:
    """Questions + annotations -> {train,val,test}.jsonl, the answer map and statistics."""
    input:
        questions=sqa_files("questions"),
        annotations=sqa_files("sqa_annotations"),
        answers=f"{SQA_DIR}/answer_dict.json",
    output:
        jsonl=expand(f"{WORK}/sqa/{{split}}.jsonl", split=SQA_SPLITS),
        ans2label=f"{WORK}/sqa/train_ans2label.json",
        stats=f"{WORK}/sqa/stats.json",
    log:
        "logs/sqa_convert.log",
    benchmark:
        "logs/benchmarks/sqa_convert.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("sqa_convert", SMALL_DATA),
        runtime=job_runtime("sqa_convert", SMALL_DATA),
    params:
        splits=SQA_SPLITS,  # the order of the questions and annotations files
    script:
        "../workflow_scripts/sqa_convert.py"
