"""How long Snakemake takes to plan the workflow at full ScanNet scale (707 scenes, 2125 jobs),
with the workstation profile and with the SLURM profile (71 grouped jobs). Goal: under 15 s.

    python benchmarks/bench_dag.py [--repeat 3]

Placeholder scans; the real scene lists and question files from ../shared when present.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from scale_config import N_SCENES, real_data_config  # noqa: E402

GOAL_S = 15.0


def dry_run(root: Path, config: Path, *extra: str) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(root),
           "-n", "--quiet", "rules", *extra, "--configfile", str(config)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = real_data_config(root)
        slurm = ("--workflow-profile", str(REPO / "profiles" / "slurm"))
        for name, extra in (("workstation profile", ()), ("SLURM profile", slurm)):
            best = min(dry_run(root, config, *extra) for _ in range(args.repeat))
            print(f"{N_SCENES} scenes, {name}: snakemake -n in {best:.2f} s "
                  f"(best of {args.repeat}), {best / GOAL_S:.2f} of the {GOAL_S:.0f} s goal")


if __name__ == "__main__":
    main()
