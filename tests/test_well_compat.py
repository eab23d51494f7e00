"""Files from `datagen generate` load unchanged in The Well's own loader (optional dependency).

The Well pins old fsspec releases, so it is not part of the dev extra; install it beside the
project to run this check: pip install --no-deps the-well einops.
"""

import numpy as np
import pytest

from datagen import GenerationConfig, Grid, generate_splits, open_dataset

the_well = pytest.importorskip("the_well.data", reason="The Well is not installed")


@pytest.mark.parametrize("pde, boundary, code", [("fisher", "periodic", 2), ("gray_scott", "neumann", 0)])
def test_the_well_reads_our_files(tmp_path, pde, boundary, code):
    cfg = GenerationConfig(pde=pde, grid=Grid((16, 16), boundary=boundary).to_dict(), steps=4, n_trajectories=2)
    path = generate_splits(cfg, {"train": 2, "test": 3}, tmp_path)[0]
    # one split only, as The Well's layout promises
    ds = the_well.WellDataset(path=str(tmp_path), well_split_name="train", n_steps_input=2, n_steps_output=1)
    assert len(ds) == 2 * (5 - 2)
    test = the_well.WellDataset(path=str(tmp_path), well_split_name="test", n_steps_input=2, n_steps_output=1)
    assert len(test) == 3 * (5 - 2)
    item = ds[4]  # trajectory 1, window starting at frame 1
    ours = open_dataset(path)
    names = list(ours.data_vars)
    for k, name in enumerate(names):
        np.testing.assert_array_equal(item["input_fields"][..., k].numpy(), ours[name].values[1, 1:3])
        np.testing.assert_array_equal(item["output_fields"][0, ..., k].numpy(), ours[name].values[1, 3])
    assert item["boundary_conditions"].unique().tolist() == [code]


@pytest.mark.parametrize("kind", ["ZScoreNormalization", "RMSNormalization"])
def test_the_well_normalises_with_our_stats(tmp_path, kind):
    import torch
    from the_well.data import normalization

    cfg = GenerationConfig(pde="gray_scott", grid=Grid((16, 16)).to_dict(), steps=4)
    generate_splits(cfg, {"train": 3, "valid": 1}, tmp_path)
    ds = the_well.WellDataset(path=str(tmp_path), well_split_name="train", n_steps_input=1, n_steps_output=1,
                              use_normalization=True, normalization_type=getattr(normalization, kind))
    raw = open_dataset(tmp_path, split="train")
    names = list(raw.data_vars)
    values = np.stack([raw[n].values for n in names], axis=-1).astype(np.float64)  # (traj, time, x, y, field)
    stacked = torch.stack([ds[i]["input_fields"][0] for i in range(len(ds))])  # every frame but the last
    # normalised by statistics of the whole split: zero mean and unit spread over the frames The Well reads
    if kind == "ZScoreNormalization":
        mean, spread = values.mean(axis=(0, 1, 2, 3)), values.std(axis=(0, 1, 2, 3))
        want = (values[:, :-1] - mean) / spread
    else:
        spread = np.sqrt((values ** 2).mean(axis=(0, 1, 2, 3)))
        want = values[:, :-1] / spread
    np.testing.assert_allclose(stacked.numpy(), want.reshape(-1, *want.shape[2:]), rtol=1e-5, atol=1e-5)
