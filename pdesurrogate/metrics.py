"""Per-step scores of a predicted state against the reference, one small class each.

A metric maps ``pred, ref`` of shape ``(batch, field, x, y)`` (float64) to one value per field,
``(batch, field)``; ``joint`` says how the fields combine into the headline value (``(batch,)``).
The suite is the list :data:`METRICS`: adding a metric is one class and one entry. Peer metrics
follow their authors' code, epsilons included, so that figures compare across toolkits:

* ``nrmse``, ``vrmse``, ``pearson``, ``band_*``: The Well (``the_well/benchmark/metrics/spatial.py``
  ``NRMSE``, ``VRMSE``, ``PearsonR``; ``spectral.py`` ``binned_spectral_mse``, its normalised
  ``nmse_per_bin``), each with ``eps = 1e-7``; torch's ``std`` is the unbiased one there;
* ``nrmse_ape``: APEBench / exponax ``nRMSE``: per field ``||pred - ref|| / ||ref||``, summed over
  fields, no epsilon.

``correlation_time`` (a trajectory's first step whose ``pearson`` drops below 0.8) is computed
from the ``pearson`` series by :func:`correlation_time`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Metric", "METRICS", "METRIC_NAMES", "correlation_time", "CORRELATION_THRESHOLD"]

EPS = 1e-7
CORRELATION_THRESHOLD = 0.8


def _cells(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2)


class Metric:
    """One score; ``per_field`` gives ``(batch, field)``, ``joint`` the headline ``(batch,)``."""

    name = ""
    long_name = ""

    def per_field(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def joint(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.per_field(pred, ref).mean(dim=1)


class MSE(Metric):
    name, long_name = "mse", "mean squared error over fields and cells"

    def per_field(self, pred, ref):
        return ((pred - ref) ** 2).mean(dim=(2, 3))


class MaxError(Metric):
    name, long_name = "max_error", "largest absolute error"

    def per_field(self, pred, ref):
        return (pred - ref).abs().amax(dim=(2, 3))

    def joint(self, pred, ref):
        return self.per_field(pred, ref).amax(dim=1)


class RelL2(Metric):
    name, long_name = "rel_l2", "relative L2 error ||pred - ref|| / ||ref|| (fields together)"

    def per_field(self, pred, ref):
        return torch.linalg.vector_norm(_cells(pred - ref), dim=2) / torch.linalg.vector_norm(_cells(ref), dim=2)

    def joint(self, pred, ref):
        return torch.linalg.vector_norm((pred - ref).flatten(1), dim=1) / torch.linalg.vector_norm(ref.flatten(1), dim=1)


class NRMSE(Metric):
    name, long_name = "nrmse", "The Well's NRMSE: sqrt(mse / (mean(ref^2) + 1e-7)), mean over fields"

    def per_field(self, pred, ref):
        return torch.sqrt(((pred - ref) ** 2).mean(dim=(2, 3)) / ((ref ** 2).mean(dim=(2, 3)) + EPS))


class VRMSE(Metric):
    name, long_name = "vrmse", "The Well's VRMSE: sqrt(mse / (var(ref) + 1e-7)), mean over fields"

    def per_field(self, pred, ref):
        return torch.sqrt(((pred - ref) ** 2).mean(dim=(2, 3)) / (torch.std(_cells(ref), dim=2) ** 2 + EPS))


class NRMSEApe(Metric):
    name, long_name = "nrmse_ape", "APEBench's nRMSE: sum over fields of ||pred - ref|| / ||ref||"

    def per_field(self, pred, ref):
        return RelL2().per_field(pred, ref)

    def joint(self, pred, ref):
        return self.per_field(pred, ref).sum(dim=1)


class Pearson(Metric):
    name, long_name = "pearson", "The Well's Pearson correlation of pred and ref, mean over fields"

    def per_field(self, pred, ref):
        x, y = _cells(pred), _cells(ref)
        cov = ((x - x.mean(dim=2, keepdim=True)) * (y - y.mean(dim=2, keepdim=True))).mean(dim=2)
        return cov / (torch.std(x, dim=2) * torch.std(y, dim=2) + EPS)


def _band_masks(shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The Well's default bins (three, log-spaced from 2 pi / N to pi sqrt(2), the first from 0) as
    one-hot masks over the FFT cells, and the bin counts."""
    # float32 wavenumbers and edges, as The Well computes them: a cell on an edge lands in the same bin
    wn = torch.zeros(shape, dtype=torch.float32, device=device)
    for i, n in enumerate(shape):
        k = (2 * math.pi * torch.fft.fftfreq(n, d=1.0, dtype=torch.float32, device=device))
        wn = wn + torch.moveaxis(k.reshape((n,) + (1,) * (len(shape) - 1)), 0, i) ** 2
    wn = torch.sqrt(wn).flatten()
    bins = torch.logspace(math.log10(2 * math.pi / max(shape)), math.log10(math.pi * math.sqrt(len(shape)) + 1e-6), 4,
                          dtype=torch.float32, device=device)
    bins[0] = 0.0
    idx = torch.bucketize(wn, bins, right=True) - 1
    mask = torch.nn.functional.one_hot(idx, num_classes=len(bins)).to(torch.float64)
    return mask, mask.sum(dim=0)


class Band(Metric):
    """The Well's ``spectral_error_nmse_per_bin_i``: the error's energy in wavenumber band ``i``
    over the reference's energy there."""

    def __init__(self, i: int, label: str):
        self.i, self.name = i, f"band_{label}"
        self.long_name = f"The Well's normalised error energy in the {label} wavenumber band"

    def per_field(self, pred, ref):
        mask, counts = _band_masks(tuple(ref.shape[2:]), ref.device)
        n = ref.shape[2] * ref.shape[3]

        def energy(x):
            p = (torch.fft.fftn(x, dim=(2, 3)).abs() ** 2).flatten(2)  # (b, F, cells)
            mean = torch.einsum("bfc,ck->bfk", p, mask) / (counts + EPS)
            return (mean * counts)[..., self.i] / n ** 2

        return energy(pred - ref) / (energy(ref) + EPS)


METRICS: list[Metric] = [MSE(), MaxError(), RelL2(), NRMSE(), VRMSE(), NRMSEApe(), Pearson(),
                         Band(0, "low"), Band(1, "mid"), Band(2, "high")]
METRIC_NAMES = tuple(m.name for m in METRICS)


def correlation_time(pearson: torch.Tensor, threshold: float = CORRELATION_THRESHOLD) -> torch.Tensor:
    """First step (1-based) whose correlation is below ``threshold``, per trajectory of a
    ``(trajectory, step)`` series; ``steps + 1`` where it never drops within the horizon."""
    below = pearson < threshold
    steps = pearson.shape[1]
    first = torch.where(below.any(dim=1), below.to(torch.int64).argmax(dim=1) + 1,
                        torch.full((pearson.shape[0],), steps + 1, dtype=torch.int64, device=pearson.device))
    return first
