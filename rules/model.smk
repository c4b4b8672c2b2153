# Training (a GPU job where there is one) and test inference.


rule train:
    """Fine-tune; resumable state lives in work/<source>/train_state (not an output: Snakemake would
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


# The blind baseline (config baselines.blind): the same recipe on the questions alone, no CNN
# and no video input; the honest floor that the video model must clear.
use rule train as train_blind with:
    input:
        train=f"{WORK}/sqa/train.jsonl",
        val=f"{WORK}/sqa/val.jsonl",
        ans2label=rules.sqa_convert.output.ans2label,
        vocab=VOCAB,
    output:
        model="results/blind/model.pt",
        metrics="results/blind/train_log.jsonl",
    params:
        preset=config["train"]["preset"],
        overrides={**config["train"]["overrides"], "model.variant": "blind"},
        state_dir=f"{WORK}/train_state_blind",
        data_dir=lambda w, input: str(Path(input.train).parent),
        weights=config["weights"],
    log:
        "logs/train_blind.log",
    benchmark:
        "logs/benchmarks/train_blind.tsv"


use rule infer as infer_blind with:
    input:
        model=rules.train_blind.output.model,
        jsonl=f"{WORK}/sqa/test.jsonl",
    output:
        predictions="results/blind/test_predictions.jsonl",
        acc="results/blind/test_acc.json",
    log:
        "logs/infer_blind.log",
    benchmark:
        "logs/benchmarks/infer_blind.tsv"
