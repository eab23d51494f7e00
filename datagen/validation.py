"""Validation of a datagen dataset: the schema (layout, provenance, checksums), the physics a
PDE promises (growth bounds, stationary states) and, on request, regeneration of samples."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DatagenError
from .metadata import DatasetMetadata
from .store import _h5, _open, _provenance, create_layout, dataset_file

__all__ = ["validate", "ValidationReport", "frame_change"]


@dataclass
class ValidationReport:
    """Schema errors, physics warnings and summary facts of one dataset."""

    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No schema errors (warnings allowed)."""
        return not self.errors

    def verdict(self) -> str:
        """One-word verdict: ``ok``, ``warnings`` or ``invalid``."""
        return "invalid" if self.errors else ("warnings" if self.warnings else "ok")


def _growth_bound(pde, m0: float, t_end: float) -> float:
    """A bound on max |u| at ``t_end`` for data starting below ``m0``: the comparison ODE
    ``m' = sum |a_k| m^deg_k`` over the terms without derivatives (diffusion and transport obey a
    maximum principle). ``inf`` when the comparison solution blows up before ``t_end``."""
    terms = [(abs(t.coeff), len(t.factors)) for eq in pde.rhs for t in eq
             if all(d.total_order == 0 for d in t.factors)]
    if not terms:
        return m0
    rhs = lambda m: max(sum(c * m ** k for c, k in terms), 0.0)  # noqa: E731
    m, n = max(m0, 1e-12), 2000
    h = t_end / n
    try:
        for _ in range(n):
            k1 = rhs(m)
            k2 = rhs(m + h / 2 * k1)
            k3 = rhs(m + h / 2 * k2)
            k4 = rhs(m + h * k3)
            m += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            if not math.isfinite(m) or m > 1e30:
                return math.inf
    except OverflowError:  # the comparison solution blows up: no bound
        return math.inf
    return m


def _check_provenance(f, prov: dict, rep: "ValidationReport") -> None:
    """Root attributes and the PDE spec against the provenance (a tampered file disagrees)."""
    from . import catalogue
    from .pde import PDE

    cfg, spec = prov.get("config"), prov.get("pde")
    if not isinstance(cfg, dict) or not isinstance(spec, dict):
        rep.errors.append("the provenance lacks its config or PDE spec: the file cannot be regenerated or checked")
        return
    name = spec.get("name")
    if cfg.get("pde") != name or str(f.attrs.get("dataset_name")) != name:
        rep.errors.append(f"the PDE names disagree: dataset_name {f.attrs.get('dataset_name')!r}, provenance pde "
                          f"{name!r}, config pde {cfg.get('pde')!r}")
        return
    try:
        expected = DatasetMetadata.from_provenance(prov)
    except DatagenError as exc:
        rep.errors.append(str(exc))
        return
    try:
        stored = PDE.from_dict(spec)
        expect = (PDE.from_dict(cfg["spec"]) if cfg.get("spec") else
                  catalogue.make_pde(cfg["pde"], dict(cfg.get("params", {}))))
    except (DatagenError, KeyError, TypeError, ValueError) as exc:
        rep.errors.append(f"the provenance's PDE cannot be rebuilt ({exc})")
        return
    if stored.to_dict() != expect.to_dict():
        rep.errors.append(f"the stored PDE spec differs from {cfg['pde']} as the config defines it")
    # the file's own metadata against what its provenance implies: the writer's object, read back,
    # and the groups The Well's loader reads, against a layout made from the provenance by the writer
    try:
        rep.errors.extend(expected.differences(DatasetMetadata.read(f)))
        rep.errors.extend(_layout_differences(f, expected))
    except KeyError as exc:
        rep.errors.append(f"the file's metadata lacks {exc}")
    except (TypeError, ValueError, OSError) as exc:
        rep.errors.append(f"the file's metadata is malformed ({type(exc).__name__}: {exc})")


def _layout_differences(f, expected: DatasetMetadata) -> list[str]:
    """Where the file's ``scalars`` and ``boundary_conditions`` groups depart from those the
    writer makes for ``expected`` (built in memory by :func:`create_layout`)."""
    import io

    h5py = _h5()
    out: list[str] = []
    with h5py.File(io.BytesIO(), "w") as ref:
        create_layout(ref, expected)
        for group in ("scalars", "boundary_conditions"):
            _compare_node(ref[group], f.get(group), group, out)
    return out


def _plain(value: Any) -> Any:
    """An attribute or dataset value as plain Python (str for bytes), for comparison."""
    arr = np.asarray(value)
    if arr.dtype.kind in "OSU":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    return arr.astype(np.float64).ravel().tolist() if arr.dtype.kind in "fiub" else arr.tolist()


def _compare_node(want, got, name: str, out: list[str]) -> None:
    h5py = _h5()
    if got is None or isinstance(got, h5py.Group) != isinstance(want, h5py.Group):
        out.append(f"{name} is missing or of the wrong kind (the provenance implies one)")
        return
    if set(want.attrs) != set(got.attrs):
        out.append(f"{name} has attributes {sorted(got.attrs)}, the provenance implies {sorted(want.attrs)}")
    for k in want.attrs:
        if k in got.attrs and _plain(want.attrs[k]) != _plain(got.attrs[k]):
            out.append(f"{name} attribute {k}={_plain(got.attrs[k])} disagrees with the provenance "
                       f"({_plain(want.attrs[k])})")
    if isinstance(want, h5py.Group):
        if set(want) != set(got):
            out.append(f"{name} holds {sorted(got)}, the provenance implies {sorted(want)}")
        for k in want:
            if k in got:
                _compare_node(want[k], got[k], f"{name}/{k}", out)
    elif want.shape != got.shape or _plain(want[()]) != _plain(got[()]):
        out.append(f"{name} holds {_plain(got[()])}, the provenance implies {_plain(want[()])}")


def _signed_by_design(entry, cfg: dict) -> bool:
    """The file's scenario declares signed initial data, and the file uses that scenario's sampler
    unchanged in kind (the paper's sin-cos modes are signed; a band front is not)."""
    if entry is None or not cfg.get("scenario"):
        return False
    try:
        sc = entry.scenario(cfg["scenario"])
    except DatagenError:
        return False
    want = (sc.initial or entry.initial).get("name")
    got = (cfg.get("initial") or {}).get("name")
    offset = float((cfg.get("initial") or {}).get("offset", 0.0) or 0.0)
    return bool(sc.signed and want == got and offset == 0.0)


def validate(path: str | os.PathLike, *, stationary_tol: float = 1e-7, bound_tol: float = 1e-4,
             deep: int = 0, seed: int | None = None, split: str | None = None) -> ValidationReport:
    """Check the schema and the physical sanity of a dataset, streaming one trajectory at a time.

    Schema: required groups, attributes and shapes. Physics: finite values; invariant bounds
    (Fisher in [0, 1], Allen-Cahn in [-1, 1], heat within its initial range) for trajectories
    that start inside them; Fisher data that goes negative is reported (its reaction term then
    drives u down without bound over long horizons); trajectories whose last step changes by
    less than ``stationary_tol`` (relative) are flagged as stationary. For any initial data, values
    must stay within the growth bound of the reaction terms (see ``_growth_bound``, with a 10 %
    margin). Root attributes and the PDE spec must agree with the provenance, and a checksum
    (fletcher32) mismatch is an error.

    ``deep=N`` regenerates ``N`` randomly chosen trajectories (``seed``) from the provenance and
    requires them to be byte-identical to the stored ones: an exact integrity check.

    ``path`` is a file or a dataset folder (with ``split`` when it holds several).
    """
    path = dataset_file(path, split)
    rep = ValidationReport(str(path))
    with _open(path) as f:
        if "t0_fields" not in f and "provenance" not in f.attrs:
            _provenance(f, path)  # raises: a foreign HDF5 file, nothing of ours to check
        try:
            _validate_open(f, path, rep, stationary_tol, bound_tol, deep, seed)
        except DatagenError:
            raise  # says itself what is wrong (say, --deep cannot rebuild a user's sampler)
        except (KeyError, TypeError, ValueError, OSError) as exc:
            # an attribute or coordinate of the wrong kind: a crafted or edited file, one line
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rep.errors.append(f"malformed metadata ({type(exc).__name__}: {text}): the file was edited or "
                              "not written by datagen")
    return rep


def _validate_open(f, path, rep: ValidationReport, stationary_tol: float, bound_tol: float, deep: int,
                   seed: int | None) -> None:
    for key in ("dataset_name", "grid_type", "n_spatial_dims", "n_trajectories", "simulation_parameters"):
        if key not in f.attrs:
            rep.errors.append(f"missing root attribute {key!r}")
    for g in ("dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields", "t2_fields"):
        if g not in f:
            rep.errors.append(f"missing group {g!r}")
    if rep.errors:
        return
    for k in f.attrs["simulation_parameters"]:
        if k not in f.attrs:
            rep.errors.append(f"simulation parameter {k!r} has no root attribute")
    try:
        prov = _provenance(f, path)
    except DatagenError as exc:
        rep.errors.append(str(exc))
        return
    dims = f["dimensions"]
    missing = [k for k in ("time", "x", "y") if k not in dims]
    if missing:
        rep.errors.append(f"dimensions lacks {missing}")
        return
    T, nx, ny = dims["time"].shape[0], dims["x"].shape[0], dims["y"].shape[0]
    n = int(f.attrs["n_trajectories"])
    names = [str(s) for s in f["t0_fields"].attrs.get("field_names", [])]
    if not names:
        rep.errors.append("t0_fields lists no field_names")
    for name in names:
        if name not in f["t0_fields"]:
            rep.errors.append(f"t0_fields lists {name!r} but has no such dataset")
            continue
        d = f["t0_fields"][name]
        if d.shape != (n, T, nx, ny):
            rep.errors.append(f"field {name!r} has shape {d.shape}, expected {(n, T, nx, ny)}")
        if d.dtype != np.float32:
            rep.errors.append(f"field {name!r} is {d.dtype}, expected float32")
    rep.facts.update(n_trajectories=n, n_time=T, shape=(nx, ny), fields=names,
                     pde=(prov.get("pde") or {}).get("name"))
    if rep.errors:
        return
    _check_provenance(f, prov, rep)
    if rep.errors:
        return
    from .pde import PDE

    pde_spec = PDE.from_dict(prov["pde"])
    t_end = float(np.asarray(dims["time"])[-1] - np.asarray(dims["time"])[0])

    from . import catalogue

    pde_name = prov.get("pde", {}).get("name")
    # a catalogue PDE declares the range its solutions keep; a user's PDE has the growth bound only
    entry = catalogue.CATALOGUE.get(pde_name) if not prov.get("config", {}).get("spec") else None
    grid = prov.get("config", {}).get("grid", {})
    walls: list[float] = []
    if grid.get("boundary") == "dirichlet":  # wall data enter the maximum principle
        bv = grid.get("boundary_value", 0.0)
        walls = [float(v) for v in (bv if isinstance(bv, list) else [bv])]
    wall_of = np.array([walls[k] if k < len(walls) else walls[0] for k in range(len(names))]) if walls else None
    envelope = None
    nonfinite, stationary, escaped, negative, unreadable, grown, offwall = [], [], [], [], [], [], []
    ranges = {name: [np.inf, -np.inf] for name in names}
    walls_max = max([abs(w) for w in walls], default=0.0)
    for i in range(n):
        try:
            traj = np.stack([f["t0_fields"][name][i] for name in names], axis=1)  # (T, F, nx, ny)
        except OSError:
            unreadable.append(i)
            continue
        if not np.all(np.isfinite(traj)):
            nonfinite.append(i)
            continue
        if walls:
            for k in range(traj.shape[1]):
                g = walls[k] if k < len(walls) else walls[0]
                u0k = traj[0, k]
                edge = np.concatenate([u0k[0], u0k[-1], u0k[1:-1, 0], u0k[1:-1, -1]])
                spread = float(np.abs(u0k - g).max())
                if spread > 0 and float(np.abs(edge - g).mean()) > 0.25 * spread:
                    offwall.append(i)
                    break
        m0 = max(float(np.abs(traj[0]).max()), walls_max)
        limit = _growth_bound(pde_spec, m0, t_end)
        if float(np.abs(traj).max()) > 1.1 * limit + 1e-6:
            grown.append(i)
        for k, name in enumerate(names):
            ranges[name][0] = min(ranges[name][0], float(traj[:, k].min()))
            ranges[name][1] = max(ranges[name][1], float(traj[:, k].max()))
        if T >= 2:
            scale = max(float(np.abs(traj[-1]).max()), 1e-30)
            if float(np.abs(traj[-1] - traj[-2]).max()) <= stationary_tol * scale:
                stationary.append(i)
        u0 = traj[0]
        if pde_name == "fisher" and u0.min() < 0:
            negative.append(i)
        if entry is not None:
            lo0, hi0 = u0.reshape(len(names), -1).min(1), u0.reshape(len(names), -1).max(1)
            if wall_of is not None:
                lo0, hi0 = np.minimum(lo0, wall_of), np.maximum(hi0, wall_of)
            rng = entry.value_range(lo0, hi0, pde_spec.parameters)
            if rng is not None:
                lo, hi = rng
                width = max(1.0, float(np.max(hi0 - lo0)))
                tol = (bound_tol if entry.envelope_certified else 0.1) * width
                flat = traj.reshape(traj.shape[0], len(names), -1)
                if np.any(flat.min(axis=(0, 2)) < lo - tol) or np.any(flat.max(axis=(0, 2)) > hi + tol):
                    escaped.append(i)
                    envelope = (lo, hi, entry.envelope_certified)
    rep.facts["ranges"] = {k: tuple(v) for k, v in ranges.items()}
    if unreadable:
        rep.errors.append(f"{len(unreadable)} trajectories fail their checksum (bit rot or tampering; first: "
                          f"{unreadable[0]})")
    if grown:
        rep.errors.append(f"{len(grown)} trajectories exceed the growth bound the PDE allows from their initial "
                          f"data (first: {grown[0]}): corrupted values")
    if nonfinite:
        rep.errors.append(f"{len(nonfinite)} trajectories hold NaN or inf values (first: {nonfinite[0]})")
    if escaped:
        lo, hi, certified = envelope
        what = "the invariant range the PDE keeps" if certified else "the plausible range (ten times the initial values)"
        rep.errors.append(
            f"{len(escaped)} trajectories leave {what} from their initial data (first: {escaped[0]}, range "
            f"{', '.join(f'[{a:.3g}, {b:.3g}]' for a, b in zip(lo, hi))}): corrupted values")
    if negative and _signed_by_design(entry, prov.get("config", {})):
        rep.facts["signed_by_design"] = f"{len(negative)} of {n} trajectories start with negative values, as the " \
            f"{prov['config'].get('scenario')} scenario's initial data do by design"
    elif negative:
        rep.warnings.append(
            f"{len(negative)} of {n} Fisher trajectories start with negative values (min "
            f"{ranges[names[0]][0]:.3g}): the reaction u(1-u) drives negative u down without bound "
            "over long horizons; use an initial condition in [0, 1] for physical data"
        )
    if stationary:
        rep.warnings.append(f"{len(stationary)} trajectories went stationary (first: {stationary[0]})")
    ref_err = prov.get("reference_error") or {}
    if ref_err and ref_err.get("worst", 0) > ref_err.get("tolerance", np.inf):
        rep.warnings.append(f"the reference solver's estimated error {ref_err['worst']:.2g} exceeds its "
                            f"tolerance {ref_err['tolerance']:.2g} (trajectory {ref_err.get('worst_trajectory')}): "
                            "the substeps hit their cap; lower --dt")
    if offwall:
        rep.warnings.append(f"{len(offwall)} trajectories start away from their Dirichlet wall values at the "
                            f"edge nodes (first: {offwall[0]}): the first steps then carry a boundary layer")
    if deep and not rep.errors:
        _deep_check(f, prov, names, n, deep, seed, rep)


def _deep_check(f, prov: dict, names: list[str], n: int, samples: int, seed: int | None,
                rep: "ValidationReport") -> None:
    """Regenerate ``samples`` random trajectories and compare them byte for byte."""
    from .solver import solve_batch

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(n, size=min(int(samples), n), replace=False).tolist())
    cfg_json = json.dumps(prov["config"], sort_keys=True)
    differ = []
    for i in picks:
        again = solve_batch(cfg_json, i, i + 1)[0]
        stored = np.stack([f["t0_fields"][name][i] for name in names], axis=1)
        if again.tobytes() != stored.tobytes():
            differ.append(i)
    rep.facts["deep_checked"] = picks
    if differ:
        rep.errors.append(f"{len(differ)} of {len(picks)} regenerated trajectories differ from the stored ones "
                          f"(first: {differ[0]}): the data is not what its provenance produces")


def frame_change(path: str | os.PathLike, trajectories: int = 8) -> float | None:
    """The largest relative change ``||u_T - u_0|| / max(||u_0||, ||u_T||)`` between the first and
    last saved frame over the first ``trajectories`` trajectories and all fields; ``None`` when the
    file holds one frame or no field of size."""
    with _open(path) as f:
        group = f["t0_fields"]
        worst = None
        for name in group:
            d = group[name]
            if d.ndim < 4 or d.shape[1] < 2:
                return None
            k = min(int(d.shape[0]), trajectories)
            first = np.asarray(d[:k, 0], np.float64).reshape(k, -1)
            last = np.asarray(d[:k, -1], np.float64).reshape(k, -1)
            size = np.maximum(np.linalg.norm(first, axis=1), np.linalg.norm(last, axis=1))
            ok = size > 0
            if ok.any():
                c = float((np.linalg.norm(last - first, axis=1)[ok] / size[ok]).max())
                worst = c if worst is None else max(worst, c)
    return worst
