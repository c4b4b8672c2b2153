"""Rule sqa_convert: SQA3D json -> ClipBERT jsonl, answer map, statistics."""

import json
from pathlib import Path

from clipbert import sqa
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    stats = sqa.convert(snakemake.params.sqa_dir, Path(snakemake.output.stats).parent)
    print(json.dumps(stats, indent=2))
