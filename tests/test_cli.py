"""The command line: lazy imports, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from conftest import cli_env, run_cli

from clipbert import demo


def test_data_commands_do_not_import_torch(tmp_path):
    """`clipbert sens ...` and `clipbert sqa ...` must not pay seconds for torch."""
    demo_dir = tmp_path / "demo"
    run_cli("demo", "make", demo_dir, "--scenes", "5", "--frames", "3")
    scene = demo.scene_ids(5)[0]
    sens_file = demo_dir / "scans" / scene / f"{scene}.sens"
    code = (
        "import sys\n"
        "from clipbert.cli import main\n"
        f"assert main(['sens', 'info', {str(sens_file)!r}]) == 0\n"
        f"assert main(['sqa', 'convert', {str(demo_dir / 'sqa_task')!r}, "
        f"{str(tmp_path / 'sqa')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.sens"
    bad.write_bytes(b"\x03\x00\x00\x00")
    proc = run_cli("sens", "info", bad, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
