"""Resampling and MiDaS preprocessing against OpenCV and PyTorch results.

The references live in fixtures/resize_reference.npz, written by fixtures/make_resize_reference.py
(which needs OpenCV and PyTorch; these tests do not).
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from dpt_jax.preprocess import normalize_and_resize, processed_size, resize_depth
from dpt_jax.resize import cubic_taps, linear_taps, resize_bicubic, resize_bilinear

jax.config.update("jax_default_matmul_precision", "highest")

REF = np.load(Path(__file__).parent / "fixtures" / "resize_reference.npz")
CASES = sorted({int(k.split("/")[0][4:]) for k in REF.files if k.startswith("case")})
TOL = 1e-5

RESIZERS = {
    "cv2_cubic_f32": lambda x, size: resize_bicubic(x, size, convention="opencv"),
    "cv2_cubic_f64": lambda x, size: resize_bicubic(x, size, convention="opencv"),
    "torch_bicubic": lambda x, size: resize_bicubic(x, size, convention="torch"),
    "torch_bilinear_ac": lambda x, size: resize_bilinear(x, size, align_corners=True),
    "torch_bilinear_hp": lambda x, size: resize_bilinear(x, size, align_corners=False),
}


def max_error(got, expected):
    assert got.shape == expected.shape
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)))


@pytest.mark.parametrize("reference", sorted(RESIZERS))
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, reference):
    picture = REF[f"case{case}/input"]
    expected = REF[f"case{case}/{reference}"]
    got = RESIZERS[reference](picture[None], expected.shape[:2])[0]
    assert max_error(got, expected) <= TOL


@pytest.mark.parametrize("convention", ["opencv", "torch"])
@pytest.mark.parametrize("sizes", [(5, 5), (1, 4), (4, 1), (7, 3), (3, 7), (384, 1000), (1000, 384)])
def test_cubic_taps_are_a_partition_of_unity_within_range(sizes, convention):
    idx, w = cubic_taps(*sizes, convention)
    assert idx.shape == w.shape == (sizes[1], 4)
    assert idx.min() >= 0 and idx.max() < sizes[0]
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("convention", ["opencv", "torch"])
def test_cubic_is_identity_at_equal_size(convention):
    idx, w = cubic_taps(9, 9, convention)
    np.testing.assert_array_equal(idx[:, 1], np.arange(9))
    np.testing.assert_array_equal(w, np.tile([0.0, 1.0, 0.0, 0.0], (9, 1)))


def test_conventions_differ_only_in_rounding():
    """Same interpolant: taps agree to float32 noise at small sizes; the float32 coordinates of
    torch drift from OpenCV's float64 ones as coordinates grow."""
    small = [cubic_taps(13, 29, c) for c in ("opencv", "torch")]
    np.testing.assert_array_equal(small[0][0], small[1][0])
    assert np.abs(small[0][1] - small[1][1]).max() < 1e-5
    large = [cubic_taps(4000, 384, c) for c in ("opencv", "torch")]
    assert np.abs(large[0][1] - large[1][1]).max() > 1e-4


def test_unknown_convention():
    with pytest.raises(ValueError):
        cubic_taps(4, 8, "pil")


def test_linear_taps_align_corners_single_output():
    idx, w = linear_taps(5, 1, True)
    np.testing.assert_array_equal(idx, [[0, 1]])
    np.testing.assert_array_equal(w, [[1.0, 0.0]])


@pytest.mark.parametrize("i", range(len(REF["sizes/cases"])))
def test_processed_size_matches_midas(i):
    height, width, target_h, target_w, keep = (int(v) for v in REF["sizes/cases"][i])
    expected = tuple(int(v) for v in REF["sizes/expected"][i])
    kwargs = dict(target=(target_h, target_w), keep_aspect_ratio=bool(keep))
    if 0 in expected:
        with pytest.raises(ValueError):
            processed_size(height, width, **kwargs)
    else:
        assert processed_size(height, width, **kwargs) == expected


def test_processed_size_hand_checked():
    # 640 x 480 (w x h) picture for BEiT 384, aspect kept: the height's scale 0.8 is closer to 1.
    assert processed_size(480, 640, target=(384, 384), keep_aspect_ratio=True) == (384, 512)
    assert processed_size(480, 640, target=384, keep_aspect_ratio=True) == (384, 512)
    # SwinV2 tiny resizes to a square whatever the picture.
    assert processed_size(480, 640, target=(256, 256), keep_aspect_ratio=False) == (256, 256)
    assert processed_size(123, 45, target=(256, 256), keep_aspect_ratio=False) == (256, 256)
    # np.round ties to even: 400 / 32 = 12.5 -> 12, 432 / 32 = 13.5 -> 14.
    assert processed_size(384, 400, target=(384, 384), keep_aspect_ratio=True) == (384, 384)
    assert processed_size(384, 432, target=(384, 384), keep_aspect_ratio=True) == (384, 448)


def test_normalize_and_resize_matches_midas_transform():
    pictures = REF["midas/pictures"]
    expected = REF["midas/input"]
    size = processed_size(*pictures.shape[1:3], target=tuple(REF["midas/target"]),
                          keep_aspect_ratio=bool(REF["midas/keep_aspect"]))
    assert size == expected.shape[1:3]
    assert max_error(normalize_and_resize(pictures, size), expected) <= TOL
    # float pictures in [0, 1] give the same result
    floats = normalize_and_resize(pictures.astype(np.float32) / 255.0, size)
    assert max_error(floats, expected) <= TOL


def test_resize_depth_matches_run_py():
    expected = REF["depth/output"]
    got = resize_depth(REF["depth/input"], expected.shape[1:])
    assert got.dtype == np.float32
    assert max_error(got, expected) <= TOL
