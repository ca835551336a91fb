"""The house plan: imports run one way between the top-level packages, no import circle, one settings reader."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "indexing", "service", "training", "loadtest")
# what each package may import from the others (itself always): service -> models (+ the prepared-data readers of
# indexing.data); indexing -> models; training -> models + indexing; loadtest drives everything
ALLOWED = {
    "models": set(),
    "indexing": {"models"},
    "service": {"models", "indexing"},
    "training": {"models", "indexing"},
    "loadtest": {"models", "indexing", "service"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, including those inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_imports_run_one_way():
    wrong = []
    for path in sources():
        pkg = path.relative_to(ROOT).parts[0]
        for line, mod in imports(path):
            top = mod.split(".")[0]
            if top in PACKAGES and top != pkg and top not in ALLOWED[pkg]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {mod} ({pkg} -> {top} is not allowed)")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    known = {module_of(p) for p in sources()}
    graph: dict[str, set[str]] = {}
    for path in sources():
        src = module_of(path)
        graph[src] = {m for _, m in imports(path) if m in known and m != src}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_the_checker_catches_a_forbidden_direction(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\ndef f():\n    from service.settings import Settings\n")
    assert (3, "service.settings") in imports(bad) and "service" not in ALLOWED["models"]


def test_only_the_settings_object_reads_unisr_variables():
    readers = []
    for path in sources():
        if path == ROOT / "models" / "settings.py":  # the Settings object itself
            continue
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"os\.environ(\.get)?\s*[\[(]\s*[\"']UNISR_|getenv\(\s*[\"']UNISR_", line):
                readers.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not readers, "UNISR_* read outside the Settings object:\n" + "\n".join(readers)


def test_registry_names_match_the_classes():
    from models.registry import BACKENDS, backend_class

    for name, (tasks, _) in BACKENDS.items():
        cls = backend_class(name)
        assert cls.name == name and tuple(cls.tasks) == tasks, name
