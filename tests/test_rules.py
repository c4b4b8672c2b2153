"""The rules as Snakemake expects them: every rule that runs a job says its threads, memory and
time limit itself (so that any executor gets them, not only the SLURM profile), the rules that
only draw or summarise run on the submitting machine, and the report's items carry labels."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from clipbert.smk import JOB_RESOURCES, job_resources

RULE_FILES = sorted((REPO / "rules").glob("*.smk"))


def rule_blocks() -> dict[str, str]:
    """Each rule's text (from `rule NAME:` or `use rule ... as NAME` to the next rule)."""
    text = "\n".join(p.read_text() for p in RULE_FILES)
    starts = list(re.finditer(r"^(?:rule (\w+):|use rule \w+ as (\w+) with:)", text, re.M))
    return {m.group(1) or m.group(2): text[m.start():nxt.start() if nxt else None]
            for m, nxt in zip(starts, [*starts[1:], None], strict=True)}


def runs_a_job(block: str) -> bool:
    return bool(re.search(r"^    (script|shell|run):", block, re.M))


def test_every_job_rule_carries_threads_memory_and_runtime():
    blocks = rule_blocks()
    jobs = [name for name, block in blocks.items() if runs_a_job(block)]
    assert {"scene", "pack_lmdb", "train", "infer", "plot_data", "runs_summary"} <= set(jobs)
    missing = [name for name in jobs
               if not all(f"    {key}" in blocks[name]
                          for key in ("threads:", "mem_mb=", "runtime="))]
    assert not missing, f"rules without threads, mem_mb or runtime: {missing}"
    # the blind pair (`use rule ... with:`) sets its own, smaller than the video model's
    for name in ("train_blind", "infer_blind"):
        assert "mem_mb=" in blocks[name] and "runtime=" in blocks[name], name


def test_plot_and_summary_rules_are_local():
    blocks = rule_blocks()
    local = {name for name, block in blocks.items() if "    localrule: True" in block}
    drawing = {name for name in blocks if name.startswith("plot_")} | {"runs_summary"}
    assert drawing <= local, sorted(drawing - local)
    assert not local & {"scene", "pack_lmdb", "train", "infer", "train_run"}


def test_report_items_carry_labels():
    text = "\n".join(p.read_text() for p in RULE_FILES)
    items = re.findall(r"report\((.*?)\n        \)", text, re.S)
    # Every report item (eight figures and the environment table) is found by the pattern.
    assert len(items) == len(re.findall(r"\breport\(", text)) == 9, len(items)
    assert all("labels={" in item for item in items), items


@pytest.mark.parametrize("scale", ["demo", "full"])
def test_resources_table_covers_every_job_rule(scale):
    """A job rule missing from clipbert.smk.JOB_RESOURCES would stop the workflow at start."""
    table = JOB_RESOURCES[scale]
    names = set(re.findall(r'(?:job_mem_mb|job_runtime|run_job_resource)\("(\w+)"',
                           "\n".join(p.read_text() for p in RULE_FILES)))
    assert names and names <= set(table), sorted(names - set(table))
    for name in names:
        res = job_resources(name, demo=scale == "demo")
        assert res["mem_mb"] >= 500 and res["runtime"] >= 5, (name, res)


def test_full_scale_asks_for_more_where_the_data_grows():
    for rule in ("train", "infer", "pack_lmdb", "scene"):
        demo, full = job_resources(rule, demo=True), job_resources(rule, demo=False)
        assert full["mem_mb"] >= demo["mem_mb"] and full["runtime"] >= demo["runtime"], rule
    train = [job_resources("train", demo=small)["mem_mb"] for small in (True, False)]
    assert train[1] > train[0]
    with pytest.raises(KeyError):
        job_resources("no_such_rule", demo=True)
