"""Arrows point one way: pdesurrogate -> datagen; datagen never imports torch."""

import ast
import subprocess
import sys
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
