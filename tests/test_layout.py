"""
The layout's promises: the engine (``art_some/core``) imports nothing of art_some outside itself, and no module
imports another that imports it back at module level (no import cycle).
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "art_some"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: pathlib.Path) -> set[str]:
    """The art_some modules that ``path`` imports when it is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0 and sub.module.startswith("art_some"):
                found.add(sub.module)
                found.update(f"{sub.module}.{alias.name}" for alias in sub.names)
            elif isinstance(sub, ast.Import):
                found.update(alias.name for alias in sub.names if alias.name.startswith("art_some"))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("art_some.core")))
def test_the_engine_imports_nothing_outside_core(name):
    imports = {m for m in module_level_imports(MODULES[name]) if m in MODULES}
    source = MODULES[name].read_text()
    outside = {m for m in imports if not m.startswith("art_some.core")}
    lazily = {line.strip() for line in source.splitlines()
              if line.strip().startswith(("from art_some", "import art_some")) and "art_some.core" not in line}
    assert not outside and not lazily, f"{name} imports {sorted(outside | lazily)}"


def test_no_import_cycle():
    graph = {name: {m for m in module_level_imports(path) if m in MODULES and m != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(name, trail):
        state[name] = 1
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_estimator_is_probed_outside_the_protocol():
    # What evaluation and runs use of an estimator is written in estimators/protocol.py and checked there once.
    probes = [f"{path.relative_to(PACKAGE.parent)}:{number}"
              for path in PACKAGE.rglob("*.py") if path.name != "protocol.py"
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if any(probe in line for probe in ("getattr(estimator,", "getattr(est,", "hasattr(estimator,"))]
    assert not probes, f"estimator probes outside the protocol: {probes}"


def test_the_command_line_only_parses_calls_and_prints():
    lines = len((PACKAGE / "cli.py").read_text().splitlines())
    assert lines <= 400, f"cli.py has {lines} lines; its policies belong in art_some/runs"


def test_no_module_below_the_package_face_imports_the_version_from_it():
    offenders = [str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
                 if path.name != "__init__.py" or path.parent != PACKAGE
                 if "from art_some import __version__" in path.read_text()]
    assert not offenders, offenders
