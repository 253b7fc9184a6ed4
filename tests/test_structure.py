"""The package's import graph has one direction: no module imports one that (directly or
through others) imports it back, and the sub-packages stack in layers (docs/architecture.md):
the base (config, atomic writes), then dsp, nn, interop, infer, train, and cli on top. A module
imports from its own layer or the layers below, never above."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "waveflow"
# bottom to top; a module of layer i imports only from layers 0..i
LAYERS = ["base", "dsp", "nn", "interop", "infer", "train", "cli"]
BASE = {"config", "atomic"}


def module_names() -> set[str]:
    """Every module as a dotted name under waveflow ("dsp.audio", "config"); a package's own
    ``__init__`` counts as the package ("dsp")."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] == "assets" or parts[-1] == "__main__" or parts == ("__init__",):
            continue
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _source(name: str):
    path = PACKAGE.joinpath(*name.split("."))
    return (path / "__init__.py") if path.is_dir() else path.with_suffix(".py")


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse(_source(name).read_text())):  # lazy imports count too
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "waveflow":
                target = node.module.split(".", 1)[1] if "." in node.module else ""
                for alias in node.names:  # `from waveflow.dsp import audio` imports the module dsp.audio
                    sub = f"{target}.{alias.name}" if target else alias.name
                    found.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("waveflow.")}
        graph[name] = (found & modules) - {name, ""}
    return graph


def layer(module: str) -> int:
    top = module.split(".")[0]
    return 0 if top in BASE else LAYERS.index(top)


def test_every_module_sits_in_a_layer():
    stray = sorted(m for m in module_names() if m.split(".")[0] not in BASE and m.split(".")[0] not in LAYERS)
    assert not stray, f"modules outside the layers of docs/architecture.md: {stray}"


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


def test_layers_import_only_downward():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert not upward, f"imports from a higher layer: {upward}"
    # the wording, spelled out: the model and the signal processing stand alone
    for low in ("dsp", "nn"):
        for m, deps in graph.items():
            if m.split(".")[0] == low:
                assert not {d.split(".")[0] for d in deps} & {"infer", "train", "interop", "cli"}, (m, deps)


def test_cli_on_top_and_config_at_the_bottom():
    graph = import_graph()
    assert not graph["config"], graph["config"]
    assert not any(d.split(".")[0] == "cli" for m, deps in graph.items() if m.split(".")[0] != "cli" for d in deps)


def test_every_verb_names_code_that_exists():
    """Verbs whose code needs torch import it by name when they run; every such name resolves
    (a module that moved once left `waveflow pretrained` pointing at nothing)."""
    import importlib

    from waveflow.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    targets = {name: getattr(sub.get_default("func"), "target", None) for name, sub in commands.items()}
    assert sum(t is not None for t in targets.values()) >= 8, targets
    for name, target in targets.items():
        if target is not None:
            module, function = target
            assert callable(getattr(importlib.import_module(module), function, None)), (name, target)


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


# Names added to the standard library after 3.10, the lowest Python that pyproject admits
# (this machine has only 3.11, so the check is static: syntax at 3.10 and no newer names).
NEWER_THAN_310 = {
    "tomllib",
    "typing.Self",
    "typing.LiteralString",
    "typing.Never",
    "typing.assert_never",
    "typing.reveal_type",
    "typing.Required",
    "typing.NotRequired",
    "typing.TypeVarTuple",
    "typing.Unpack",
    "datetime.UTC",
    "enum.StrEnum",
    "enum.verify",
    "asyncio.TaskGroup",
    "asyncio.timeout",
    "hashlib.file_digest",
    "contextlib.chdir",
    "math.exp2",
    "math.cbrt",
    "operator.call",
    "ExceptionGroup",
    "BaseExceptionGroup",
}


def test_sources_parse_and_resolve_on_the_lowest_supported_python():
    declared = re.search(r'^requires-python = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert declared and declared.group(1) == ">=3.10", f"update NEWER_THAN_310 for {declared and declared.group(1)}"
    files = [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "tests").rglob("*.py")]
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), feature_version=(3, 10))  # a SyntaxError names 3.11+ syntax
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
                    if a.name in NEWER_THAN_310:
                        found.append(f"{path.name}: import {a.name}")
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if f"{node.module}.{a.name}" in NEWER_THAN_310 or node.module in NEWER_THAN_310:
                        found.append(f"{path.name}: from {node.module} import {a.name}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if f"{aliases.get(node.value.id, node.value.id)}.{node.attr}" in NEWER_THAN_310:
                    found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Name) and node.id in NEWER_THAN_310:
                found.append(f"{path.name}:{node.lineno}: {node.id}")
    assert not found, found
