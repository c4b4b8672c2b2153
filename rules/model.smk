# Training (a GPU job where there is one) and test inference.


rule train:
    """Fine-tune; resumable state lives in work/train_state (not an output: Snakemake would
    delete it before a rerun), so a killed job resumes."""
    input:
        train=f"{WORK}/sqa/train.jsonl",
        val=f"{WORK}/sqa/val.jsonl",
        ans2label=rules.sqa_convert.output.ans2label,
        lmdb=rules.pack_lmdb.output[0],
        vocab=VOCAB,
    output:
        model="results/model.pt",
        metrics="results/train_log.jsonl",
    params:
        preset=config["train"]["preset"],
        overrides=config["train"]["overrides"],
        state_dir=f"{WORK}/train_state",
        data_dir=lambda w, input: str(Path(input.train).parent),
        weights=config["weights"],
    threads: workflow.cores
    resources:
        gpu=1,
    conda:
        ENV
    log:
        "logs/train.log",
    benchmark:
        "logs/benchmarks/train.tsv"
    script:
        "../workflow_scripts/train.py"


rule infer:
    """Answer the test split and score it."""
    input:
        model=rules.train.output.model,
        jsonl=f"{WORK}/sqa/test.jsonl",
        lmdb=rules.pack_lmdb.output[0],
    output:
        predictions="results/test_predictions.jsonl",
        acc="results/test_acc.json",
    params:
        n_clips=config["infer"]["n_clips"],
    threads: workflow.cores
    resources:
        gpu=1,
    conda:
        ENV
    log:
        "logs/infer.log",
    benchmark:
        "logs/benchmarks/infer.tsv"
    script:
        "../workflow_scripts/infer.py"
