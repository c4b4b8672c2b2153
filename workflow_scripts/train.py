"""Rule train: fine-tune ClipBERT; resumes from the state folder after a kill. With more than one
GPU (the rule's `gpu` resource) it starts one process per GPU under torchrun."""

from pathlib import Path

from clipbert import distributed, train
from clipbert.config import make_config
from clipbert.qa import TrainFiles
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake

with workflow_step(snakemake):
    i, p = snakemake.input, snakemake.params
    files = TrainFiles(Path(i.train), Path(i.val), Path(i.ans2label))
    weights = {k.removeprefix("weights_"): v for k, v in i.items() if k.startswith("weights_")}
    nproc = int(getattr(snakemake.resources, "gpu", 1) or 1)
    lmdb_dir = getattr(i, "lmdb", None)  # the blind baseline reads no video
    if nproc > 1:
        args = distributed.train_args(
            p.preset, dict(p.overrides), data_dir=files, lmdb_dir=lmdb_dir,
            out=snakemake.output.model, state_dir=p.state_dir, metrics=snakemake.output.metrics,
            vocab=i.vocab, weights=weights,
        )
        distributed.launch_torchrun(nproc, args, log=snakemake.log[0],
                                    job_cpus=snakemake.threads)
    else:
        cfg = make_config(p.preset, dict(p.overrides))
        train.train(
            cfg, data_dir=files, lmdb_dir=lmdb_dir, out=snakemake.output.model,
            state_dir=p.state_dir, metrics=snakemake.output.metrics, vocab=i.vocab,
            weights=weights, threads=snakemake.threads,
        )
