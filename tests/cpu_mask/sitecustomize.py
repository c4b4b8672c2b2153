"""Imported by every Python started with this folder on PYTHONPATH: its affinity mask reads as
CLIPBERT_TEST_CPUS CPUs. How a test gives a torchrun job more CPUs than the 2-core CI machine has,
through the workflow's own launch code (torchrun and its ranks are separate processes)."""

import os

if os.environ.get("CLIPBERT_TEST_CPUS"):
    _cpus = set(range(int(os.environ["CLIPBERT_TEST_CPUS"])))
    os.sched_getaffinity = lambda pid: set(_cpus)
