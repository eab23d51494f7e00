"""Every Python block of README.md and docs/*.md runs as written, in a fresh interpreter, from a
folder where the README's main job has made ``data/fisher/`` (smaller, same layout)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import datagen

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors" / "predicting-pixel-data"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks():
    for f in FILES:
        for k, code in enumerate(re.findall(r"```python\n(.*?)```", f.read_text(), re.S)):
            yield pytest.param(code, id=f"{f.relative_to(ROOT)}#{k}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    cfg = datagen.GenerationConfig(pde="fisher", steps=40, seed=0)
    datagen.generate_splits(cfg, {"train": 4, "valid": 2, "test": 4}, d / "data" / "fisher")
    return d


def test_there_are_blocks_to_run():
    assert len(list(_blocks())) >= 5


@pytest.mark.parametrize("code", list(_blocks()))
def test_python_block_runs(code, workdir):
    if "PDESURROGATE_PUBLISHED" in code and "os.path.exists" not in code and not ANCHORS.exists():
        pytest.skip("needs the published weights")
    env = {**os.environ, "PDESURROGATE_PUBLISHED": str(ANCHORS), "MPLBACKEND": "Agg"}
    p = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
