# SQA3D ClipBERT: ScanNet .sens -> frames -> mp4 -> LMDB, SQA3D -> jsonl, training, inference.
# `snakemake --cores 2` runs the embedded demo to results/test_acc.json; see README.md.
from snakemake.utils import min_version

from clipbert.smk import (
    check_config,
    clear_dead_lock,
    drop_lock_owner,
    forget_missing_outputs,
    reap_scheduler_timers,
    record_lock_owner,
    stop_scheduler_timers,
)

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


check_config(config, workflow, "config/schema.yaml")  # one line per bad key, then exit 1
# A Snakemake killed outright (SIGKILL) leaves its lock behind: the next run on this machine
# removes it once that Snakemake and its jobs are gone, so no run needs `--unlock` (see
# clipbert.smk). Not on a cluster, whose jobs this machine cannot see.
if workflow.is_main_process and workflow.local_exec:
    clear_dead_lock(dry_run=workflow.dryrun)


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/scans.smk"
include: "rules/video.smk"
include: "rules/sqa.smk"
include: "rules/model.smk"
include: "rules/report.smk"
include: "rules/runs.smk"


rule all:
    default_target: True
    input:
        final_targets(),


# Snakemake's job selection runs again whenever a rate-limiter timer fires, and every round arms
# one more: the rounds would multiply with the jobs (issue 23). The profiles set a limit that never
# binds (100000 per minute), whose timers are cancelled as they come; all are cancelled when the
# run ends, so that it exits at once. The lock's owner is recorded for clear_dead_lock above, and
# a failed job's records are forgotten so that it runs again (clipbert.smk).
onstart:
    record_lock_owner()
    reap_scheduler_timers(workflow.scheduling_settings.max_jobs_per_timespan.max_jobs)


onsuccess:
    stop_scheduler_timers()
    drop_lock_owner()


onerror:
    stop_scheduler_timers()
    forget_missing_outputs(workflow)
    drop_lock_owner()
