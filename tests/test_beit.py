"""The BEiT DPT against the original MiDaS: every stage of every fixture case, from .pt and .safetensors."""

from __future__ import annotations

import numpy as np
import pytest

import dpt_jax
from dpt_jax.beit import relative_position_bias, relative_position_index
from helpers import FIXTURES, nchw_to_nhwc, rel_err, run_with_intermediates

TOL = 1e-4  # reference README: BEiT within 1e-4 x max|ref|, intermediates against their own max
CASES = ["native", "wide", "tall_odd"]
STAGES = [f"hook{i}" for i in range(1, 5)] + [f"reassemble{i}" for i in range(1, 5)] + \
    [f"rn{i}" for i in range(1, 5)] + [f"fusion{i}" for i in range(4, 0, -1)] + ["head_preact", "depth"]


@pytest.fixture(scope="module", params=["pt", "safetensors"])
def model(request):
    return dpt_jax.load(FIXTURES / f"mini_beit.{request.param}")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "mini_beit.npz")


@pytest.fixture(scope="module")
def outputs(model, reference):
    return {case: run_with_intermediates(model, nchw_to_nhwc(reference[f"{case}__input"])) for case in CASES}


def test_detected_config(model):
    c = model.config
    assert c.family == "beit"
    assert (c.encoder.embed_dim, c.encoder.depth, c.encoder.num_heads, c.encoder.hooks) == (32, 8, 2, (1, 3, 5, 7))
    assert c.encoder.native_grid == (8, 8)
    assert c.reassembly_features == (16, 24, 32, 40) and c.fusion_features == 16


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_matches_original(outputs, reference, case, stage):
    assert rel_err(outputs[case][stage], reference[f"{case}__{stage}"]) < TOL


@pytest.mark.parametrize("case", CASES)
def test_distance_to_float64_like_torch_float32(outputs, reference, case):
    # torch fp32 is ~2e-6 from fp64 on these cases; ours must be of the same order.
    assert rel_err(outputs[case]["depth"], reference[f"{case}__depth_fp64"]) < 2e-5


def test_apply_is_the_jitted_forward(model, reference):
    x = nchw_to_nhwc(reference["wide__input"])
    assert rel_err(model.apply(x), reference["wide__depth"]) < TOL


def test_relative_position_index_layout():
    idx = relative_position_index(2, 3)
    n = (2 * 2 - 1) * (2 * 3 - 1)
    assert idx.shape == (7, 7)
    assert idx[0, 0] == n + 2 and (idx[0, 1:] == n).all() and (idx[1:, 0] == n + 1).all()
    # token 1 is (0, 0), token 6 is (1, 2): dy = -1, dx = -2 -> (-1 + 1) * 5 + (-2 + 2)
    assert idx[1, 6] == 0 and idx[6, 1] == (1 + 1) * 5 + (2 + 2)
    assert len(np.unique(idx[1:, 1:])) == n


def test_relative_position_bias_is_identity_at_native_grid():
    rng = np.random.default_rng(0)
    table = rng.normal(size=((2 * 4 - 1) ** 2 + 3, 2)).astype(np.float32)
    bias = np.asarray(relative_position_bias(table, (4, 4), (4, 4)))
    expected = table[relative_position_index(4, 4)].transpose(2, 0, 1)
    np.testing.assert_array_equal(bias, expected)


def test_input_not_multiple_of_16_is_refused(model):
    with pytest.raises(ValueError, match="multiples of 16.*120x136"):
        model.apply(np.zeros((1, 120, 136, 3), np.float32))


def test_bad_input_layouts_are_refused(model):
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.apply(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="float"):
        model.apply(np.zeros((1, 128, 128, 3), np.uint8))
