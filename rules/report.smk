# The plots of `snakemake --report report.html`: one rule per figure, each a PNG in results/plots
# with its caption in report/. The rule graph and run statistics come with Snakemake's report.
# Each rule says which figure it draws (params: figure, a key of clipbert.report.FIGURES; its
# other params are the figure's options) and names its inputs after the figure's arguments:
# workflow_scripts/plots.py passes them on as they are (`clipbert plot` takes the same).


report: "../report/workflow.rst"


PLOTS = {
    name: f"results/plots/{name}.png"
    for name in ("data", "training", "test_accuracy", "confusion", "frames", "benchmarks")
}


rule plot_data:
    """Questions per split and answer type, `unknown` share and ceiling, frames per scene."""
    input:
        stats=rules.sqa_convert.output.stats,
        lmdb=rules.pack_lmdb.output[0],
    output:
        report(
            PLOTS["data"],
            caption="../report/data.rst",
            category="1 data",
            labels={"figure": "data", "shows": "questions per split and type, frames per scene"},
        ),
    log:
        "logs/plots/data.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="data",
    script:
        "../workflow_scripts/plots.py"


rule plot_training:
    """Loss, learning rates and validation accuracy against the step; when only evaluating
    (infer.model), a figure that says nothing was trained here."""
    input:
        log=[] if EVAL_ONLY else rules.train.output.metrics,
    output:
        report(
            PLOTS["training"],
            caption="../report/training.rst",
            category="2 training",
            labels={"figure": "training", "shows": "loss, learning rates, val accuracy"},
        ),
    log:
        "logs/plots/training.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="training",
        checkpoint=INFER_MODEL,
    script:
        "../workflow_scripts/plots.py"


rule plot_test_accuracy:
    """Test accuracy per answer type beside the published figures (real SQA3D), the blind
    baseline of this run and the majority answer; it says which data this run is on. Also the
    table of what made the result (its `environment`: packages, FFmpeg, CPU, commit, lock)."""
    input:
        acc=rules.infer.output.acc,
        blind=rules.infer_blind.output.acc if BLIND else [],
    output:
        report(
            PLOTS["test_accuracy"],
            caption="../report/test_accuracy.rst",
            category="3 test",
            labels={"figure": "test accuracy", "shows": "per answer type, vs published"},
        ),
        environment=report(
            "results/plots/environment.tsv",
            caption="../report/environment.rst",
            category="6 environment",
            labels={"table": "environment", "shows": "the software and machine behind the result"},
        ),
    log:
        "logs/plots/test_accuracy.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="test_accuracy",
        source=SOURCE,
    script:
        "../workflow_scripts/plots.py"


rule plot_confusion:
    """Confusion of the most frequent test answers."""
    input:
        predictions=rules.infer.output.predictions,
    output:
        report(
            PLOTS["confusion"],
            caption="../report/confusion.rst",
            category="3 test",
            labels={"figure": "confusion", "shows": "the most frequent test answers"},
        ),
    log:
        "logs/plots/confusion.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="confusion",
        top=15,
    script:
        "../workflow_scripts/plots.py"


rule plot_frames:
    """A contact sheet of evaluation clips, sampled and resized as inference does."""
    input:
        lmdb=rules.pack_lmdb.output[0],
    output:
        report(
            PLOTS["frames"],
            caption="../report/frames.rst",
            category="1 data",
            labels={"figure": "frames", "shows": "the clips the model receives"},
        ),
    log:
        "logs/plots/frames.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="frames",
        preset=config["train"]["preset"],
        settings=tracked_settings(blind=False),
        overrides=untracked(config["train"]["overrides"]),
        n_clips=config["infer"]["n_clips"],
        scenes=4,
    script:
        "../workflow_scripts/plots.py"


rule plot_benchmarks:
    """Wall time and peak memory of every rule, from the `benchmark:` files of this run's jobs
    (run_benchmarks). Read when present rather than required as inputs, so that a run made
    before the benchmark directives existed is not redone for their sake. The inputs (unnamed:
    not the figure's) are every result the run makes, the blind baseline's too, so that every
    other rule has run and written its file first; no train job when only evaluating."""
    input:
        rules.infer.output.acc,
        rules.infer_blind.output.acc if BLIND else [],
    output:
        report(
            PLOTS["benchmarks"],
            caption="../report/benchmarks.rst",
            category="4 resources",
            labels={"figure": "benchmarks", "shows": "time and memory per rule"},
        ),
    log:
        "logs/plots/benchmarks.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="benchmarks",
        folder="logs/benchmarks",
        files=lambda wildcards: run_benchmarks(),
    script:
        "../workflow_scripts/plots.py"


rule plots:
    """Every plot of the report (also part of the default target)."""
    input:
        list(PLOTS.values()),


# Not in PLOTS (the default target): the runs' plot is made with the runs (rules/runs.smk).
RUNS_PLOT = "results/plots/runs.png"


rule plot_runs:
    """Every variant's mean accuracy with its spread and its seeds, beside the published
    figures, and the paired difference against the reference variant."""
    input:
        summary="results/runs/summary.json",
    output:
        report(
            RUNS_PLOT,
            caption="../report/runs.rst",
            category="5 runs",
            labels={"figure": "runs", "shows": "accuracy over seeds per variant"},
        ),
    log:
        "logs/plots/runs.log",
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=job_mem_mb("plot", SMALL_DATA),
        runtime=job_runtime("plot", SMALL_DATA),
    params:
        figure="runs",
        source=SOURCE,
    script:
        "../workflow_scripts/plots.py"
