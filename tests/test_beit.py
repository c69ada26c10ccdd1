"""BEiT specifics: detected config, relative position bias, input checks (stages: test_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

import dpt_jax
from dpt_jax.beit import relative_position_bias, relative_position_index
from helpers import FIXTURES


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(FIXTURES / "mini_beit.pt")


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
