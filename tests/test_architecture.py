"""The shape of fvr_core that docs/architecture.md promises: sub-packages in layers, each importing
only from below it, no import cycles between modules (imports inside functions included, so none
can hide one), no Streamlit anywhere in the library, and the public API of the README's
"From Python" section importable from fvr_core itself."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fvr_core"

# the layer of each top-level name of fvr_core (a sub-package or a module); docs/architecture.md's table
LAYERS = {
    "settings": -1, "files": -1, "metrics": -1, "durations": -1,
    "data": 0, "models": 0,
    "config": 1,
    "runs": 2,
    "workspace": 3,
    "inference": 4,
    "training": 5,
    "report": 6,
    "cli": 7, "__main__": 7, "__init__": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported fvr_core module, line) for every import in the file, at any depth: `from X import y`
    counts X.y when X.y is a module, else X."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.startswith("fvr_core")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("fvr_core"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (REPO / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (REPO / Path(*candidate.split(".")) / "__init__.py").is_file()
                found.append((candidate if is_module else base, node.lineno))
    return found


def _library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_part_of_fvr_core_has_a_layer_and_each_sub_package_says_what_it_owns():
    for path in _library_files():
        module = _module_name(path)
        assert module == "fvr_core" or module.split(".")[1] in LAYERS, f"{path}: add it to a layer (docs/architecture.md)"
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init}: say what the sub-package owns and what it may import"


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in _library_files():
        module = _module_name(path)
        if module == "fvr_core":
            continue  # the public API: lazy re-exports from every layer
        for imported, line in _imports(path):
            if imported != "fvr_core" and _layer(imported) > _layer(module):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_data_and_models_do_not_import_each_other():
    for path in _library_files():
        module = _module_name(path)
        for low, other in (("data", "models"), ("models", "data")):
            if module.startswith(f"fvr_core.{low}"):
                assert not [i for i, _ in _imports(path) if i.startswith(f"fvr_core.{other}")], path


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = {_module_name(p): {i for i, _ in _imports(p) if i != "fvr_core"} for p in _library_files() if _module_name(p) != "fvr_core"}
    done, on_path = set(), []

    def visit(node: str) -> None:
        if node in on_path:
            cycle = on_path[on_path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


def test_the_library_never_imports_streamlit():
    for path in _library_files():
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "streamlit"], path


def test_the_public_api_is_importable_from_fvr_core_without_loading_torch_first():
    code = ("import sys, fvr_core; assert 'torch' not in sys.modules, 'importing fvr_core loaded torch'; "
            "from fvr_core import TrainConfig, RunStore, train, resume, launch, Predictor, evaluate_run, "
            "SearchSpec, SearchStore, parse_range, run_search, study_figures, make_ensemble; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    fvr_core = importlib.import_module("fvr_core")
    missing = [name for name in fvr_core.__all__ if getattr(fvr_core, name, None) is None]
    assert not missing, f"fvr_core.__all__ names what cannot be loaded: {missing}"
