# The embedded demo: synthetic ScanNet-format scans and SQA3D-format questions.


rule demo_data:
    """Generate the demo scans, questions, scene lists and WordPiece vocabulary."""
    output:
        sens=[sens_path(s) for s in SCENES] if DEMO else [],
        sqa=sqa_files("questions") + sqa_files("sqa_annotations") if DEMO else [],
        answers=f"{DEMO_DIR}/sqa_task/answer_dict.json",
        vocab=f"{DEMO_DIR}/vocab.txt",
    log:
        "logs/demo_data.log",
    benchmark:
        "logs/benchmarks/demo_data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("demo_data", SMALL_DATA),
        runtime=job_runtime("demo_data", SMALL_DATA),
    params:
        out_dir=lambda w, output: str(Path(output.vocab).parent),
        scenes=config["data"]["demo"]["scenes"],
        seed=config["data"]["demo"]["seed"],
        frames=config["data"]["demo"]["frames"],
        maker=demo.maker_key(),
    script:
        "../workflow_scripts/demo_data.py"
