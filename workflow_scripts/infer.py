"""Rule infer: answer the test split and write results/test_acc.json."""

import json

from clipbert import evaluate
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    result = evaluate.infer(snakemake.input.model, jsonl=snakemake.input.jsonl,
                            lmdb_dir=getattr(snakemake.input, "lmdb", None),
                            predictions=snakemake.output.predictions,
                            out=snakemake.output.acc, n_clips=snakemake.params.n_clips)
    print(json.dumps(result, indent=2))
