import hashlib
import json

import h5py
import numpy as np
import pytest

from datagen import catalogue

from datagen import DatagenError, GenerationConfig, Grid, generate, open_dataset, read_provenance, validate
from datagen.store import write_dataset


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


SMALL = dict(grid=Grid((32, 32)).to_dict(), steps=6, n_trajectories=5, batch_size=2)


def test_well_schema_and_xarray_view(tmp_path):
    p = generate(GenerationConfig(**SMALL), tmp_path / "train.h5")
    with h5py.File(p) as f:
        assert f.attrs["dataset_name"] == "fisher"
        assert f.attrs["grid_type"] == "cartesian" and f.attrs["n_spatial_dims"] == 2
        assert f.attrs["n_trajectories"] == 5
        assert list(f.attrs["simulation_parameters"]) == ["a", "r"] and f.attrs["a"] == 0.01
        assert list(f["dimensions"].attrs["spatial_dims"]) == ["x", "y"]
        assert f["dimensions/time"].shape == (7,) and f["dimensions/x"].shape == (32,)
        u = f["t0_fields/u"]
        assert u.shape == (5, 7, 32, 32) and u.dtype == np.float32 and u.chunks == (1, 1, 32, 32)
        assert list(f["t0_fields"].attrs["field_names"]) == ["u"]
        assert f["boundary_conditions/x_periodic"].attrs["bc_type"] == "periodic"
        assert list(f["scalars"].attrs["field_names"]) == ["a", "r"]
        assert set(f) == {"dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields", "t2_fields"}
    ds = open_dataset(p)
    assert ds["u"].dims == ("trajectory", "time", "x", "y")
    assert ds.sizes == {"trajectory": 5, "time": 7, "x": 32, "y": 32}
    np.testing.assert_allclose(ds.time.values, 0.24 * (1 / 32) ** 2 / 0.01 * np.arange(7), rtol=1e-14)
    np.testing.assert_allclose(ds.x.values, np.arange(32) / 32)
    assert ds.attrs["pde"] == "u_t = 0.01*(u_xx + u_yy) + u - u^2"
    lazy = open_dataset(p, lazy=True)
    np.testing.assert_array_equal(lazy["u"][2, 3].values, ds["u"][2, 3].values)


def test_provenance_is_complete(tmp_path):
    p = generate(GenerationConfig(**SMALL), tmp_path / "train.h5")
    prov = read_provenance(p)
    cfg = prov["config"]
    for key in ("pde", "params", "grid", "dt", "integrator", "substeps", "method", "accuracy", "initial", "seed", "split"):
        assert key in cfg
    assert cfg["integrator"] == "etdrk4" and cfg["initial"]["name"] == "sincos"
    assert set(prov["versions"]) >= {"datagen", "numpy", "scipy", "h5py"}
    assert prov["pde"]["fields"] == ["u"]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = generate(GenerationConfig(**SMALL), tmp_path / "a" / "train.h5")
    b = generate(GenerationConfig(**SMALL), tmp_path / "b" / "train.h5", workers=2)
    c = generate(GenerationConfig(**SMALL, seed=1), tmp_path / "c" / "train.h5")
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    t = generate(GenerationConfig(**{**SMALL, "split": "test"}), tmp_path / "t" / "test.h5")
    with h5py.File(a) as fa, h5py.File(t) as ft:
        assert not np.array_equal(fa["t0_fields/u"][0, 0], ft["t0_fields/u"][0, 0])


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_workers_solving_into_shared_slots_give_the_same_bytes(tmp_path, compression):
    # 11 one-trajectory batches on 2 and 3 workers finish out of order; each is solved into a
    # shared buffer the writer child reads, and a slot is reused only after its frames are written
    from datagen import runner

    cfg = GenerationConfig(**{**SMALL, "n_trajectories": 11, "batch_size": 1, "compression": compression})
    ref = digest(generate(cfg, tmp_path / "w1.h5"))
    runner._SLOTS = []
    for w in (2, 3):
        assert digest(generate(cfg, tmp_path / f"w{w}.h5", workers=w)) == ref
        assert len(runner._SLOTS) == 2 * w + 2  # the shared path, not frames pickled back


def _solve_or_die(cfg_json, start, stop, with_errors=False, out=None):
    """A worker that the OOM killer takes while it solves trajectory 6."""
    import os
    import signal

    from datagen.solver import solve_batch

    if start == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return solve_batch(cfg_json, start, stop, with_errors, out)


def test_a_killed_worker_is_one_line_and_the_run_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    from datagen import runner

    cfg = GenerationConfig(**{**SMALL, "n_trajectories": 11, "batch_size": 1})
    ref = digest(generate(cfg, tmp_path / "ref.h5"))
    out = tmp_path / "w.h5"
    with monkeypatch.context() as m:
        m.setattr(runner, "solve_batch", _solve_or_die)  # the forked workers inherit it
        with pytest.raises(DatagenError, match="a worker process died .* rerun with --resume") as info:
            generate(cfg, out, workers=2)
    assert info.value.resumable and not out.exists() and (tmp_path / ".w.h5.tmp").exists()
    assert digest(generate(cfg, out, workers=2, resume=True)) == ref


def test_batch_rng_is_independent_of_batch_size(tmp_path):
    a = open_dataset(generate(GenerationConfig(**SMALL), tmp_path / "a.h5"))
    b = open_dataset(generate(GenerationConfig(**{**SMALL, "batch_size": 5}), tmp_path / "b.h5"))
    np.testing.assert_array_equal(a["u"][:, 0].values, b["u"][:, 0].values)


def test_existing_output_and_leftover_work_need_flags(tmp_path):
    out = tmp_path / "train.h5"
    generate(GenerationConfig(**SMALL), out)
    with pytest.raises(DatagenError, match="exists; pass --overwrite"):
        generate(GenerationConfig(**SMALL), out)
    before = digest(out)
    generate(GenerationConfig(**SMALL), out, overwrite=True)
    assert digest(out) == before
    (tmp_path / ".x.h5.tmp").write_bytes(b"left by a run killed while it made its layout")
    with pytest.raises(DatagenError, match="--resume"):
        generate(GenerationConfig(**SMALL), tmp_path / "x.h5")
    # a file under construction that cannot be read is discarded, and the run starts afresh
    assert digest(generate(GenerationConfig(**SMALL), tmp_path / "x.h5", resume=True)) == before
    assert not (tmp_path / ".x.h5.tmp").exists()


def test_validator_physics_checks(tmp_path):
    # the paper's sin*cos family goes negative by design: said among the facts, no warning
    rep = validate(generate(GenerationConfig(**SMALL), tmp_path / "neg.h5"))
    assert rep.ok and not any("negative" in w for w in rep.warnings) and "signed_by_design" in rep.facts
    # the same modes shifted down are no scenario's design: reported, still valid
    shifted = {"name": "sincos", "offset": -0.3}
    rep = validate(generate(GenerationConfig(**{**SMALL, "initial": shifted}), tmp_path / "shifted.h5"))
    assert rep.ok and any("negative" in w for w in rep.warnings)
    # started in [0, 1]: stays there, no warning
    ic = {"name": "sincos", "amplitude": 0.5, "offset": 0.5}
    rep = validate(generate(GenerationConfig(**SMALL, initial=ic), tmp_path / "pos.h5"))
    assert rep.ok and rep.warnings == [], rep.warnings
    lo, hi = rep.facts["ranges"]["u"]
    assert 0.0 <= lo and hi <= 1.0


def _write(path, frames, name="fisher", prov_name="fisher"):
    n, T = frames.shape[:2]
    grid = Grid((8, 8))
    meta = {"dataset_name": name, "fields": ["u"], "parameters": {"a": 0.01, "r": 1.0}, "n_trajectories": n,
            "time": np.arange(T) * 0.1, "x": grid.x, "y": grid.y, "boundary": grid.to_dict()}
    prov = {"config": {"pde": "fisher", "params": {}, "grid": grid.to_dict(), "dt": 0.1, "steps": T - 1,
                       "n_trajectories": n},
            "pde": {**catalogue.fisher().to_dict(), "name": prov_name}}
    return write_dataset(path, [frames], meta=meta, provenance=prov)


def test_validator_flags_escapes_nan_and_stationary(tmp_path):
    frames = np.full((2, 4, 1, 8, 8), 0.5, np.float32)
    frames[0, 1:] += np.linspace(0, 1, 3)[:, None, None, None]  # leaves [0, 1]
    rep = validate(_write(tmp_path / "esc.h5", frames))
    assert any("invariant range" in e for e in rep.errors)
    assert any("stationary (first: 1)" in w for w in rep.warnings)
    frames[1, 2, 0, 3, 3] = np.nan
    rep = validate(_write(tmp_path / "nan.h5", frames))
    assert any("NaN" in e for e in rep.errors)


def test_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(DatagenError, match="not a datagen dataset"):
        read_provenance(foreign)
    with pytest.raises(DatagenError, match="not a datagen dataset"):
        validate(foreign)
    with h5py.File(foreign, "a") as f:  # looks like ours but is incomplete: listed, not raised
        f.create_group("t0_fields")
    rep = validate(foreign)
    assert not rep.ok and "missing root attribute 'dataset_name'" in rep.errors
    good = generate(GenerationConfig(**SMALL), tmp_path / "good.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DatagenError, match="not a readable HDF5 file"):
        validate(bad)
    with pytest.raises(DatagenError, match="no such file"):
        validate(tmp_path / "missing.h5")


def test_failed_write_leaves_no_file(tmp_path):
    frames = np.zeros((2, 3, 1, 8, 8), np.float32)
    with pytest.raises(DatagenError, match="does not fit"):
        _write(tmp_path / "x.h5", frames[:, :, :, :4])
    assert list(tmp_path.iterdir()) == []


def test_compression_option_round_trips(tmp_path):
    a = open_dataset(generate(GenerationConfig(**SMALL), tmp_path / "a.h5"))
    b = open_dataset(generate(GenerationConfig(**SMALL, compression="gzip"), tmp_path / "b.h5"))
    np.testing.assert_array_equal(a["u"].values, b["u"].values)
    with pytest.raises(DatagenError, match="compression"):
        GenerationConfig(**SMALL, compression="zip").resolve()


def test_config_round_trip_and_bad_values():
    cfg = GenerationConfig(**SMALL).resolve()
    assert GenerationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.resolve() == cfg
    with pytest.raises(DatagenError, match="unknown generation option"):
        GenerationConfig.from_dict({"nope": 1})
    for bad, match in [({"steps": 0}, "steps"), ({"n_trajectories": -1}, "n_trajectories"),
                       ({"dt": -1.0}, "positive"), ({"dt": 1.0, "dt_factor": 0.2}, "not both"),
                       ({"integrator": "leapfrog"}, "unknown integrator"),
                       ({"initial": {"name": "sincos", "kk": 1}}, "no parameter 'kk'"),
                       ({"grid": {"shape": [100, 2]}}, "grid shape")]:
        with pytest.raises(DatagenError, match=match):
            GenerationConfig(**{**SMALL, **bad}).resolve()


def test_maximum_principle_counts_dirichlet_wall_values(tmp_path):
    # heat between walls at 1 from data in [-0.5, 0.5] rises above the initial maximum: not an error
    grid = Grid((16, 16), boundary="dirichlet", boundary_value=1.0).to_dict()
    ic = {"name": "fourier", "amplitude": 0.5}
    rep = validate(generate(GenerationConfig(pde="heat", grid=grid, initial=ic, steps=20, n_trajectories=2,
                                             dt_factor=2.0), tmp_path / "h.h5"))
    assert rep.ok, rep.errors
    assert rep.facts["ranges"]["u"][1] > 0.6


def test_progress_counts_trajectories(tmp_path):
    import datagen

    seen = []
    cfg = datagen.GenerationConfig(pde="fisher", steps=2, n_trajectories=5, batch_size=2,
                                   grid=datagen.Grid((8, 8)).to_dict())
    datagen.generate(cfg, tmp_path / "a.h5", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]


def test_resume_recomputes_a_truncated_work_file(tmp_path):
    import hashlib

    import datagen

    cfg = datagen.GenerationConfig(pde="fisher", steps=3, n_trajectories=4, batch_size=1,
                                   grid=datagen.Grid((16, 16)).to_dict())
    whole = datagen.generate(cfg, tmp_path / "whole.h5")

    def stop_after_two(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        datagen.generate(cfg, out, progress=stop_after_two)
    partial = tmp_path / ".cut.h5.tmp"
    with h5py.File(partial, "r") as f:
        assert f.attrs["datagen_batches_done"].tolist() == [1, 1, 0, 0]  # the record lists whole batches
    saved = partial.read_bytes()
    datagen.generate(cfg, out, resume=True)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(whole) and not partial.exists()
    # as after a crash in the middle of a write: a truncated file is discarded and redone
    out.unlink()
    partial.write_bytes(saved[: len(saved) // 2])
    datagen.generate(cfg, out, resume=True)
    assert digest(out) == digest(whole)


def _flip(path, traj, value):
    """Write one value into a dataset's raw chunk bytes, bypassing its checksum (bit rot)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["t0_fields"]["u"]
        offset = d.id.get_chunk_info_by_coord((traj, 1, 0, 0)).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 4 * 5)
        fh.write(np.float32(value).tobytes())


def test_checksums_growth_bounds_provenance_and_deep_validation(tmp_path):
    import h5py

    import datagen

    cfg = GenerationConfig(**SMALL)
    good = generate(cfg, tmp_path / "good.h5")
    rep = validate(good, deep=2, seed=0)
    assert rep.ok and len(rep.facts["deep_checked"]) == 2
    # one flipped value in the raw bytes: the checksum catches it
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes())
    _flip(bad, 1, -1.1e38)
    rep = validate(bad)
    assert any("checksum" in e for e in rep.errors), rep.errors
    # a huge value written through h5py (valid checksum): the growth bound catches it, whatever u0's sign
    big = tmp_path / "big.h5"
    big.write_bytes(good.read_bytes())
    with h5py.File(big, "r+") as f:
        f["t0_fields"]["u"][0, 2, 3, 3] = -1.1e38
    assert any("growth bound" in e for e in validate(big).errors)
    # a small change that stays within every bound: only the deep check sees it
    nudged = tmp_path / "nudged.h5"
    nudged.write_bytes(good.read_bytes())
    with h5py.File(nudged, "r+") as f:
        f["t0_fields"]["u"][:, 2, 3, 3] += np.float32(1e-3)
    assert validate(nudged).ok
    rep = validate(nudged, deep=2, seed=0)
    assert any("differ from the stored ones" in e for e in rep.errors)
    # tampered provenance: another PDE name, or no config at all
    import json as _json

    for change, match in ((lambda p: p["pde"].update(name="heat"), "names disagree"),
                          (lambda p: p.pop("config"), "lacks its config")):
        t = tmp_path / "t.h5"
        t.write_bytes(good.read_bytes())
        with h5py.File(t, "r+") as f:
            prov = _json.loads(f.attrs["provenance"])
            change(prov)
            f.attrs["provenance"] = _json.dumps(prov)
        assert any(match in e for e in validate(t).errors)
    assert datagen.validate(good).ok


def test_dirichlet_initial_data_meet_the_wall_and_species_stay_non_negative(tmp_path):
    import datagen

    g = Grid((24, 24), boundary="dirichlet", boundary_value=-1.0)
    u0 = datagen.initial.SinCos(1, 2, offset=0.5).sample(g, 1, np.random.default_rng(0))[0]
    edge = np.concatenate([u0[0], u0[-1], u0[:, 0], u0[:, -1]])
    assert np.abs(edge + 1.0).max() < 0.5 and np.abs(u0 + 1.0).max() > 1.0  # near the wall, not flat
    cfg = GenerationConfig(pde="heat", grid=g.to_dict(), steps=2, n_trajectories=2, integrator="euler",
                           method="fd")
    rep = validate(generate(cfg, tmp_path / "d.h5"))
    assert not any("wall values" in w for w in rep.warnings), rep.warnings
    gs = datagen.initial.Patches(noise=0.05).sample(Grid((32, 32)), 2, np.random.default_rng(1))
    assert gs.min() >= 0.0


def test_validate_flags_initial_data_away_from_the_walls(tmp_path):
    g = Grid((24, 24), boundary="dirichlet", boundary_value=-1.0)
    cfg = GenerationConfig(pde="heat", grid=g.to_dict(), steps=2, n_trajectories=1, integrator="euler", method="fd")
    path = generate(cfg, tmp_path / "d.h5")
    with h5py.File(path, "r+") as f:
        u = f["t0_fields"]["u"]
        frame = u[0, 0]
        frame[0, :], frame[-1, :], frame[:, 0], frame[:, -1] = 0.9, 0.9, 0.9, 0.9
        u[0, 0] = frame
    assert any("Dirichlet wall values" in w for w in validate(path).warnings)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_batches_arriving_in_any_order_give_the_same_bytes(tmp_path, compression):
    """Workers finish in any order; an interrupted run resumes in another session."""
    from datagen.writer import PartialFile

    grid = Grid((8, 8))
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((6, 3, 1, 8, 8)).astype(np.float32)
    bounds = [(0, 2), (2, 4), (4, 6)]
    meta = {"dataset_name": "fisher", "fields": ["u"], "parameters": {"a": 0.01, "r": 1.0}, "n_trajectories": 6,
            "time": np.arange(3) * 0.1, "x": grid.x, "y": grid.y, "boundary": grid.to_dict()}

    def run(out, orders):
        for order in orders:  # one session per list: closed and reopened in between
            p = PartialFile(out, meta, "{}", bounds, compression)
            todo = p.open(resume=True, overwrite=False)
            # a compressed batch that arrived before its predecessors was never written: redone
            for k in [k for k in order if k in todo] + [k for k in todo if k not in order] * (order is orders[-1]):
                a, b = bounds[k]
                p.write(k, frames[a:b], np.full(b - a, 1e-9 * k), np.full(b - a, 2))
            if order is orders[-1]:
                est, used = p.finish(lambda e, u: {"estimates": e.tolist(), "substeps": u.tolist()})
                assert est.tolist() == [0, 0, 1e-9, 1e-9, 2e-9, 2e-9] and used.tolist() == [2] * 6
            else:
                p.close()
        return hashlib.sha256(out.read_bytes()).hexdigest()

    ref = run(tmp_path / "a.h5", [[0, 1, 2]])
    assert run(tmp_path / "b.h5", [[2, 0, 1]]) == ref
    assert run(tmp_path / "c.h5", [[1], [2, 0]]) == ref
    np.testing.assert_array_equal(open_dataset_frames(tmp_path / "c.h5"), frames[:, :, 0])
    assert not list(tmp_path.glob(".*.tmp"))


def test_compressed_batches_out_of_order_through_the_writer_child_keep_their_frames(tmp_path):
    """Out-of-order batches wait for their turn; the shared buffer they came in is reused meanwhile."""
    from datagen.writer import IsolatedWriter

    grid = Grid((8, 8))
    frames = np.random.default_rng(1).standard_normal((8, 3, 1, 8, 8)).astype(np.float32)
    bounds = [(0, 2), (2, 4), (4, 6), (6, 8)]
    meta = {"dataset_name": "fisher", "fields": ["u"], "parameters": {"a": 0.01, "r": 1.0}, "n_trajectories": 8,
            "time": np.arange(3) * 0.1, "x": grid.x, "y": grid.y, "boundary": grid.to_dict()}
    w = IsolatedWriter(tmp_path / "a.h5", meta, "{}", bounds, "gzip")
    w.open(resume=False, overwrite=False)
    for k in (1, 2, 3, 0):  # three wait for batch 0 while both buffers are refilled
        a, b = bounds[k]
        w.write(k, frames[a:b], np.zeros(b - a), np.ones(b - a, np.int64))
    w.finish({})
    np.testing.assert_array_equal(open_dataset_frames(tmp_path / "a.h5"), frames[:, :, 0])


def open_dataset_frames(path):
    with h5py.File(path, "r") as f:
        assert "_datagen_partial" not in f and "datagen_batches_done" not in f.attrs
        return f["t0_fields"]["u"][...]


@pytest.mark.parametrize("edit", ["del_field", "no_config", "del_time"])
def test_open_dataset_on_tampered_files_is_a_one_line_error(tmp_path, edit):
    path = generate(GenerationConfig(**SMALL), tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        if edit == "del_field":
            del f["t0_fields"]["u"]
        elif edit == "no_config":
            prov = json.loads(f.attrs["provenance"])
            prov.pop("config")
            f.attrs["provenance"] = json.dumps(prov)
        else:
            del f["dimensions"]["time"]
    with pytest.raises(DatagenError, match="damaged or was edited"):
        open_dataset(path)


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path):
    cfg = GenerationConfig(**{**SMALL, "grid": Grid((40000, 40000)).to_dict(), "n_trajectories": 1, "steps": 3})
    with pytest.raises(DatagenError, match="GiB available"):
        generate(cfg, tmp_path / "huge.h5")


def test_growth_bound_solves_the_comparison_ode():
    from datagen.validation import _growth_bound

    # Fisher: m' = m + m^2 from m0, solved exactly: m0 e^t / (1 + m0 - m0 e^t), blowing up at ln(1 + 1/m0)
    t = 0.096
    exact = np.exp(t) / (2 - np.exp(t))
    assert _growth_bound(catalogue.fisher(), 1.0, t) == pytest.approx(exact, rel=1e-9)
    assert _growth_bound(catalogue.fisher(), 4.0, 1.0) == np.inf  # past the blow-up time ln(1.25)
    assert _growth_bound(catalogue.heat(), 0.7, 5.0) == 0.7  # no reaction: the maximum principle


def test_dataset_folders_follow_the_wells_layout_with_statistics(tmp_path):
    import yaml

    from datagen import GenerationConfig, generate_splits
    from datagen.store import dataset_file, dataset_files, read_stats

    cfg = GenerationConfig(pde="gray_scott", grid=Grid((16, 16)).to_dict(), steps=3, seed=1)
    paths = generate_splits(cfg, {"test": 2, "train": 3}, tmp_path / "gs")
    assert paths == [tmp_path / "gs/data/test/gray_scott.hdf5", tmp_path / "gs/data/train/gray_scott.hdf5"]
    assert list(dataset_files(tmp_path / "gs")) == ["train", "test"]
    assert dataset_file(tmp_path / "gs", "test") == paths[0] and dataset_file(paths[1]) == paths[1]
    with pytest.raises(DatagenError, match="holds the splits train, test: name one"):
        dataset_file(tmp_path / "gs")
    with pytest.raises(DatagenError, match="no split 'valid'; it holds train, test"):
        open_dataset(tmp_path / "gs", split="valid")
    # statistics of the train split, from numpy in float64
    ds = open_dataset(tmp_path / "gs", split="train")
    stats = read_stats(tmp_path / "gs")
    assert yaml.safe_load((tmp_path / "gs/stats.yaml").read_text()) == stats
    for name in ("u", "v"):
        x = ds[name].values.astype(np.float64)
        d = np.diff(x, axis=1)
        for key, want in (("mean", x.mean()), ("std", x.std()), ("rms", np.sqrt((x ** 2).mean())),
                          ("mean_delta", d.mean()), ("std_delta", d.std()), ("rms_delta", np.sqrt((d ** 2).mean()))):
            assert stats[key][name] == pytest.approx(want, rel=1e-10, abs=1e-14), (key, name)


def test_a_tampered_stats_file_fails_validation(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from datagen import GenerationConfig, generate_splits

    generate_splits(GenerationConfig(grid=Grid((16, 16)).to_dict(), steps=2), {"train": 2}, tmp_path)
    exe = str(Path(sys.executable).with_name("datagen"))
    assert subprocess.run([exe, "validate", str(tmp_path)], capture_output=True).returncode == 0
    text = (tmp_path / "stats.yaml").read_text()
    (tmp_path / "stats.yaml").write_text(text.replace("std:\n  u: ", "std:\n  u: 1"))
    p = subprocess.run([exe, "validate", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "std of 'u'" in p.stdout
    (tmp_path / "stats.yaml").unlink()
    p = subprocess.run([exe, "validate", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "stats.yaml: invalid" in p.stdout


def test_metadata_written_is_metadata_read_and_edits_are_found(tmp_path):
    """One typed object lays the file out and is read back by the validator."""
    from datagen.metadata import DatasetMetadata

    good = generate(GenerationConfig(**SMALL), tmp_path / "a.h5")
    prov = read_provenance(good)
    want = DatasetMetadata.from_provenance(prov)
    with h5py.File(good, "r") as f:
        got = DatasetMetadata.read(f)
        assert f["t0_fields"]["u"].shape == want.field_shape == (5, 7, 32, 32)
    assert want.differences(got) == [] and want.frame_shape == (7, 1, 32, 32)
    assert got.time[-1] == np.float32(6 * prov["config"]["dt"]) and got.parameters == {"a": 0.01, "r": 1.0}

    def edited(change):
        t = tmp_path / "t.h5"
        t.write_bytes(good.read_bytes())
        with h5py.File(t, "r+") as f:
            change(f)
        return validate(t).errors

    def shift_x(f):
        f["dimensions"]["x"][3] += np.float32(0.5)

    assert any("dimensions/x disagrees" in e for e in edited(shift_x))
    assert any("dimensions/time disagrees" in e
               for e in edited(lambda f: f["dimensions"]["time"].__setitem__(slice(None), 0.0)))
    assert any("root attribute r=2.0 disagrees" in e for e in edited(lambda f: f.attrs.__setitem__("r", 2.0)))
    assert any("field 'u' has shape (5, 7, 32, 32), expected (4, 7, 32, 32)" in e
               for e in edited(lambda f: f.attrs.__setitem__("n_trajectories", 4)))
    with pytest.raises(DatagenError, match="incomplete dataset metadata"):
        DatasetMetadata.from_mapping({"dataset_name": "x"})
    # metadata of the wrong kind (a crafted file): one line each, no traceback
    def strings_for_x(f):
        del f["dimensions"]["x"]
        f["dimensions"].create_dataset("x", data=np.array([b"a"] * 32))

    for change in (lambda f: f.attrs.__setitem__("simulation_parameters", 5),
                   lambda f: f.attrs.__setitem__("a", "zzz"), strings_for_x,
                   lambda f: f["t0_fields"].attrs.__setitem__("field_names", 3)):
        errors = edited(change)
        assert len(errors) == 1 and "malformed" in errors[0] and "\n" not in errors[0], errors


def test_no_sync_skips_only_the_final_fsync(tmp_path, monkeypatch):
    # the writer child inherits the patched fsync through the fork; it leaves a mark per call
    import datagen.writer

    marks = tmp_path / "fsyncs"
    real = datagen.writer.os.fsync

    def counting(fd):
        with open(marks, "a") as fh:
            fh.write("x")
        return real(fd)

    monkeypatch.setattr(datagen.writer.os, "fsync", counting)
    a = generate(GenerationConfig(**SMALL), tmp_path / "a" / "train.h5")
    synced = marks.read_text() if marks.exists() else ""
    b = generate(GenerationConfig(**SMALL), tmp_path / "b" / "train.h5", sync=False)
    after = marks.read_text() if marks.exists() else ""
    assert synced == "x" and after == synced
    assert digest(a) == digest(b)
    assert validate(b).ok
