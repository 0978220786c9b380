"""The layout holds: each package imports alone (no import cycle), and labelling loads only the
runtime modules of `model`, never training, evaluation or export."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for directory in ("model", "pipeline")
    for path in (ROOT / directory).rglob("*.py")
)
MODULES = {module for module in PACKAGES if not module.endswith("__init__")}
OFFLINE = ("model.training", "model.evaluation", "model.export")


def python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_each_module_imports_alone():
    """Each module imported first, with no module of the project loaded before it (a cycle
    fails then); third-party modules stay loaded between them, so one process does it."""
    modules = [module.removesuffix(".__init__") for module in PACKAGES]
    python(
        "import importlib, sys\n"
        f"for module in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('model', 'pipeline')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(module)\n"
    )


def test_labelling_loads_no_training_evaluation_or_export_module(recordings, tmp_path):
    """A whole run through the CLI, in a fresh process: the modules it loaded. Nor does it load
    onnx (a second of start-up): the verifier's sliding embedding model is stored built."""
    loaded = python(
        "import sys\n"
        "from pipeline.cli import main\n"
        f"assert main(['--input', {str(recordings)!r}, '--output', {str(tmp_path / 'out')!r},"
        " '--quiet', '--events', " + repr(str(tmp_path / "events")) + "]) == 0\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in ('model', 'onnx'))))"
    ).split()
    assert "model.serving" in loaded and "model.verifier" in loaded
    assert [module for module in loaded if module.startswith(OFFLINE)] == []
    assert [module for module in loaded if module.split(".")[0] == "onnx"] == []


def project_imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in it (at the top or inside a function)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        imported |= {name for name in names if name in MODULES}
    return imported


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = {module: project_imports(module) for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported) :], imported]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


MAX_FUNCTION_LINES = 60
ARGPARSE_TABLES = {"build_parser", "parse_args"}  # one add_argument call per flag


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of the functions in `source` over MAX_FUNCTION_LINES, argparse tables aside."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and node.name not in ARGPARSE_TABLES
    ]


def test_no_function_is_over_60_lines():
    assert long_functions("def f():\n" + "    x = 1\n" * 60) == [("f", 61)]
    too_long = {
        f"{path.relative_to(ROOT)}: {name}": lines
        for directory in ("model", "pipeline", "tests", "bench")
        for path in (ROOT / directory).rglob("*.py")
        for name, lines in long_functions(path.read_text())
    }
    assert too_long == {}
