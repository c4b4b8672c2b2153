"""Rule train: fine-tune ClipBERT; resumes from the state folder after a kill."""

from clipbert import train
from clipbert.fsutil import redirect_output

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with redirect_output(snakemake.log[0]):
    p = snakemake.params
    cfg = train.make_config(p.preset, dict(p.overrides))
    train.train(
        cfg, data_dir=p.data_dir, lmdb_dir=snakemake.input.lmdb, out=snakemake.output.model,
        state_dir=p.state_dir, metrics=snakemake.output.metrics, vocab=snakemake.input.vocab,
        weights={k: v for k, v in dict(p.weights).items() if k != "vocab"},
    )
