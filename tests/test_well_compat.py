"""Files from `datagen generate` load unchanged in The Well's own loader (optional dependency).

The Well pins old fsspec releases, so it is not part of the dev extra; install it beside the
project to run this check: pip install --no-deps the-well einops.
"""

import numpy as np
import pytest

from datagen import GenerationConfig, Grid, generate, open_dataset

the_well = pytest.importorskip("the_well.data", reason="The Well is not installed")


@pytest.mark.parametrize("pde, boundary, code", [("fisher", "periodic", 2), ("gray_scott", "neumann", 0)])
def test_the_well_reads_our_files(tmp_path, pde, boundary, code):
    cfg = GenerationConfig(pde=pde, grid=Grid((16, 16), boundary=boundary).to_dict(), steps=4, n_trajectories=2)
    path = generate(cfg, tmp_path / "train.h5")
    ds = the_well.WellDataset(path=str(tmp_path), n_steps_input=2, n_steps_output=1)
    assert len(ds) == 2 * (5 - 2)
    item = ds[4]  # trajectory 1, window starting at frame 1
    ours = open_dataset(path)
    names = list(ours.data_vars)
    for k, name in enumerate(names):
        np.testing.assert_array_equal(item["input_fields"][..., k].numpy(), ours[name].values[1, 1:3])
        np.testing.assert_array_equal(item["output_fields"][0, ..., k].numpy(), ours[name].values[1, 3])
    assert item["boundary_conditions"].unique().tolist() == [code]
