"""The package's import graph has one direction: no module imports one that (directly or
through others) imports it back, cli sits on top and config at the bottom."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "waveflow"


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):  # lazy imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "waveflow":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("waveflow.")}
        graph[name] = (found & modules) - {name}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_cli_on_top_and_config_at_the_bottom():
    graph = import_graph()
    assert not graph["config"], graph["config"]
    assert not any("cli" in deps for deps in graph.values())


def test_help_imports_no_torch():
    """`waveflow --help` and every subcommand's help are instant: no torch, no model code."""
    code = (
        "import sys\n"
        "from waveflow.cli import build_parser\n"
        "parser = build_parser()\n"
        "commands = parser._subparsers._group_actions[0].choices\n"
        "for argv in [['--help'], *[[c, '--help'] for c in commands]]:\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'soundfile'))\n"
        "print(len(commands), heavy[:3])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    count, heavy = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 10 and heavy == "[]", done.stdout[-300:]
