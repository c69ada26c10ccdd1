"""BEiT specifics: detected config, relative position bias, input checks (stages: test_reference.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import dpt_jax
from dpt_jax.beit import relative_position_bias, relative_position_bias_rows
from dpt_jax.layers import attend
from dpt_jax.resize import resize_bilinear
from helpers import FIXTURES


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(FIXTURES / "mini_beit.pt")


def relative_position_index(h: int, w: int) -> np.ndarray:
    """The original's (1 + h*w, 1 + h*w) table rows per (query, key) token pair, token 0 cls (MiDaS's
    gen_relative_position_index): patch pair (i, j) -> (y_i - y_j + h - 1) (2w - 1) + (x_i - x_j + w - 1)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    n = (2 * h - 1) * (2 * w - 1)
    index = np.empty((h * w + 1, h * w + 1), np.int64)
    index[1:, 1:] = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    index[0, :], index[:, 0], index[0, 0] = n, n + 1, n + 2  # cls -> patch, patch -> cls, cls -> cls
    return index


def test_relative_position_index_layout():
    idx = relative_position_index(2, 3)
    n = (2 * 2 - 1) * (2 * 3 - 1)
    assert idx.shape == (7, 7)
    assert idx[0, 0] == n + 2 and (idx[0, 1:] == n).all() and (idx[1:, 0] == n + 1).all()
    # token 1 is (0, 0), token 6 is (1, 2): dy = -1, dx = -2 -> (-1 + 1) * 5 + (-2 + 2)
    assert idx[1, 6] == 0 and idx[6, 1] == (1 + 1) * 5 + (2 + 2)
    assert len(np.unique(idx[1:, 1:])) == n


@pytest.mark.parametrize("grid", [(4, 4), (2, 3), (3, 1), (1, 5), (1, 1)])
def test_relative_position_bias_is_the_index_gather_at_native_grid(grid):
    h, w = grid
    table = np.random.default_rng(h * 10 + w).normal(size=((2 * h - 1) * (2 * w - 1) + 3, 2)).astype(np.float32)
    bias = np.asarray(jax.jit(relative_position_bias, static_argnums=(1, 2))(table, grid, grid))
    np.testing.assert_array_equal(bias, table[relative_position_index(h, w)].transpose(2, 0, 1))


def test_relative_position_bias_resizes_the_offsets_then_gathers():
    table = np.random.default_rng(1).normal(size=(7 * 7 + 3, 3)).astype(np.float32)  # native grid 4x4
    bias = np.asarray(relative_position_bias(table, (4, 4), (3, 6)))
    offsets = resize_bilinear(table[:-3].reshape(7, 7, 3), (5, 11), align_corners=False, axes=(0, 1))
    resized = np.concatenate([np.asarray(offsets).reshape(-1, 3), table[-3:]])
    np.testing.assert_array_equal(bias, resized[relative_position_index(3, 6)].transpose(2, 0, 1))


def test_input_not_multiple_of_16_is_refused(model):
    with pytest.raises(ValueError, match="multiples of 16.*120x136"):
        model.apply(np.zeros((1, 120, 136, 3), np.float32))


def test_bad_input_layouts_are_refused(model):
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model.apply(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="float"):
        model.apply(np.zeros((1, 128, 128, 3), np.uint8))


def test_bias_rows_and_blocked_attention_match_the_whole():
    """BEiT's attention in blocks of image rows (queries of a long sequence) gives the one-piece result."""
    h, w = 3, 350  # 1051 tokens: above ONE_PIECE_MAX, so blocks of 128 queries and a rest by default
    table = np.random.default_rng(2).normal(size=(7 * 7 + 3, 2)).astype(np.float32)
    rows = relative_position_bias_rows(table, (4, 4), (h, w))
    whole = np.asarray(relative_position_bias(table, (4, 4), (h, w)))
    np.testing.assert_array_equal(np.asarray(rows(0, 1)), whole[:, :1])
    cut = jax.jit(lambda y: rows(1 + y * w, 2 * w))(1)  # a traced start: image rows 1 and 2
    np.testing.assert_array_equal(np.asarray(cut), whole[:, 1 + w:])
    q, k, v = np.random.default_rng(3).normal(size=(3, 2, 2, 1 + h * w, 8)).astype(np.float32)  # batch 2, 2 heads
    one_piece = np.concatenate([attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], whole, blocks=(0, 1 + h * w))
                                for i in range(2)])  # each batch element alone, in one piece
    # the same products, summed in other groupings (a 1-row matmul for the cls query): float32 rounding of sums
    # over 1051 keys (~1e-6 here); a wrong row or bias would be off by O(1)
    np.testing.assert_allclose(attend(q, k, v, rows, blocks=(1, w)), one_piece, rtol=0, atol=5e-6)
    np.testing.assert_allclose(attend(q, k, v, whole), one_piece, rtol=0, atol=5e-6)  # default blocks of 128 + rest
