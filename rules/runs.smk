# Seeds and variants (config `runs`): every (variant, seed) pair is a training and a scoring of
# its own in results/runs/<variant>/seed<N>/, on the data half that every run shares, and
# results/runs/summary.{json,tsv} compares them. Not part of the default target:
# `snakemake results/runs/summary.json` (or `runs`, with the report's plot).


rule train_run:
    """One run's training (a GPU job where there is one, like `train`); its resumable state is
    work/<source>/runs/<variant>/seed<N>/train_state, and its settings, the seed among them,
    are params of the wildcards alone (`settings`: Snakemake's rerun trigger records those), so
    that editing one variant reruns that variant only."""
    input:
        unpack(run_train_inputs),
    output:
        model="results/runs/{variant}/seed{seed}/model.pt",
        metrics="results/runs/{variant}/seed{seed}/train_log.jsonl",
    log:
        "logs/runs/{variant}/seed{seed}/train.log",
    benchmark:
        "logs/benchmarks/train_run/{variant}-seed{seed}.tsv"
    wildcard_constraints:
        variant=RUN_VARIANT_PATTERN,
        seed=r"\d+",
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=GPU_JOB,
        mem_mb=run_job_resource("train_run", "mem_mb"),
        runtime=run_job_resource("train_run", "runtime"),
    params:
        settings=run_settings,
        preset=run_preset,
        overrides=untracked(run_overrides),
        state_dir=untracked(run_state_dir),
    script:
        "../workflow_scripts/train.py"


rule infer_run:
    """One run's test accuracy: its trained model's, or the variant's given checkpoint's (run
    folder `checkpoint`)."""
    input:
        unpack(run_infer_inputs),
    output:
        predictions="results/runs/{variant}/{run}/test_predictions.jsonl",
        acc="results/runs/{variant}/{run}/test_acc.json",
    log:
        "logs/runs/{variant}/{run}/infer.log",
    benchmark:
        "logs/benchmarks/infer_run/{variant}-{run}.tsv"
    wildcard_constraints:
        variant=RUN_VARIANT_PATTERN,
        run=rf"seed\d+|{run_plan.CHECKPOINT_RUN}",
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=GPU_JOB,
        mem_mb=run_job_resource("infer_run", "mem_mb"),
        runtime=run_job_resource("infer_run", "runtime"),
    params:
        settings=run_settings,
        n_clips=run_n_clips,
        preset=run_preset,
        overrides=untracked(run_overrides),
        variant=run_model_variant,
        trained_here=run_trained_here,
    script:
        "../workflow_scripts/infer.py"


rule runs_summary:
    """Per variant: the spread of overall and per-type accuracy over the seeds, and the
    difference against runs.reference paired by seed, with its 95 % interval."""
    input:
        run_results(),
    output:
        json="results/runs/summary.json",
        tsv=report(
            "results/runs/summary.tsv",
            caption="../report/runs_table.rst",
            category="5 runs",
            labels={"table": "summary", "shows": "mean, spread and paired difference per variant"},
        ),
    log:
        "logs/runs/summary.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        reference=RUN_REFERENCE,
        seeds=RUN_SEEDS,
    script:
        "../workflow_scripts/runs_summary.py"


rule runs:
    """Every run's result files, their summary and its plot."""
    input:
        run_files(),
        rules.runs_summary.output,
        RUNS_PLOT,
