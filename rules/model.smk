# Training (a GPU job where there is one) and test inference; the blind baseline is the same two
# rules on the questions alone. Every setting that changes a result is a plain param (`settings`),
# so that a changed one reruns the job (see tracked_settings in common.smk).


rule train:
    """Fine-tune; resumable state lives in work/<source>/train_state (not an output: Snakemake
    would delete it before a rerun), so a killed job resumes."""
    input:
        unpack(lambda w: weight_inputs(blind=False)),
        train=f"{WORK}/sqa/train.jsonl",
        val=f"{WORK}/sqa/val.jsonl",
        ans2label=rules.sqa_convert.output.ans2label,
        lmdb=rules.pack_lmdb.output[0],
        vocab=VOCAB,
    output:
        model="results/model.pt",
        metrics="results/train_log.jsonl",
    log:
        "logs/train.log",
    benchmark:
        "logs/benchmarks/train.tsv"
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=GPU_JOB,
        mem_mb=job_mem_mb("train", SMALL_MODEL),
        runtime=job_runtime("train", SMALL_MODEL),
    params:
        preset=config["train"]["preset"],
        settings=tracked_settings(blind=False),
        overrides=untracked(variant_overrides(blind=False)),
        state_dir=train_state_dir(blind=False),
    script:
        "../workflow_scripts/train.py"


rule infer:
    """Answer the test split and score it: with the model trained here, or with the fine-tuned
    checkpoint infer.model (then nothing is trained)."""
    input:
        model=INFER_MODEL or rules.train.output.model,
        jsonl=f"{WORK}/sqa/test.jsonl",
        lmdb=rules.pack_lmdb.output[0],
        # What a given checkpoint is read with when it is a bare state dict: the answer map
        # (the order of its head's rows) and the vocabulary.
        answers=rules.sqa_convert.output.ans2label if INFER_MODEL else [],
        vocab=VOCAB if INFER_MODEL else [],
    output:
        predictions="results/test_predictions.jsonl",
        acc="results/test_acc.json",
    log:
        "logs/infer.log",
    benchmark:
        "logs/benchmarks/infer.tsv"
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=GPU_JOB,
        mem_mb=job_mem_mb("infer", SMALL_MODEL),
        runtime=job_runtime("infer", SMALL_MODEL),
    params:
        n_clips=config["infer"]["n_clips"],
        preset=config["train"]["preset"],
        settings=tracked_settings(blind=False),
        overrides=untracked(variant_overrides(blind=False)),
        variant=TRAIN.model.variant,
        trained_here=not INFER_MODEL,
    script:
        "../workflow_scripts/infer.py"


# The blind baseline (config baselines.blind): the same recipe on the questions alone, no CNN
# and no video input; the honest floor that the video model must clear.
use rule train as train_blind with:
    input:
        unpack(lambda w: weight_inputs(blind=True)),
        train=f"{WORK}/sqa/train.jsonl",
        val=f"{WORK}/sqa/val.jsonl",
        ans2label=rules.sqa_convert.output.ans2label,
        vocab=VOCAB,
    output:
        model="results/blind/model.pt",
        metrics="results/blind/train_log.jsonl",
    log:
        "logs/train_blind.log",
    benchmark:
        "logs/benchmarks/train_blind.tsv"
    resources:
        gpu=GPU_JOB,
        mem_mb=job_mem_mb("train_blind", SMALL_MODEL),
        runtime=job_runtime("train_blind", SMALL_MODEL),
    params:
        settings=tracked_settings(blind=True),
        overrides=untracked(variant_overrides(blind=True)),
        state_dir=train_state_dir(blind=True),


use rule infer as infer_blind with:
    input:
        model=BLIND_MODEL or rules.train_blind.output.model,
        jsonl=f"{WORK}/sqa/test.jsonl",
        answers=rules.sqa_convert.output.ans2label if BLIND_MODEL else [],
        vocab=VOCAB if BLIND_MODEL else [],
    output:
        predictions="results/blind/test_predictions.jsonl",
        acc="results/blind/test_acc.json",
    log:
        "logs/infer_blind.log",
    benchmark:
        "logs/benchmarks/infer_blind.tsv"
    resources:
        gpu=GPU_JOB,
        mem_mb=job_mem_mb("infer_blind", SMALL_MODEL),
        runtime=job_runtime("infer_blind", SMALL_MODEL),
    params:
        settings=tracked_settings(blind=True),
        overrides=untracked(variant_overrides(blind=True)),
        variant="blind",
        trained_here=not BLIND_MODEL,
