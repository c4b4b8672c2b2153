# SQA3D ClipBERT: ScanNet .sens -> frames -> mp4 -> LMDB, SQA3D -> jsonl, training, inference.
# `snakemake --cores 2` runs the embedded demo to results/test_acc.json; see README.md.
from snakemake.utils import min_version

from clipbert.smk import (
    check_config,
    clear_dead_lock,
    drop_lock_owner,
    forget_missing_outputs,
    record_lock_owner,
)

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


check_config(config, workflow, "config/schema.yaml")  # one line per bad key, then exit 1
# A Snakemake killed outright (SIGKILL) leaves its lock behind: the next run on this machine
# removes it once that Snakemake and its jobs are gone, so no run needs `--unlock` (see
# clipbert.smk). Not on a cluster, whose jobs this machine cannot see.
if workflow.is_main_process and workflow.local_exec:
    clear_dead_lock(dry_run=workflow.dryrun)


onstart:
    record_lock_owner()


onsuccess:
    drop_lock_owner()


onerror:
    forget_missing_outputs(workflow)
    drop_lock_owner()



include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/scans.smk"
include: "rules/video.smk"
include: "rules/sqa.smk"
include: "rules/model.smk"
include: "rules/report.smk"
include: "rules/runs.smk"


rule all:
    input:
        final_targets(),
    default_target: True
