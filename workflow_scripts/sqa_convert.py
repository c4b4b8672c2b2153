"""Rule sqa_convert: SQA3D json -> ClipBERT jsonl, answer map, statistics."""

import json
from pathlib import Path

from clipbert import sqa
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    i = snakemake.input
    paths = dict(zip(snakemake.params.splits, zip(i.questions, i.annotations, strict=True),
                     strict=True))
    stats = sqa.convert_files(paths, i.answers, Path(snakemake.output.stats).parent)
    print(json.dumps(stats, indent=2))
