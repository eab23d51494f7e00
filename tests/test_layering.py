"""Arrows point one way: pdesurrogate -> datagen; datagen never imports torch."""

import ast
import subprocess
import sys

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_datagen_runs_without_importing_torch(tmp_path):
    code = (
        "import sys, datagen\n"
        "from datagen import GenerationConfig, Grid, generate, open_dataset, validate\n"
        f"p = generate(GenerationConfig(grid=Grid((16, 16)).to_dict(), steps=2, n_trajectories=2), r'{tmp_path}/t.h5')\n"
        "open_dataset(p); validate(p)\n"
        "import datagen.cli, datagen.plotting, datagen._numba\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pdesurrogate')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_of_datagen_names_torch_or_pdesurrogate():
    for path in (ROOT / "datagen").glob("*.py"):
        assert not _imports(path) & {"torch", "pdesurrogate"}, path.name


def test_importing_datagen_leaves_the_heavy_optional_modules_out():
    # every CLI call and worker pays for what `import datagen` pulls in: sparse matrices (Jacobians
    # only), numba (its backend only) and xarray (reading only) load on use; sympy is never needed
    code = "import sys, datagen\nprint(sorted({m.split('.')[0] + ('.sparse' if m.startswith('scipy.sparse') else '') " \
           "for m in sys.modules} & {'scipy.sparse', 'numba', 'xarray', 'sympy', 'torch'}))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the same package's modules it imports, function-level imports included."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / package
    mods = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        me = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    target = node.module
                    names = [target] if target else [a.name for a in node.names]
                elif node.level == 0 and node.module and node.module.split(".")[0] == package:
                    parts = node.module.split(".")
                    names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
                else:
                    continue
                deps.update(n.split(".")[0] for n in names if n)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == package and len(parts) > 1:
                        deps.add(parts[1])
        # the package's own __init__ only re-exports: a module that reads it imports everything
        graph[me] = {d if d in mods else "__init__" for d in deps if d != me}
    return graph


@pytest.mark.parametrize("package", ["datagen", "pdesurrogate"])
def test_no_import_circle_in_either_package(package):
    import graphlib

    graph = _import_graph(package)
    graph.pop("__init__", None)  # __init__ re-exports; a module importing it is reported below
    readers = sorted(m for m, d in graph.items() if "__init__" in d)
    assert not readers, f"{readers} import the package itself (import the module that holds the name)"
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle in {package}: {' -> '.join(exc.args[1])}")


def test_the_circle_check_sees_function_level_imports():
    import graphlib

    graph = _import_graph("pdesurrogate")
    graph["model"] = graph["model"] | {"evaluation"}  # as if model imported evaluation inside a function
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
