"""Hostile inputs to the data generator: planted links, crafted provenance, shared caches, races.

Each test reproduces one way a crafted file, a planted link or a second run could make datagen
run code, write outside its output or report a wrong dataset as valid, and checks that it now
fails in one line and leaves nothing behind.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import datagen
from datagen import DatagenError, GenerationConfig, Grid, generate, generate_splits, validate

_LOCAL = Path(sys.executable).with_name("datagen")
EXE = str(_LOCAL) if _LOCAL.exists() else shutil.which("datagen")
TINY = ["--grid", "16,16", "--steps", "3", "--quiet"]
CFG = dict(grid=Grid((16, 16)).to_dict(), steps=3, n_trajectories=2, batch_size=1)


def run(*args, env=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def one_line_error(p, match=""):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


# -- 1. code from PDE text, through the CLI ------------------------------------------------------

def test_generate_with_a_code_carrying_pde_text_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    subs = "".join(chr(ord(c) + 0xFEE0) for c in "subs")
    code = "".join("\\" + format(ord(c), "o") for c in f"open('{marker}', 'w')")
    p = run("generate", "--pde", f'u_t = 0.01*u_xx + u.{subs}(u, "{code}") - u**2', "--out", tmp_path / "out", *TINY)
    one_line_error(p, "ASCII")
    assert not marker.exists() and not (tmp_path / "out").exists()


# -- 2. planted links ------------------------------------------------------------------------

def test_a_link_planted_at_the_lock_file_is_refused_not_followed(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "ds"
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "train" / ".fisher.hdf5.lock").symlink_to(victim)
    p = run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY)
    one_line_error(p, "symbolic link")
    assert victim.read_text() == "precious\n"


def test_a_link_planted_at_the_folder_lock_is_refused(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".datagen.lock").symlink_to(victim)
    one_line_error(run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY), "symbolic link")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_planted_at_the_work_file_is_never_written_through(tmp_path, dangling):
    victim = tmp_path / "elsewhere.h5" if dangling else _victim(tmp_path)
    out = tmp_path / "ds"
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "train" / ".fisher.hdf5.tmp").symlink_to(victim)
    for extra in ([], ["--resume"]):
        p = run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY, *extra)
        assert p.returncode == 2
    assert (victim.read_text() == "precious\n") if not dangling else not victim.exists()
    # --overwrite removes the link itself and writes a fresh file in its place
    assert run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY, "--overwrite").returncode == 0
    assert (victim.read_text() == "precious\n") if not dangling else not victim.exists()
    assert validate(out / "data" / "train" / "fisher.hdf5").ok


def test_stats_and_outputs_replace_links_instead_of_writing_through_them(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stats.yaml").symlink_to(victim)
    for name in (".stats.yaml.tmp", ".stats.yaml.1.tmp"):
        (out / name).symlink_to(victim)
    assert run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY).returncode == 0
    assert victim.read_text() == "precious\n"
    assert not (out / "stats.yaml").is_symlink() and "mean" in (out / "stats.yaml").read_text()


def test_a_linked_split_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "ds"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train").symlink_to(elsewhere)
    one_line_error(run("generate", "fisher", "--out", out, "--splits", "train=2", *TINY), "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_plot_replaces_a_link_at_its_output(tmp_path):
    pytest.importorskip("matplotlib")
    victim = _victim(tmp_path)
    run("generate", "fisher", "--out", tmp_path / "ds", "--splits", "train=1", *TINY)
    png = tmp_path / "p.png"
    png.symlink_to(victim)
    p = run("plot", tmp_path / "ds", "--out", png)
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == "precious\n" and not png.is_symlink()


# -- 3. the numba kernel cache ---------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_kernel_cache_others_can_write_is_refused(tmp_path, mode):
    pytest.importorskip("numba")
    cache = tmp_path / "cache"
    (cache / "numba").mkdir(parents=True)
    os.chmod(cache / "numba", mode)
    p = run("generate", "fisher", "--out", tmp_path / "ds", "--splits", "train=1", *TINY, "--backend", "numba",
            "--integrator", "rk4", env={"DATAGEN_CACHE_DIR": str(cache)})
    one_line_error(p, "writable by others")
    assert not (tmp_path / "ds" / "data").exists()


def test_a_linked_kernel_cache_is_refused(tmp_path):
    pytest.importorskip("numba")
    from datagen import _numba

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "numba").symlink_to(real)
    with pytest.raises(DatagenError, match="not a plain folder"):
        _numba._check_private(tmp_path / "cache" / "numba")
    _numba._check_private(real)  # a private folder of the user's own is fine


# -- 4. crafted provenance and sizes ---------------------------------------------------------

def _tamper_provenance(path, change):
    with h5py.File(path, "r+") as f:
        prov = json.loads(f.attrs["provenance"])
        change(prov)
        f.attrs["provenance"] = json.dumps(prov)


def _ds(tmp_path, name="ds", **extra):
    out = tmp_path / name
    generate_splits(GenerationConfig(**{**CFG, **extra}), {"train": 2}, out)
    return out, out / "data" / "train" / "fisher.hdf5"


@pytest.mark.parametrize("change, match", [
    (lambda p: p["config"].update(initial={"name": "fourier", "n_modes": 10 ** 6}), "limit"),
    (lambda p: p["config"].update(initial={"name": "fourier", "n_modes": 1000}), "resolves"),
    (lambda p: p["pde"]["rhs"]["u"].append({"coeff": 1.0, "factors": [["u", [0, 0]]] * 10 ** 6}), "degree"),
    (lambda p: p["config"].update(spec={**p["pde"], "rhs": {"u": [{"coeff": 1.0, "factors": [["u", [0, 0]]] * 10 ** 6}]}}),
     "degree"),
    (lambda p: p["pde"]["rhs"]["u"].append({"coeff": 1.0, "factors": [["u", [10 ** 7, 0]]]}), "i + j"),
    (lambda p: p["config"].update(steps=10 ** 9), "limit"),
    (lambda p: p["config"].update(dt=1e300), "dt="),
])
def test_crafted_provenance_is_refused_before_allocating(tmp_path, change, match):
    out, path = _ds(tmp_path)
    before = datagen.read_provenance(path)
    _tamper_provenance(path, change)
    t0 = time.perf_counter()
    p = run("validate", out, "--deep")
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr and match in p.stdout + p.stderr, p.stdout + p.stderr
    if datagen.read_provenance(path)["config"] != before["config"]:  # --from reads the config alone
        one_line_error(run("generate", "--from", out, "--out", tmp_path / "again"), match)
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "again" / "data" / "train" / "fisher.hdf5").exists()


def test_deeply_nested_provenance_is_one_line_everywhere(tmp_path):
    out, path = _ds(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["provenance"] = "[" * 100_000 + "]" * 100_000
    for args in (("info", out), ("validate", out), ("generate", "--from", out, "--out", tmp_path / "x")):
        p = run(*args)
        assert p.returncode in (1, 2) and "Traceback" not in p.stderr and "Recursion" not in p.stderr, p.stderr
    from datagen.limits import loads_bounded

    with pytest.raises(DatagenError, match="nests deeper"):
        loads_bounded("{" + '"a":{' * 100 + "}" * 101, "x")
    assert loads_bounded('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', "x") == {"a": "[" * 44}


@pytest.mark.parametrize("args, match", [(["--dt", "1e300"], "substeps"), (["--steps", "1000000000"], "limit"),
                                         (["--grid", "100000,100000"], "cells"),
                                         (["--grid", "40000,40000"], "GiB"),
                                         (["--ic-param", "n_modes=100000000"], "limit")])
def test_huge_requests_on_the_command_line_fail_fast(tmp_path, args, match):
    t0 = time.perf_counter()
    p = run("generate", "fisher", "--out", tmp_path / "x", "--splits", "train=1", "--quiet", "--ic", "fourier", *args)
    one_line_error(p, match)
    assert time.perf_counter() - t0 < 60


# -- 9. one run per dataset folder; validate compares the splits -----------------------------

def test_a_second_run_on_a_live_folder_is_locked_out_even_with_overwrite(tmp_path):
    out = tmp_path / "ds"
    slow = ["--grid", "48,48", "--steps", "30", "--batch-size", "1", "--quiet"]
    first = subprocess.Popen([EXE, "generate", "fisher", "--out", str(out), "--splits", "valid=1,train=40", *slow],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / ".datagen.lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run("generate", "fisher", "--out", out, "--splits", "train=2", "--seed", "7", "--overwrite", *TINY)
        one_line_error(second, "another run")
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0, first.stderr.read()
    prov = [datagen.read_provenance(p)["config"]["seed"] for p in datagen.store.dataset_files(out).values()]
    assert prov == [0, 0]


def test_validate_refuses_a_folder_whose_splits_disagree(tmp_path):
    out, _ = _ds(tmp_path)
    other, _ = _ds(tmp_path, "other", seed=5)
    shutil.copy(other / "data" / "train" / "fisher.hdf5", tmp_path / "t.h5")
    (out / "data" / "test").mkdir()
    shutil.copy(tmp_path / "t.h5", out / "data" / "test" / "fisher.hdf5")
    with h5py.File(out / "data" / "test" / "fisher.hdf5", "r+") as f:  # relabel it as a test split
        prov = json.loads(f.attrs["provenance"])
        prov["config"]["split"] = "test"
        f.attrs["provenance"] = json.dumps(prov)
    p = run("validate", out)
    assert p.returncode == 1 and "seed" in p.stdout + p.stderr, p.stdout + p.stderr


# -- 10. what The Well's loader reads is checked too -----------------------------------------

@pytest.mark.parametrize("edit, match", [
    (lambda f: f["scalars"]["a"].write_direct(np.array(0.5, np.float32)), "scalars"),
    (lambda f: f["boundary_conditions"]["x_periodic"].attrs.__setitem__("bc_type", "wall"), "boundary_conditions"),
    (lambda f: f["boundary_conditions"].move("x_periodic", "x_dirichlet"), "boundary_conditions"),
])
def test_validate_catches_tampered_scalars_and_boundary_conditions(tmp_path, edit, match):
    _, path = _ds(tmp_path)
    with h5py.File(path, "r+") as f:
        edit(f)
    rep = validate(path)
    assert not rep.ok and any(match in e for e in rep.errors), rep.errors


def test_validate_bounds_gray_scott_values_without_deep(tmp_path):
    out = tmp_path / "gs"
    generate_splits(GenerationConfig(pde="gray_scott", grid=Grid((16, 16)).to_dict(), steps=3, n_trajectories=2,
                                     initial={"name": "patches", "n_patches": 2, "size": 0.3}), {"train": 2}, out)
    path = out / "data" / "train" / "gray_scott.hdf5"
    assert validate(path).ok
    with h5py.File(path, "r+") as f:
        f["t0_fields"]["v"][1, 2, 3, 3] = 1e30  # rewritten with a fresh checksum: only the values can tell
    rep = validate(path)
    assert not rep.ok and any("range" in e for e in rep.errors), rep.errors


# -- 11. parameter names ---------------------------------------------------------------------

@pytest.mark.parametrize("text, param", [("u_t = n_trajectories*u_xx", "n_trajectories=0.01"),
                                         ("u_t = u_xx + u", "u_xx=5"), ("u_t = dataset_name*u_xx", "dataset_name=1")])
def test_parameters_that_would_shadow_names_are_refused(tmp_path, text, param):
    one_line_error(run("generate", "--pde", text, "--param", param, "--out", tmp_path / "x", *TINY))
    assert not (tmp_path / "x").exists()


# -- 12. resume after a full disk ------------------------------------------------------------

def test_resume_counts_the_space_its_work_file_already_holds(tmp_path, monkeypatch):
    import importlib

    gen = importlib.import_module("datagen.generate")

    cfg = GenerationConfig(pde="fisher", steps=3, n_trajectories=4, batch_size=1, grid=Grid((64, 64)).to_dict())

    def stop(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, out, progress=stop)
    held = (tmp_path / ".cut.h5.tmp").stat().st_blocks * 512
    need = int(1.1 * 64 * 64 * 4 * 4 * 4) + 2 ** 20
    real = shutil.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=need - held // 2)  # too little for a fresh run, enough for the rest

    monkeypatch.setattr(gen.shutil, "disk_usage", nearly_full)
    with pytest.raises(DatagenError, match="not enough disk space"):
        generate(cfg, tmp_path / "fresh.h5")
    generate(cfg, out, resume=True)
    assert validate(out).ok


# -- 13. plot needs matplotlib only (the [plot] extra), not dask -----------------------------

def test_plot_works_without_dask(tmp_path):
    pytest.importorskip("matplotlib")
    _, path = _ds(tmp_path)
    blocker = tmp_path / "nodask" / "dask"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('dask is not installed')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    probe = subprocess.run([sys.executable, "-c", "import dask"], capture_output=True, text=True,
                           env={**os.environ, **env})
    assert probe.returncode != 0  # the blocker works: dask cannot be imported in the child
    p = run("plot", path, "--out", tmp_path / "p.png", "--times", "2,0", env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
