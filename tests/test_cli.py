"""The `datagen` console script, run as a user runs it."""

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datagen import open_dataset

# the console script of the interpreter running the tests (a venv need not be on PATH)
_LOCAL = Path(sys.executable).parent / "datagen"
EXE = str(_LOCAL) if _LOCAL.exists() else shutil.which("datagen")
if EXE is None:
    pytest.fail("the datagen console script is not installed (pip install -e .)", pytrace=False)
SMALL = ["--grid", "32,32", "--steps", "5", "--quiet"]


def F(out, split="train", name="fisher"):
    """Where `datagen generate --out OUT` puts a split: The Well's layout."""
    return Path(out) / "data" / split / f"{name}.hdf5"


def run(*args, check=True, **kw):
    p = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, **kw)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(p, match):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("datagen: error: "), p.stderr
    assert "Traceback" not in p.stderr
    assert match in lines[0], lines[0]


def test_list_shows_every_entry_with_parameters():
    out = run("list").stdout
    for name in ("heat", "advection", "fisher", "allen_cahn", "gray_scott", "fitzhugh_nagumo", "burgers"):
        assert f"{name}: " in out
    assert "parameters: a=0.01, r=1" in out and "u_t = 0.01*(u_xx + u_yy) + u - u^2" in out


def test_generate_info_validate_and_regenerate_from_provenance(tmp_path):
    out = tmp_path / "fisher"
    p = run("generate", "fisher", "--out", out, "--splits", "train=4,test=2", "--seed", "0", *SMALL)
    assert p.stdout.split() == [str(F(out)), str(F(out, "test"))]
    info = run("info", out).stdout
    assert "u_t = 0.01*(u_xx + u_yy) + u - u^2" in info and "etdrk4" in info and "4 trajectories" in info
    assert "verdict:    ok" in info  # the paper's sin-cos data are signed by design: no warning
    v = run("validate", out)
    assert v.stdout.strip().endswith("stats.yaml: ok") and f"{F(out, 'test')}: ok" in v.stdout
    run("generate", "--from", out, "--out", tmp_path / "again", "--no-sync")  # same bytes, unsynced
    for split in ("train", "test"):
        assert digest(F(tmp_path / "again", split)) == digest(F(out, split))
    assert (tmp_path / "again" / "stats.yaml").read_text() == (out / "stats.yaml").read_text()
    ds = open_dataset(out, split="train")
    assert ds["u"].dims == ("trajectory", "time", "x", "y") and ds.sizes["time"] == 6


def test_options_reach_the_file(tmp_path):
    run("generate", "heat", "--out", tmp_path, "--splits", "train=2", "--param", "a=0.02", "--boundary", "neumann",
        "--integrator", "euler", "--substeps", "3", "--ic", "fourier", "--ic-param", "n_modes=2", *SMALL)
    ds = open_dataset(F(tmp_path, name="heat"))
    prov = __import__("json").loads(ds.attrs["provenance"])["config"]
    assert prov["params"] == {"a": 0.02} and prov["grid"]["boundary"] == "neumann"
    assert (prov["integrator"], prov["substeps"], prov["initial"]["n_modes"]) == ("euler", 3, 2)
    np.testing.assert_allclose(ds.x.values, (np.arange(32) + 0.5) / 32)


def batches_done(partial):
    """The finished-batch record of a file under construction (0 while it cannot be read)."""
    import h5py

    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(np.sum(f.attrs["datagen_batches_done"]))
    except (OSError, KeyError):
        return 0


def test_killed_run_leaves_no_file_and_resumes_to_identical_bytes(tmp_path):
    args = ["generate", "fisher", "--splits", "train=40", "--batch-size", "1", "--grid", "128,128", "--quiet"]
    run(*args, "--out", tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen([EXE, *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = F(out).parent / ".fisher.hdf5.tmp"
    deadline = time.time() + 60
    while time.time() < deadline and batches_done(partial) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= batches_done(partial) < 40, "the run finished before it could be killed"
    assert not F(out).exists()
    p = run(*args, "--out", out, check=False)
    assert_one_line_error(p, "--resume")
    run(*args, "--out", out, "--resume")
    assert digest(F(out)) == digest(F(tmp_path / "whole"))
    assert not partial.exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["generate", "fishr", "--out", "{t}"], "unknown PDE 'fishr'"),
        (["generate", "fisher", "--out", "{t}", "--param", "b=2"], "no parameter 'b'"),
        (["generate", "fisher", "--out", "{t}", "--param", "a"], "name=value"),
        (["generate", "fisher", "--out", "{t}", "--grid", "0,100"], "positive integers"),
        (["generate", "fisher", "--out", "{t}", "--splits", "train=-3"], "must be positive"),
        (["generate", "fisher", "--out", "{t}", "--steps", "0"], "steps=0"),
        (["generate", "fisher", "--out", "{t}", "--dt", "-1"], "positive"),
        (["generate", "fisher", "--out", "{t}", "--integrator", "euler", "--dt", "0.003"], "largest stable dt=0.0025"),
        (["generate", "advection", "--out", "{t}", "--integrator", "euler"], "at any step size"),
        (["generate", "fisher", "--out", "{t}", "--boundary", "robin"], "unknown boundary"),
        (["generate", "fisher", "--out", "{t}", "--ic", "zebra"], "unknown initial condition"),
        (["generate", "fisher", "--out", "{t}", "--workers", "0"], "workers=0"),
        (["generate", "fisher", "--out", "{t}/file.txt/sub"], "cannot write"),
        (["generate", "fisher", "--out", "{t}", "--steps", "many"], "invalid int value"),
        (["generate", "--out", "{t}"], "name a PDE"),
        (["info", "{t}/missing.h5"], "no such file"),
        (["info", "{t}/file.txt"], "not a readable HDF5 file"),
        (["validate", "{t}/foreign.h5"], "not a datagen dataset"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_no_files(tmp_path, args, match):
    (tmp_path / "file.txt").write_text("not hdf5")
    import h5py

    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.arange(4)
    before = sorted(tmp_path.rglob("*"))
    p = run(*[a.format(t=tmp_path) for a in args], check=False)
    assert_one_line_error(p, match)
    assert sorted(tmp_path.rglob("*")) == before


def test_corrupt_dataset_is_reported(tmp_path):
    run("generate", "fisher", "--out", tmp_path, "--splits", "train=2", *SMALL)
    good = F(tmp_path).read_bytes()
    (tmp_path / "cut.h5").write_bytes(good[: len(good) // 2])
    assert_one_line_error(run("validate", tmp_path / "cut.h5", check=False), "not a readable HDF5 file")


def test_not_enough_disk_space_is_refused_before_work(tmp_path):
    # one small batch at a time, so that the memory check (which depends on what the machine has
    # free) passes and the disk check is what refuses: 1e8 trajectories of 41 frames of 200^2
    p = run("generate", "fisher", "--out", tmp_path, "--splits", "train=100000000", "--grid", "200,200",
            "--batch-size", "1", check=False)
    assert_one_line_error(p, "not enough disk space")
    assert list(tmp_path.iterdir()) == []


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_disk_full_leaves_nothing_under_the_final_name(tmp_path):
    # files stop growing at 300 kB, as on a full disk: the uncompressed layout (1.4 MB) is made in
    # full before any solving, so the run stops there
    p = subprocess.run([EXE, "generate", "fisher", "--out", str(tmp_path), "--splits", "train=8", "--batch-size", "1",
                        "--grid", "32,32", "--steps", "40", "--quiet"],
                       capture_output=True, text=True, preexec_fn=_limit_file_size)
    assert_one_line_error(p, "writing")
    assert "free space" in p.stderr
    assert not F(tmp_path).exists()
    assert not (F(tmp_path).parent / ".fisher.hdf5.tmp").exists()


def test_disk_full_mid_run_is_one_line_and_resumes_to_the_same_bytes(tmp_path):
    # compressed chunks are allocated as they are written: the disk fills in the middle of the run
    args = ["generate", "heat", "--out", str(tmp_path), "--splits", "train=8", "--batch-size", "1", "--grid",
            "32,32", "--steps", "40", "--quiet", "--compression", "gzip", "--ic", "grf"]  # rough data: gzip gains little
    p = subprocess.run([EXE, *args], capture_output=True, text=True, preexec_fn=_limit_file_size)
    assert_one_line_error(p, "writing")
    assert "--resume" in p.stderr and not F(tmp_path, name="heat").exists()
    partial = F(tmp_path, name="heat").parent / ".heat.hdf5.tmp"
    # libhdf5 had recorded room it could not get: the file is refused when reopened, so --resume
    # discards it and starts afresh (with room again)
    assert partial.exists()
    run(*args, "--resume")
    whole = tmp_path / "whole"
    run(*[a if a != str(tmp_path) else str(whole) for a in args])
    assert digest(F(tmp_path, name="heat")) == digest(F(whole, name="heat")) and not partial.exists()


def _can_mount_tmpfs():
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount")


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a small tmpfs")
def test_real_full_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount refused")
    try:
        (mnt / "filler").write_bytes(b"\0" * 1_200_000)  # leaves room for the preflight estimate to pass
        p = run("generate", "fisher", "--out", mnt, "--splits", "train=4", "--grid", "32,32", "--steps", "40",
                "--quiet", check=False)
        assert_one_line_error(p, "")
        assert not F(mnt).exists()
    finally:
        subprocess.run(["umount", str(mnt)])


def test_dask_local_cluster_gives_the_same_bytes(tmp_path):
    distributed = pytest.importorskip("distributed")
    run("generate", "fisher", "--out", tmp_path / "local", "--splits", "train=6", "--batch-size", "2", *SMALL)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run("generate", "fisher", "--out", tmp_path / "dask", "--splits", "train=6", "--batch-size", "2",
            "--scheduler", cluster.scheduler_address, *SMALL)
    assert digest(F(tmp_path / "dask")) == digest(F(tmp_path / "local"))
    p = run("generate", "fisher", "--out", tmp_path / "none", "--scheduler", "tcp://127.0.0.1:1", *SMALL, check=False)
    assert_one_line_error(p, "cannot reach the Dask scheduler")


def test_plot_writes_an_image_with_x_right_and_y_up(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from datagen.plotting import draw_field

    X, Y = np.meshgrid(np.arange(5.0), np.arange(3.0) * 10, indexing="ij")  # U[i, j] = x_i + y_j
    fig, ax = plt.subplots()
    img = draw_field(ax, X + Y, [0, 4, 0, 20]).get_array()
    plt.close(fig)
    assert img.shape == (3, 5)  # rows are y, columns are x
    assert img[0, 4] == 4.0 and img[2, 0] == 20.0  # bottom-right is (x=4, y=0); top-left (x=0, y=20)
    run("generate", "gray_scott", "--out", tmp_path, "--splits", "train=1", *SMALL)
    out = run("plot", tmp_path, "--out", tmp_path / "p" / "gs.png", "--times", "0,5").stdout.strip()
    assert out == str(tmp_path / "p" / "gs.png") and (tmp_path / "p" / "gs.png").stat().st_size > 10_000
    assert_one_line_error(run("plot", tmp_path, "--out", tmp_path / "x.png", "--times", "9", check=False),
                          "out of range")
    assert not (tmp_path / "x.png").exists()


MEASURE = """
import resource, sys
from datagen import GenerationConfig, Grid, generate
cfg = GenerationConfig(grid=Grid((64, 64)).to_dict(), n_trajectories=int(sys.argv[2]), batch_size=8, steps=40)
generate(cfg, sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_memory_stays_bounded_as_datasets_grow(tmp_path):
    # 16 and 256 trajectories: 11 MB and 172 MB of float32 frames; batches of 8 are streamed
    peaks = []
    for n in (16, 256):
        p = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / f"{n}.h5"), str(n)],
                           capture_output=True, text=True, check=True)
        peaks.append([int(v) * 1024 for v in p.stdout.split()])  # ru_maxrss is in kB on Linux
    (small_self, small_child), (big_self, big_child) = peaks
    assert big_self - small_self < 40e6, peaks  # far less than the 160 MB the larger one adds
    assert big_child - small_child < 40e6, peaks


@pytest.mark.parametrize("splits, match", [
    ("../../escape=1", "split name '../../escape'"),
    ("a/b=1", "split name 'a/b'"),
    ("train=2,train=3", "given twice"),
])
def test_split_names_are_identifiers(tmp_path, splits, match):
    p = run("generate", "fisher", "--out", tmp_path / "out", "--splits", splits, *SMALL, check=False)
    assert_one_line_error(p, match)
    assert not list(tmp_path.rglob("*escape*")) and not list(tmp_path.rglob("*.hdf5"))


def test_a_crafted_provenance_cannot_write_outside_out(tmp_path):
    import h5py
    import json as _json

    run("generate", "fisher", "--out", tmp_path / "a", "--splits", "train=1", *SMALL)
    f = F(tmp_path / "a")
    with h5py.File(f, "r+") as h:
        prov = _json.loads(h.attrs["provenance"])
        prov["config"]["split"] = "../../evil"
        h.attrs["provenance"] = _json.dumps(prov)
    p = run("generate", "--from", f, "--out", tmp_path / "b" / "c", check=False)
    assert_one_line_error(p, "split name '../../evil'")
    assert not list(tmp_path.rglob("evil*"))


@pytest.mark.parametrize("args, match", [
    (["--param", "a=nan"], "not a finite number"),
    (["--boundary-value", "nan"], "must be finite numbers"),
    (["--ic-param", "amplitude=inf"], "must be a finite number"),
])
def test_non_finite_parameters_are_refused_before_solving(tmp_path, args, match):
    p = run("generate", "fisher", "--out", tmp_path / "o", "--splits", "train=1", *SMALL, *args, check=False)
    assert_one_line_error(p, match)
    assert not list(tmp_path.rglob("*.hdf5"))


def test_resume_keeps_finished_splits_and_says_so(tmp_path):
    out = tmp_path / "o"
    run("generate", "fisher", "--out", out, "--splits", "train=2", *SMALL)
    before = digest(F(out))
    # as after an interruption during the second split: the first is finished, the second is not
    p = run("generate", "fisher", "--out", out, "--splits", "train=2,test=1", "--resume", "--grid", "32,32",
            "--steps", "5")
    assert "fisher.hdf5 is complete" in p.stderr and digest(F(out)) == before
    assert F(out, "test").exists()
    p = run("generate", "fisher", "--out", out, "--splits", "train=2,test=1", "--resume", *SMALL)
    assert p.returncode == 0
    p = run("generate", "fisher", "--out", out, "--splits", "train=2,test=1", "--resume", "--grid", "32,32", "--steps",
            "6", "--quiet", check=False)
    assert_one_line_error(p, "exists with other options")
    # a folder is one dataset: a split of other options is not added beside the others
    p = run("generate", "fisher", "--out", out, "--splits", "valid=1", "--grid", "32,32", "--steps", "6", "--quiet",
            check=False)
    assert_one_line_error(p, "already holds split 'train' made with other options")
    assert not F(out, "valid").exists()


def test_version():
    assert run("--version").stdout.startswith("datagen ")


def test_a_second_run_on_a_locked_output_stops_at_once(tmp_path):
    from datagen.generate import _output_lock

    out = tmp_path / "o"
    F(out).parent.mkdir(parents=True)
    work = F(out).parent / ".fisher.hdf5.tmp"
    with _output_lock(F(out)):
        work.write_bytes(b"the live run's file under construction")
        p = run("generate", "fisher", "--out", out, "--splits", "train=1", "--overwrite", *SMALL, check=False)
        assert_one_line_error(p, f"another run (pid {os.getpid()}) is writing")
        assert work.exists()  # --overwrite did not touch the live run's work
    # once released, the output can be written, and no lock file is left behind
    run("generate", "fisher", "--out", out, "--splits", "train=1", "--overwrite", *SMALL)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["data/train/fisher.hdf5",
                                                                                  "stats.yaml"]


@pytest.mark.parametrize("args", [
    ["--integrator", "etdrk4", "--dt", "2"],  # linearly stable; the reaction blows up in finite time
    ["--ic-param", "amplitude=1e30", "--integrator", "euler", "--method", "fd"],
])
def test_a_blow_up_stops_with_one_line_and_writes_nothing(tmp_path, args):
    p = run("generate", "fisher", "--out", tmp_path / "o", "--splits", "train=3", *SMALL, *args, check=False)
    assert_one_line_error(p, "blew up (non-finite) in trajectory")
    assert "step" in p.stderr and "dt=" in p.stderr
    assert not (tmp_path / "o").exists()  # no file, no work folder, no lock, no empty folders


def test_from_refuses_options_it_would_ignore_and_makes_matching_splits(tmp_path):
    run("generate", "fisher", "--out", tmp_path / "a", "--splits", "train=2", *SMALL)
    src = F(tmp_path / "a")
    for extra, match in ((["--steps", "9"], "--steps"), (["--seed", "3"], "--seed"), (["--grid", "16,16"], "--grid"),
                         (["fisher"], "the PDE name 'fisher'")):
        p = run("generate", "--from", src, "--out", tmp_path / "b", *extra, check=False)
        assert_one_line_error(p, match)
    run("generate", "--from", src, "--out", tmp_path / "b", "--splits", "valid=1", "--quiet")
    import h5py
    import json as _json

    with h5py.File(F(tmp_path / "b", "valid")) as f:
        cfg = _json.loads(f.attrs["provenance"])["config"]
    assert cfg["steps"] == 5 and cfg["grid"]["shape"] == [32, 32] and cfg["split"] == "valid"
    with h5py.File(src, "r+") as f:
        prov = _json.loads(f.attrs["provenance"])
        del prov["config"]
        f.attrs["provenance"] = _json.dumps(prov)
    assert_one_line_error(run("generate", "--from", src, "--out", tmp_path / "c", check=False), "no usable config")


@pytest.mark.parametrize("args, match", [
    (["--seed=-1"], "seed=-1"),
    (["--integrator", "bdf", "--method", "spectral"], "method='fd'"),
    (["--ic-param", "k_min=9"], "k_min <= k_max"),
])
def test_a_failed_run_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, args, match):
    out = tmp_path / "o"
    assert_one_line_error(run("generate", "fisher", "--out", out, "--splits", "train=2", *SMALL, *args, check=False),
                          match)
    assert not out.exists() or not list(out.iterdir())
    run("generate", "fisher", "--out", out, "--splits", "train=2", *SMALL)  # no --resume or --overwrite needed


def test_ic_params_go_over_the_scenario_defaults(tmp_path):
    import h5py
    import json as _json

    run("generate", "allen_cahn", "--out", tmp_path, "--splits", "train=1", *SMALL, "--ic-param", "alpha=2")
    with h5py.File(F(tmp_path, name="allen_cahn")) as f:
        initial = _json.loads(f.attrs["provenance"])["config"]["initial"]
    # the default scenario's sampler parameters are kept
    assert initial["alpha"] == 2.0 and initial["amplitude"] == 0.1 and initial["length_scale"] == 0.2


@pytest.mark.slow
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    args = ["generate", "fisher", "--splits", "train=64", "--batch-size", "1", "--grid", "128,128", "--quiet",
            "--workers", "2", "--out", str(tmp_path / "o")]
    proc = subprocess.Popen([EXE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = F(tmp_path / "o").parent / ".fisher.hdf5.tmp"
    deadline = time.time() + 60
    while time.time() < deadline and not batches_done(partial):
        time.sleep(0.01)

    def children(pid):
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        return [int(x) for x in out]

    kids = children(proc.pid)
    assert kids, "no worker processes seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    alive = kids
    while time.time() < deadline and alive:
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "Z" not in
                 Path(f"/proc/{k}/stat").read_text().split()[2]]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their parent"


def test_damaged_provenance_and_bad_times_are_one_line_errors(tmp_path):
    import h5py
    import json as _json

    run("generate", "fisher", "--out", tmp_path, "--splits", "train=1", *SMALL)
    f = F(tmp_path)
    assert_one_line_error(run("plot", f, "--out", tmp_path / "p.png", "--times", "0.7", check=False), "integers")
    with h5py.File(f, "r+") as h:
        prov = _json.loads(h.attrs["provenance"])
        prov.pop("config")
        h.attrs["provenance"] = _json.dumps(prov)
    assert_one_line_error(run("info", f, check=False), "provenance is incomplete")
    assert_one_line_error(run("plot", f, "--out", tmp_path / "p.png", check=False), "damaged or was edited")
    p = run("validate", f, check=False)
    assert p.returncode == 1 and "lacks its config" in p.stdout


def test_validate_deep_regenerates_and_compares(tmp_path):
    run("generate", "fisher", "--out", tmp_path, "--splits", "train=3", *SMALL)
    p = run("validate", tmp_path, "--deep", "--samples", "2")
    assert "byte-identical" in p.stdout and p.returncode == 0 and "invalid" not in p.stdout


@pytest.mark.parametrize("args, match", [
    (["--ic", "front", "--ic-param", "axis=5"], "axis 0 (x) or 1 (y)"),
    (["--scheduler", "notaurl"], "cannot reach the Dask scheduler"),
    (["--accuracy", "0"], "--accuracy 0"),
    (["--accuracy", "4"], "applies to finite differences"),  # the default reference path is spectral here
])
def test_more_bad_options_are_one_line_errors(tmp_path, args, match):
    assert_one_line_error(run("generate", "fisher", "--out", tmp_path, "--splits", "train=1", *SMALL, *args,
                              check=False), match)


def test_every_option_has_help_and_quiet_verbose_work(tmp_path):
    import argparse

    from datagen.cli import build_parser
    from pdesurrogate.cli import build_parser as ps_parser

    for parser in (build_parser(), ps_parser()):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, sp in sub.choices.items():
            missing = [x.dest for x in sp._actions if not x.help and x.dest != "help"]
            assert not missing, (parser.prog, name, missing)
    p = run("generate", "fisher", "--out", tmp_path, "--splits", "train=1", "--grid", "16,16", "--steps", "2", "-v")
    assert "resolved configuration" in p.stderr and '"integrator": "etdrk4"' in p.stderr
    p = run("generate", "fisher", "--out", tmp_path, "--splits", "train=1", "--grid", "16,16", "--steps", "2", "-q",
            "--resume")
    assert p.stderr == ""


def test_nonlinear_cfl_is_checked_before_solving(tmp_path):
    args = ["generate", "burgers", "--out", tmp_path / "o", "--splits", "train=2", "--grid", "32,32", "--steps", "3",
            "--integrator", "rk4", "--method", "fd", "--param", "nu=0", "--quiet"]
    assert_one_line_error(run(*args, "--dt-factor", "0.2", check=False), "give --dt")  # no diffusion to scale by
    # the scenario's dt = 0.03 with data of size 1
    assert_one_line_error(run(*args, check=False), "nonlinear transport of burgers moves 1.92 cells per substep")
    p = run(*args, "--dt", "0.05", "--ic-param", "amplitude=2", check=False)
    assert_one_line_error(p, "nonlinear transport of burgers moves 6.4 cells per substep")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_progress_off_a_terminal_is_a_line_every_few_seconds_with_the_time_left():
    import io

    from datagen.progress import Progress, eta_text

    assert eta_text(1, 4, 30.0) == "elapsed 0:30, left 1:30"
    out = io.StringIO()  # not a terminal
    bar = Progress(4, "epoch 1/2", "batches", stream=out, every=0.0)
    for i in range(4):
        bar.update(1, f"loss {i}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/2: 1/4 batches (25%), elapsed") and "left" in lines[0]
    assert lines[-1].startswith("epoch 1/2: 4/4 batches (100%)") and lines[-1].endswith("loss 3")
    quiet = io.StringIO()
    with Progress(3, "x", stream=quiet, every=3600.0) as p:
        p.update(3)
    assert quiet.getvalue() == ""  # nothing within the interval: short work stays silent


def test_generation_reports_progress_off_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("PDESURROGATE_PROGRESS_EVERY", "0")
    p = subprocess.run([EXE, "generate", "heat", "--out", str(tmp_path / "h"),
                        "--splits", "train=3", "--steps", "2", "--grid", "16,16", "--batch-size", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "trajectories (" in p.stderr and "left" in p.stderr, p.stderr


def test_a_typed_pdes_default_step_shows_its_reaction_and_static_frames_get_a_hint(tmp_path):
    from datagen import GenerationConfig, parse_pde

    slow = parse_pde("u_t = 0.001*(u_xx+u_yy) + 0.01*u*(1-u)", name="slow").to_dict()
    cfg = GenerationConfig(pde="slow", spec=slow, grid={"shape": [32, 32]}, steps=10).resolve()
    # the horizon is the longest mode's decay time 1 / (4 pi^2 0.001) = 25, shorter than the reaction's 50
    assert cfg.dt == pytest.approx(1 / (4 * np.pi ** 2 * 0.001) / 10)
    fisher = parse_pde("u_t = 0.01*(u_xx+u_yy) + u*(1-u)", name="fisher").to_dict()
    cfg = GenerationConfig(pde="fisher", spec=fisher, grid={"shape": [100, 100]}, steps=40).resolve()
    assert cfg.dt == pytest.approx(1 / (2 * 40))  # one reaction time 1 / (1 + 1) over 40 steps
    fast = parse_pde("u_t = 1.0*(u_xx+u_yy) + 0.01*u", name="fast").to_dict()
    cfg = GenerationConfig(pde="fast", spec=fast, grid={"shape": [8, 8]}, steps=1000).resolve()
    assert cfg.dt == pytest.approx(0.24 * (1 / 8) ** 2)  # never below the diffusive step
    args = ["generate", "--pde", "u_t = 0.001*(u_xx+u_yy) + 0.01*u*(1-u)", "--name", "slow", "--splits", "train=2",
            "--steps", "10", "--grid", "32,32", "--out", str(tmp_path / "d")]
    p = subprocess.run([EXE, *args, "--dt", "1e-4"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    hints = [line for line in p.stderr.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and "change by" in hints[0] and "--dt" in hints[0], p.stderr
    p = subprocess.run([EXE, *args, "--overwrite"], capture_output=True, text=True)
    assert p.returncode == 0 and "hint:" not in p.stderr, p.stderr
