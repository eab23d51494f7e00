"""The metric suite: peers' definitions (epsilons included) and hand computations on tiny cases."""

import math

import numpy as np
import pytest
import torch

from pdesurrogate.metrics import METRICS, correlation_time

BY_NAME = {m.name: m for m in METRICS}


def _pair(seed=0, shape=(3, 2, 16, 12)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=g, dtype=torch.float64) + 0.3
    pred = ref + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    return pred, ref


def test_mse_max_and_rel_l2_by_hand():
    ref = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    ref[0, 0] = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    pred = ref.clone()
    pred[0, 0, 0, 0] += 1.0  # error 1 in one of four cells; ||ref|| = 5
    assert BY_NAME["mse"].joint(pred, ref).item() == pytest.approx(0.25)
    assert BY_NAME["max_error"].joint(pred, ref).item() == pytest.approx(1.0)
    assert BY_NAME["rel_l2"].joint(pred, ref).item() == pytest.approx(0.2)
    assert BY_NAME["nrmse_ape"].joint(pred, ref).item() == pytest.approx(0.2)  # one field: the same
    # The Well's NRMSE: sqrt(0.25 / (mean(ref^2) + 1e-7)), mean(ref^2) = 25/4
    assert BY_NAME["nrmse"].joint(pred, ref).item() == pytest.approx(math.sqrt(0.25 / (6.25 + 1e-7)), rel=1e-12)
    # VRMSE: the unbiased variance of (1, 2, 2, 4) is 1.5833...
    var = np.var([1.0, 2.0, 2.0, 4.0], ddof=1)
    assert BY_NAME["vrmse"].joint(pred, ref).item() == pytest.approx(math.sqrt(0.25 / (var + 1e-7)), rel=1e-12)


def test_nrmse_ape_sums_fields_and_rel_l2_joins_them():
    pred, ref = _pair()
    per = [float(torch.linalg.norm(pred[:, c] - ref[:, c], dim=(1, 2))[0] / torch.linalg.norm(ref[:, c], dim=(1, 2))[0])
           for c in range(2)]
    assert BY_NAME["nrmse_ape"].joint(pred, ref)[0].item() == pytest.approx(sum(per), rel=1e-12)
    joint = float(torch.linalg.norm(pred[0] - ref[0]) / torch.linalg.norm(ref[0]))
    assert BY_NAME["rel_l2"].joint(pred, ref)[0].item() == pytest.approx(joint, rel=1e-12)


def test_pearson_by_hand_and_correlation_time():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    y = 2 * x + 1
    # The Well's definition: biased covariance over unbiased standard deviations, so a perfect
    # linear relation scores (n - 1) / n, here 3/4 ... up to its epsilon
    cov = np.mean((np.arange(1, 5) - 2.5) * (2 * np.arange(1, 5) - 5))
    want = cov / (np.std(np.arange(1, 5), ddof=1) * np.std(2 * np.arange(1, 5), ddof=1) + 1e-7)
    assert BY_NAME["pearson"].joint(x, y).item() == pytest.approx(want, rel=1e-12)
    series = torch.tensor([[0.99, 0.9, 0.79, 0.95], [0.99, 0.98, 0.97, 0.96]])
    assert correlation_time(series).tolist() == [3, 5]  # 5 = steps + 1: never within the horizon


def test_bands_split_the_error_energy_by_wavenumber():
    n = 32
    x = torch.arange(n, dtype=torch.float64)
    low = torch.sin(2 * math.pi * x / n)[:, None].expand(n, n)
    high = torch.sin(2 * math.pi * 14 * x / n)[:, None].expand(n, n)
    ref = (low + high).reshape(1, 1, n, n)
    pred = ref + 0.1 * high.reshape(1, 1, n, n)  # error only at the high wavenumber
    lo, mid, hi = (BY_NAME[f"band_{b}"].joint(pred, ref).item() for b in ("low", "mid", "high"))
    assert lo == pytest.approx(0.0, abs=1e-20) and mid == pytest.approx(0.0, abs=1e-20)
    assert hi == pytest.approx(0.01, rel=1e-6)  # (0.1)^2 of the reference's energy in that band


@pytest.mark.parametrize("name,cls,kw", [("nrmse", "NRMSE", {}), ("vrmse", "VRMSE", {}), ("pearson", "PearsonR", {})])
def test_the_well_metrics_agree_with_the_wells_code(name, cls, kw):
    spatial = pytest.importorskip("the_well.benchmark.metrics.spatial")
    from the_well.data.datasets import WellMetadata

    meta = WellMetadata(dataset_name="t", n_spatial_dims=2, spatial_resolution=(16, 12), scalar_names=[],
                        constant_scalar_names=[], field_names={0: ["u", "v"]}, constant_field_names={},
                        boundary_condition_types=["PERIODIC"], n_files=1, n_trajectories_per_file=[3],
                        n_steps_per_trajectory=[1])
    pred, ref = _pair(seed=3)
    theirs = getattr(spatial, cls).eval(pred.permute(0, 2, 3, 1), ref.permute(0, 2, 3, 1), meta, **kw)  # (b, F)
    ours = BY_NAME[name].per_field(pred, ref)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12, atol=1e-15)


def test_bands_agree_with_the_wells_binned_spectral_mse():
    spectral = pytest.importorskip("the_well.benchmark.metrics.spectral")
    from the_well.data.datasets import WellMetadata

    meta = WellMetadata(dataset_name="t", n_spatial_dims=2, spatial_resolution=(16, 12), scalar_names=[],
                        constant_scalar_names=[], field_names={0: ["u", "v"]}, constant_field_names={},
                        boundary_condition_types=["PERIODIC"], n_files=1, n_trajectories_per_file=[3],
                        n_steps_per_trajectory=[1])
    pred, ref = _pair(seed=4)
    theirs = spectral.binned_spectral_mse.eval(pred.permute(0, 2, 3, 1), ref.permute(0, 2, 3, 1), meta)
    for i, band in enumerate(("low", "mid", "high")):
        want = theirs[f"spectral_error_nmse_per_bin_{i}"].numpy()
        np.testing.assert_allclose(BY_NAME[f"band_{band}"].per_field(pred, ref).numpy(), want, rtol=1e-5)
