"""dpt_jax.metrics against Video Depth Anything's benchmark/eval code (tests/fixtures/eval/reference.npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpt_jax import metrics

REF = np.load(Path(__file__).parent / "fixtures" / "eval" / "reference.npz")
NAMES = {"abs_rel": "abs_relative_difference", "sq_rel": "squared_relative_difference", "rmse": "rmse_linear",
         "rmse_log": "rmse_log", "log10": "log10", "delta1": "delta1_acc", "delta2": "delta2_acc",
         "delta3": "delta3_acc", "i_rmse": "i_rmse", "silog": "silog_rmse"}


def test_every_metric_equals_the_reference_metric_py():
    got = metrics.depth_metrics(REF["metrics/pred"], REF["metrics/gt"], REF["metrics/valid"])
    assert set(got) == set(metrics.METRICS)
    for ours, theirs in NAMES.items():
        np.testing.assert_allclose(got[ours], REF[f"metrics/{theirs}"], rtol=1e-5, err_msg=ours)


def test_a_single_map_is_one_image_and_log10_pools_pixels():
    pred, gt, valid = REF["metrics/pred"], REF["metrics/gt"], REF["metrics/valid"]
    rows = [metrics.depth_metrics(p, g, v) for p, g, v in zip(pred, gt, valid)]
    together = metrics.depth_metrics(pred, gt, valid)
    np.testing.assert_allclose(np.mean([r["abs_rel"] for r in rows]), together["abs_rel"], rtol=1e-12)
    # log10 is the mean over all valid pixels, not over images: unequal pixel counts make them differ
    assert abs(np.mean([r["log10"] for r in rows]) - together["log10"]) > 1e-6
    per = metrics.per_image(metrics.image_terms(pred, gt, valid))
    assert [r["valid_pixels"] for r in per] == list(valid.sum((1, 2)))
    np.testing.assert_allclose([r["rmse"] for r in per], [r["rmse"] for r in rows], rtol=1e-12)


def test_a_perfect_prediction_and_an_empty_image():
    gt = np.full((2, 4, 5), 2.0)
    valid = np.ones_like(gt, bool)
    valid[1] = False  # left out, as eval.py leaves out frames without ground truth
    got = metrics.depth_metrics(gt, gt, valid)
    assert got["abs_rel"] == 0 and got["rmse"] == 0 and got["delta1"] == 1 and got["silog"] == 0
    with pytest.raises(ValueError, match="no image has a valid"):
        metrics.depth_metrics(gt, gt, np.zeros_like(valid))


def test_video_alignment_equals_eval_py():
    disparity, gt, max_depth = REF["video/disparity"], REF["video/gt"], float(REF["video/max_depth"])
    valid = metrics.valid_depth(gt, max_depth)
    depth, scale, shift = metrics.align_disparity(disparity, gt, valid, max_depth)
    assert scale > 0 and depth.min() >= metrics.CLIP and depth.max() <= max_depth
    got = metrics.depth_metrics(depth, gt, valid)
    np.testing.assert_allclose([got["abs_rel"], got["rmse"], got["delta1"]], REF["video/abs_rel_rmse_delta1"],
                               rtol=1e-5)


def test_tae_equals_eval_tae_py():
    got = metrics.aligned_video_tae(REF["tae/disparity"], REF["tae/gt"], REF["tae/intrinsics"], REF["tae/poses"],
                                    float(REF["tae/max_depth"]))
    assert got > 0
    np.testing.assert_allclose(got, REF["tae/value"], rtol=1e-5)


def test_tae_is_zero_for_a_static_camera_and_consistent_depth():
    depth = np.broadcast_to(np.linspace(1, 3, 48).reshape(6, 8), (3, 6, 8))
    k = np.broadcast_to(np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]]), (3, 3, 3))
    assert metrics.tae(depth, k, np.broadcast_to(np.eye(4), (3, 4, 4))) == 0
    assert metrics.tae(depth * [[[1]], [[1.1]], [[1]]], k, np.broadcast_to(np.eye(4), (3, 4, 4))) > 0


def test_per_image_alignment_recovers_an_affine_disparity():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 5, (2, 6, 7))
    disparity = np.stack([3.0 / gt[0] + 0.2, 0.5 / gt[1] + 1.0])  # a different scale and shift per image
    depth, scales, shifts = metrics.align_disparity_per_image(disparity, gt, np.ones_like(gt, bool))
    np.testing.assert_allclose(depth, gt, rtol=1e-6)
    np.testing.assert_allclose(scales, [1 / 3, 2], rtol=1e-6)
    np.testing.assert_allclose(shifts, [-0.2 / 3, -2], rtol=1e-5)


def test_median_alignment_and_crops():
    gt = np.full((1, 4, 4), 3.0)
    aligned, scales = metrics.align_median(gt / 7, gt, np.ones_like(gt, bool))
    np.testing.assert_allclose(aligned, gt)
    np.testing.assert_allclose(scales, [7])
    eigen = metrics.crop_mask("eigen", (480, 640))
    assert eigen.sum() == (471 - 45) * (601 - 41) and eigen[45, 41] and not eigen[44, 41] and not eigen[45, 601]
    garg = metrics.crop_mask("garg", (375, 1242))
    rows, cols = np.nonzero(garg)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (153, 371, 44, 1197)
    with pytest.raises(ValueError, match="480x640"):
        metrics.crop_mask("eigen", (10, 10))
