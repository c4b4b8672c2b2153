"""Rules plot_*: one figure of the report each. The rule says which (`params: figure=...`, the
other params are the figure's options) and names its inputs after the figure builder's
arguments; what is drawn is decided here by that data alone (clipbert.report.draw)."""

from clipbert import report
from clipbert.smk import workflow_step

snakemake = snakemake  # noqa: F821, PLW0127 - injected by Snakemake


def _value(files: object) -> str | list[str] | None:
    """A named input as the builder takes it: a path, None for an empty one (the rule leaves it
    out, e.g. no blind baseline), a list of paths for a list."""
    if isinstance(files, str):
        return str(files)
    return list(map(str, files)) or None


with workflow_step(snakemake):
    options = dict(snakemake.params.items())
    options.pop("settings", None)  # plot_frames: its rerun trigger (tracked_settings), no option
    inputs = {name: _value(files) for name, files in snakemake.input.items()}
    out = snakemake.output[0]
    print(f"{out}: {report.draw(options.pop('figure'), out, **inputs, **options)}")
    if "environment" in snakemake.output.keys():  # plot_test_accuracy: the record as a table
        table = snakemake.output.environment
        print(f"{table}: {report.environment_table(inputs['acc'], table)}")
