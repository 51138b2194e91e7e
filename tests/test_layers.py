"""The package's shape: imports point down the layers only, no module or package imports in a circle, and files
and functions stay short.

Read from the code's own imports (every `import` and `from ... import`, at any depth, and `importlib.import_module`
of a literal name, with `ast`), so a function-level import counts like a top-level one: both make the importing
module depend on the imported one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "colordiff"

# Layers, bottom first. A module may import modules of its own layer or of a layer below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("pixels, settings, models, sampling", (
        "colordiff", "colordiff.color", "colordiff.images", "colordiff.files", "colordiff.io",
        "colordiff.pillow_warnings", "colordiff.config", "colordiff.devices", "colordiff.errors", "colordiff.resources",
        "colordiff.models", "colordiff.sampling", "colordiff.claims", "colordiff.schedulers", "colordiff.model_card",
    )),
    ("semantics, pipelines, data, metrics", (
        "colordiff.semantics", "colordiff.pipelines", "colordiff.data", "colordiff.latents", "colordiff.metrics",
        "colordiff.hue", "colordiff.protocol", "colordiff.testing",
    )),
    ("applications", (
        "colordiff.colorize", "colordiff.colorize_common", "colordiff.colorize_jobs", "colordiff.captions_file",
        "colordiff.caption_cache", "colordiff.init_model", "colordiff.evaluate", "colordiff.reproduce",
        "colordiff.training", "colordiff.mini", "colordiff.video", "colordiff.demo", "colordiff.cli_options",
    )),
    ("command line", ("colordiff.cli", "colordiff.demo_cli")),
]
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # from `def` to the function's last line, docstring included
# functions still over MAX_FUNCTION_LINES, each to be split; the test fails once one fits, so the entry goes with it
STILL_LONG: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The colordiff modules a file imports (relative imports resolved; `from pkg import sub` names pkg.sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {m for m in found if m == "colordiff" or m.startswith("colordiff.")} - {name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def package_of(module: str) -> str:
    """The top-level part a module belongs to: `colordiff.semantics.base` -> `colordiff.semantics`."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between the package's top-level parts (subpackages and top-level modules)."""
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        packages.setdefault(package_of(name), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(name))
    return packages


def layer_of(module: str) -> int:
    """The layer of the most specific prefix listed in LAYERS (`colordiff.training.loop` -> training's)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it where it belongs")
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, stack)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles_between_packages():
    """Two subpackages may not lean on each other, even through different modules (a.x -> b.y, b.z -> a.w)."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "packages importing each other: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = []
    for name, targets in import_graph().items():
        for target in sorted(targets):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} imports {target} ({LAYERS[layer_of(name)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_only_the_entry_point_imports_the_cli():
    graph = import_graph()
    assert [n for n, targets in graph.items() if "colordiff.cli" in targets] == []


@pytest.mark.parametrize("source, expected", [
    ("from colordiff.cli import main", {"colordiff.cli"}),
    ("def f():\n    from colordiff.colorize import run_colorize", {"colordiff.colorize"}),
    ("from colordiff import metrics as M", {"colordiff.metrics"}),
    ("from . import registry", {"colordiff.pipelines.registry"}),
    ("from .images import x", {"colordiff.pipelines.images"}),
    ("import importlib\nimportlib.import_module('colordiff.metrics')", {"colordiff.metrics"}),
    ("import torch", set()),
])
def test_import_reader(tmp_path, source, expected):
    """The reader sees top-level, function-level, package and relative imports (so the checks above can fail)."""
    known = {"colordiff", "colordiff.cli", "colordiff.colorize", "colordiff.metrics", "colordiff.pipelines",
             "colordiff.pipelines.registry", "colordiff.pipelines.images", "colordiff.pipelines.x"}
    path = tmp_path / "x.py"
    path.write_text(source)
    assert imported(path, "colordiff.pipelines.x", known) == expected


def test_checks_catch_a_cycle_and_an_upward_import():
    graph = {"colordiff.cli": {"colordiff.colorize"}, "colordiff.colorize": {"colordiff.cli"}}
    assert find_cycle(graph) == ["colordiff.cli", "colordiff.colorize", "colordiff.cli"]
    between = {"colordiff.semantics.base": {"colordiff.images"},
               "colordiff.pipelines.x": {"colordiff.semantics.priors"},
               "colordiff.semantics.priors": {"colordiff.pipelines.y"}, "colordiff.pipelines.y": set()}
    assert find_cycle(between) is None  # no module cycle, but the two packages lean on each other
    assert find_cycle(package_graph(between)) == ["colordiff.pipelines", "colordiff.semantics", "colordiff.pipelines"]
    assert layer_of("colordiff.pipelines.assemble") < layer_of("colordiff.colorize")
    assert layer_of("colordiff.training.loop") == layer_of("colordiff.training")


def long_functions(source: str) -> dict[str, int]:
    """{name: lines} of the functions (methods and nested ones too) longer than MAX_FUNCTION_LINES."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found[node.name] = lines
    return found


def test_functions_fit_on_a_screen():
    long = {f"{p.relative_to(PACKAGE.parent)}:{name}": n for p in sorted(PACKAGE.rglob("*.py"))
            for name, n in long_functions(p.read_text(encoding="utf-8")).items()}
    over = {k: v for k, v in long.items() if k not in STILL_LONG}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"
    fits = STILL_LONG - set(long)
    assert not fits, f"these fit in {MAX_FUNCTION_LINES} lines now: take them out of STILL_LONG: {sorted(fits)}"


def test_function_length_reader():
    body = "\n".join(f"        x = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    source = f"def short():\n    pass\n\n\nclass A:\n    def long(self):\n{body}\n\n    def fits(self):\n{body}\n"
    assert long_functions(source) == {}
    assert long_functions(source.replace("x = 0\n", "x = 0\n        y = 0\n", 1)) == {"long": MAX_FUNCTION_LINES + 1}


def test_files_stay_short():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
