# SQA3D ClipBERT: ScanNet .sens -> frames -> mp4 -> LMDB, SQA3D -> jsonl, training, inference.
# `snakemake --cores 2` runs the embedded demo to results/test_acc.json; see README.md.
from snakemake.utils import min_version

from clipbert.smk import check_config, reap_scheduler_timers, stop_scheduler_timers

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


check_config(config, workflow, "config/schema.yaml")  # one line per bad key, then exit 1


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/scans.smk"
include: "rules/video.smk"
include: "rules/sqa.smk"
include: "rules/model.smk"
include: "rules/report.smk"


rule all:
    input:
        final_targets(),
    default_target: True


# Snakemake's job selection runs again whenever a rate-limiter timer fires, and every round arms
# one more: the rounds would multiply with the jobs (issue 23). The profiles set a limit that never
# binds (100000 per minute), whose timers are cancelled as they come; all are cancelled when the
# run ends, so that it exits at once.
onstart:
    reap_scheduler_timers(workflow.scheduling_settings.max_jobs_per_timespan.max_jobs)


onsuccess:
    stop_scheduler_timers()


onerror:
    stop_scheduler_timers()
