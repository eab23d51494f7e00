"""Hostile inputs to training and evaluation: bad options, crafted checkpoints, shared run folders,
corrupt reference data, a full disk.

Each test reproduces one way a run could go silently wrong, overwrite another run's work or fail
with a traceback, and checks that it now fails in one line and leaves the old files intact.
"""

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import datagen
import pdesurrogate as ps
import pdesurrogate.model as model_mod
from datagen import GenerationConfig, Grid
from datagen.safeio import output_lock
from pdesurrogate import SurrogateError
from pdesurrogate.train_cli import RUN_LOCK

EXE = str(Path(sys.executable).with_name("pdesurrogate"))
SMALL = ["--epochs", "1", "--steps", "3", "--quiet"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard") / "ds"
    cfg = GenerationConfig(grid=Grid((16, 16)).to_dict(), steps=4, n_trajectories=2, batch_size=1)
    datagen.generate_splits(cfg, {"train": 3, "valid": 2, "test": 2}, out)
    return out


@pytest.fixture(scope="module")
def small_toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.toml"
    path.write_text("[data]\nunroll = 1\n\n[model]\nhidden = 4\nkernel_size = 3\n\n"
                    "[fit]\nbatch_size = 8\ncurriculum = [1]\n")
    return path


def cli(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True)


def one_line(p, match):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pdesurrogate: error: ") and "Traceback" not in p.stderr, p.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def _model(ds, **kw):
    opts = {"hidden": 4, "kernel_size": 3, "powers": (2,), "substeps": 1, "init": "stencil", "dt": ds.dt,
            "spacing": ds.spacing, "boundary": ds.boundary}
    return ps.build_surrogate(**{**opts, **kw})


def _train_file(folder):
    return folder / "data" / "train" / "fisher.hdf5"


# -- 5. every numeric option is range-checked ------------------------------------------------

@pytest.mark.parametrize("option, match", [({"clip": -1.0}, "clip=-1.0"), ({"clip": float("nan")}, "clip=nan"),
                                           ({"num_workers": -1}, "num_workers=-1"), ({"seed": -1}, "seed=-1"),
                                           ({"patience": 0}, "patience=0"), ({"valid_steps": 0}, "valid_steps=0")])
def test_fit_refuses_out_of_range_options(folder, option, match):
    train = ps.WindowDataset(_train_file(folder), unroll=1)
    with pytest.raises(SurrogateError, match=match):
        ps.fit(_model(train), train, epochs=1, progress=False, **option)


def test_powers_below_one_are_refused(folder):
    train = ps.WindowDataset(_train_file(folder), unroll=1)
    with pytest.raises(SurrogateError, match="from 1 to"):
        _model(train, powers=(0,))


def test_cli_refuses_a_negative_seed(folder, tmp_path):
    one_line(cli("train", folder, "--out", tmp_path / "r", "--seed", "-1", *SMALL), "seed=-1")
    assert not (tmp_path / "r").exists()


# -- 6. resume compares everything that defines the run --------------------------------------

@pytest.mark.parametrize("change, match", [
    (lambda f, m: (ps.WindowDataset(_train_file(f), unroll=1, stride=2), m), "stride was 1, this run has 2"),
    (lambda f, m: (ps.WindowDataset(f / "data" / "valid" / "fisher.hdf5", unroll=1), m), "file was"),
    (lambda f, m: (ps.WindowDataset(_train_file(f), unroll=1), m.with_integrator("rk4")), "integrator was 'euler'"),
])
def test_resume_with_other_data_or_integrator_is_refused_naming_both(folder, tmp_path, change, match):
    train = ps.WindowDataset(_train_file(folder), unroll=1)
    model = _model(train)
    ps.fit(model, train, epochs=1, checkpoint=tmp_path, progress=False)
    other, m2 = change(folder, _model(train))
    with pytest.raises(SurrogateError, match="other options") as err:
        ps.fit(m2, other, epochs=1, checkpoint=tmp_path, resume=True, progress=False)
    assert match in str(err.value)
    assert "\n" not in str(err.value)


# -- 7. one training per run folder; a finished run is not replaced silently -----------------

def test_a_second_training_on_a_live_run_folder_is_locked_out(folder, small_toml, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with output_lock(out / RUN_LOCK, out):  # a live run holds the folder
        one_line(cli("train", folder, "--config", small_toml, "--out", out, "--overwrite", *SMALL), "another run")
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_finished_run_is_refused_without_overwrite(folder, small_toml, tmp_path):
    out = tmp_path / "run"
    p = cli("train", folder, "--config", small_toml, "--out", out, *SMALL)
    assert p.returncode == 0, p.stderr
    before = {name: (out / name).read_bytes() for name in ("model.pt", "best.pt", "run.json")}
    one_line(cli("train", folder, "--config", small_toml, "--out", out, "--seed", "3", *SMALL), "--overwrite")
    assert {name: (out / name).read_bytes() for name in before} == before
    one_line(cli("train", folder, "--out", out, "--resume", "--overwrite", *SMALL), "give one of them")
    p = cli("train", folder, "--config", small_toml, "--out", out, "--seed", "3", "--overwrite", *SMALL)
    assert p.returncode == 0, p.stderr
    assert (out / "model.pt").read_bytes() != before["model.pt"]
    assert not (out / RUN_LOCK).exists()


# -- 8. a non-finite reference is refused, never averaged away -------------------------------

def test_a_nan_in_the_reference_is_refused_in_one_line(folder, tmp_path):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes((folder / "data" / "test" / "fisher.hdf5").read_bytes())
    with h5py.File(bad, "r+") as f:
        f["t0_fields/u"][1, 3, 5, 5] = np.nan
    model = _model(ps.WindowDataset(bad, unroll=1))
    with pytest.raises(SurrogateError, match="trajectory 1 is not finite at step 3") as err:
        ps.evaluate(model, bad, steps=4)
    assert "\n" not in str(err.value)
    with pytest.raises(SurrogateError, match="trajectory 1 is not finite at step 3"):
        ps.error_split(model, bad, steps=4, lipschitz=False)
    # the first trajectory alone is clean and is scored
    assert np.isfinite(ps.evaluate(model, bad, steps=4, trajectories=[0])["rel_l2"].values).all()


# -- 4 / 13. crafted checkpoints are refused before anything is allocated --------------------

def _crafted(tmp_path, **changes):
    model = ps.build_surrogate(hidden=4, kernel_size=3, dt=0.01, spacing=(0.1, 0.1))
    path = ps.save(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if key == "config" and isinstance(value, dict):
            payload["config"] = json.dumps({**json.loads(payload["config"]), **value})
        else:
            payload[key] = value
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"config": {"hidden": 10 ** 8}}, "hidden"),
    ({"config": {"kernel_size": 10 ** 5}}, "kernel_size"),
    ({"state_dict": [1, 2, 3]}, "state_dict is not a mapping"),
    ({"state_dict": {"a": "b"}}, "state_dict is not a mapping"),
    ({"config": "[" * 10000}, "config"),
])
def test_crafted_checkpoints_are_one_line_and_fast(tmp_path, changes, match):
    path = _crafted(tmp_path, **changes)
    t0 = time.perf_counter()
    with pytest.raises(SurrogateError, match=match) as err:
        ps.load(path)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(err.value)
    p = cli("evaluate", path, tmp_path / "nothing.h5")
    one_line(p, str(path))


def test_a_training_state_of_the_wrong_type_is_refused(folder, tmp_path):
    train = ps.WindowDataset(_train_file(folder), unroll=1)
    ps.fit(_model(train), train, epochs=1, checkpoint=tmp_path, progress=False)
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    payload["training"]["history"] = {"loss": "not a list"}
    torch.save(payload, tmp_path / "last.pt")
    with pytest.raises(SurrogateError, match="history is missing or of the wrong type"):
        ps.fit(_model(train), train, epochs=1, checkpoint=tmp_path, resume=True, progress=False)


# -- 2 / 13. checkpoints: full disk and planted links ----------------------------------------

def test_a_full_disk_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = ps.build_surrogate(hidden=4, kernel_size=3, dt=0.01, spacing=(0.1, 0.1))
    path = ps.save(model, tmp_path / "last.pt")
    old = path.read_bytes()

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_mod.torch, "save", full)
    with torch.no_grad():
        model.vector_field.conv1.bias.add_(1.0)
    with pytest.raises(SurrogateError, match="No space left on device.*unchanged") as err:
        ps.save(model, path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


@pytest.mark.parametrize("name", ["last.pt", ".last.pt.tmp"])
def test_a_link_planted_in_the_checkpoint_folder_is_not_written_through(folder, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    (ckpt / name).symlink_to(victim)
    train = ps.WindowDataset(_train_file(folder), unroll=1)
    ps.fit(_model(train), train, epochs=1, checkpoint=ckpt, progress=False)
    assert victim.read_text() == "precious\n"
    assert ps.load(ckpt / "last.pt").vector_field.hidden == 4


# -- 13. evaluate's own bounds and devices ---------------------------------------------------

@pytest.mark.parametrize("args, match", [(["--steps", "1000000"], "limit"), (["--device", "bogus"], "not a device"),
                                         (["--device", "cuda:7"], "CUDA device")])
def test_evaluate_requests_are_one_line(folder, tmp_path, args, match):
    ds = ps.WindowDataset(folder / "data" / "test" / "fisher.hdf5", unroll=1)
    path = ps.save(_model(ds), tmp_path / "m.pt")
    t0 = time.perf_counter()
    one_line(cli("evaluate", path, folder, "--split", "test", *args), match)
    assert time.perf_counter() - t0 < 60
