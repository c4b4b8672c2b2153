"""Rule infer: answer the test split and write results/test_acc.json."""

import json

from clipbert import evaluate
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    i, p = snakemake.input, snakemake.params
    result = evaluate.infer(i.model, jsonl=i.jsonl, lmdb_dir=getattr(i, "lmdb", None),
                            predictions=snakemake.output.predictions,
                            out=snakemake.output.acc, n_clips=p.n_clips,
                            answers=i.answers or None, vocab=i.vocab or None,
                            preset=p.preset, overrides=dict(p.overrides), variant=p.variant,
                            trained_here=p.trained_here, threads=snakemake.threads)
    print(json.dumps(result, indent=2))
