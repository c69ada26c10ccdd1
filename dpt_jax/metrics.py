"""Depth metrics, alignments, evaluation crops and the temporal alignment error, as the papers compute them.

The definitions are those of Video Depth Anything's benchmark/eval (metric.py carries Marigold's):

    depth_metrics(pred, gt, valid)   abs_rel, sq_rel, rmse, rmse_log, log10, delta1..3, i_rmse, silog
                                     each image over its valid pixels, then the mean over the images, except
                                     log10 (the mean over every valid pixel of every image) and silog
                                     (100 * sqrt of the mean over images of the per-image variance term)
    align_disparity(...)             least squares of predicted disparity to 1/gt, back to depth with the
                                     clips of eval.py (one fit for all the maps given: a video)
    align_disparity_per_image(...)   the same fit per image (MiDaS / Depth Anything zero-shot protocol)
    align_median(...)                scale-only: depth * median(gt) / median(depth), per image
    tae(...)                         Video Depth Anything's temporal alignment error (eval_tae.py)
    crop_mask(name, shape)           the Eigen (NYUv2 480x640), Garg and Eigen-KITTI evaluation crops

Everything is float64 numpy; arrays are (B, H, W) or a single (H, W) map.
"""

from __future__ import annotations

import numpy as np

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "i_rmse", "silog")
#: Metrics where lower is better (the deltas are higher-is-better).
LOWER_IS_BETTER = frozenset(METRICS) - {"delta1", "delta2", "delta3"}
ALIGNMENTS = ("disparity", "disparity-video", "median", "none")
CROPS = ("eigen", "garg", "eigen-kitti", "none")

#: The clips of the reference eval.py: predicted disparity and aligned disparity are clipped below at
#: this, and so is the depth (above at the dataset's max depth).
CLIP = 1e-3
#: The reference adds this to the ground truth depth before inverting it for the fit.
GT_EPS = 1e-8


def _batched(*arrays):
    """(B, H, W) float64 views of (H, W) or (B, H, W) arrays, all of one shape."""
    out = [np.asarray(a) for a in arrays]
    shape = out[0].shape
    if len(shape) not in (2, 3) or any(a.shape != shape for a in out):
        raise ValueError(f"expected (H, W) or (B, H, W) arrays of one shape; got {[a.shape for a in out]}")
    return [a.reshape((-1, *shape[-2:])) for a in out]


def image_terms(pred, gt, valid_mask) -> dict[str, np.ndarray]:
    """Each image's own metrics (B,) over its valid pixels, and the sums the dataset means need:
    `n` (valid pixels), `log10_sum` and `silog_var` (mean of d^2 minus mean(d)^2, d = log pred - log gt)."""
    pred, gt, valid = _batched(pred, gt, valid_mask)
    pred = pred.astype(np.float64)  # (B, H, W)
    gt = gt.astype(np.float64)  # (B, H, W)
    valid = valid.astype(bool)  # (B, H, W)
    n = valid.sum((-1, -2))  # (B,)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        def mean(values):  # (B, H, W) -> (B,): the mean over the valid pixels
            return np.where(valid, values, 0.0).sum((-1, -2)) / n

        diff = pred - gt  # (B, H, W)
        log_diff = np.log(pred) - np.log(gt)  # (B, H, W)
        ratio = np.maximum(pred / gt, gt / pred)  # (B, H, W)
        terms = {
            "abs_rel": mean(np.abs(diff) / gt),
            "sq_rel": mean(diff ** 2 / gt),
            "rmse": np.sqrt(mean(diff ** 2)),
            "rmse_log": np.sqrt(mean(log_diff ** 2)),
            "log10_sum": np.where(valid, np.abs(np.log10(pred) - np.log10(gt)), 0.0).sum((-1, -2)),
            "i_rmse": np.sqrt(mean((1.0 / pred - 1.0 / gt) ** 2)),
            "silog_var": mean(log_diff ** 2) - mean(log_diff) ** 2,
        }
        for k in (1, 2, 3):
            terms[f"delta{k}"] = mean((ratio < 1.25 ** k).astype(np.float64))
    terms["n"] = n
    return terms


def combine(terms: dict[str, np.ndarray]) -> dict[str, float]:
    """The dataset's metrics from `image_terms` (concatenated over batches); images without a valid pixel
    are left out, as the reference eval.py leaves out frames whose mask is empty."""
    keep = np.asarray(terms["n"]) > 0
    if not keep.any():
        raise ValueError("no image has a valid ground-truth pixel")
    t = {k: np.asarray(v)[keep] for k, v in terms.items()}
    out = {k: float(np.mean(t[k])) for k in METRICS if k in t}
    out["log10"] = float(t["log10_sum"].sum() / t["n"].sum())
    out["silog"] = float(np.sqrt(np.mean(t["silog_var"])) * 100)
    return {k: out[k] for k in METRICS}


def per_image(terms: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Each image's metrics on its own (nan for an image without a valid pixel), with its valid pixel count."""
    rows = []
    for i in range(len(terms["n"])):
        one = {k: np.asarray(v)[i:i + 1] for k, v in terms.items()}
        if one["n"][0] > 0:
            row = combine(one)
        else:
            row = dict.fromkeys(METRICS, float("nan"))
        rows.append({**row, "valid_pixels": int(one["n"][0])})
    return rows


def depth_metrics(pred, gt, valid_mask) -> dict[str, float]:
    """The metrics of predicted depth against ground truth depth over the valid pixels: per image, then the mean
    over images (log10 and silog as the module docstring says)."""
    return combine(image_terms(pred, gt, valid_mask))


def valid_depth(gt, max_depth: float, min_depth: float = CLIP):
    """The reference's mask of usable ground truth: min_depth < gt < max_depth (strict, both sides)."""
    gt = np.asarray(gt)
    return (gt > min_depth) & (gt < max_depth)


def align_disparity(pred_disparity, gt_depth, valid_mask, max_depth: float = np.inf):
    """(aligned depth, scale, shift): one least-squares fit of the predicted disparity (clipped below at 1e-3)
    to 1 / (gt + 1e-8) over every valid pixel given, then depth = 1 / max(scale * disparity + shift, 1e-3),
    clipped to [1e-3, max_depth], as Video Depth Anything's eval.py (which fits a whole video at once)."""
    disp = np.clip(np.asarray(pred_disparity, np.float32), CLIP, None)  # (B, H, W) or (H, W), float32 as eval.py
    valid = np.asarray(valid_mask, bool)
    if not valid.any():
        raise ValueError("no valid ground-truth pixel to align to")
    target = 1.0 / (np.asarray(gt_depth)[valid].astype(np.float64) + GT_EPS)  # (N,)
    x = disp[valid].astype(np.float64)  # (N,)
    a = np.stack([x, np.ones_like(x)], axis=-1)  # (N, 2)
    (scale, shift), *_ = np.linalg.lstsq(a, target, rcond=None)
    aligned = np.clip(scale * disp.astype(np.float64) + shift, CLIP, None)  # same shape, float64
    depth = np.clip(1.0 / aligned, CLIP, max_depth)
    return depth, float(scale), float(shift)


def align_disparity_per_image(pred_disparity, gt_depth, valid_mask, max_depth: float = np.inf):
    """`align_disparity` on each image alone: (aligned depth (B, H, W), scales (B,), shifts (B,)); an image
    without a valid pixel keeps scale 1, shift 0."""
    disp, gt, valid = _batched(pred_disparity, gt_depth, valid_mask)
    depths, scales, shifts = [], [], []
    for d, g, v in zip(disp, gt, valid):
        if v.any():
            depth, s, t = align_disparity(d, g, v, max_depth)
        else:
            depth, s, t = np.clip(1.0 / np.clip(d.astype(np.float64), CLIP, None), CLIP, max_depth), 1.0, 0.0
        depths.append(depth)
        scales.append(s)
        shifts.append(t)
    return np.stack(depths), np.array(scales), np.array(shifts)


def align_median(pred_depth, gt_depth, valid_mask, max_depth: float = np.inf):
    """Scale-only alignment of predicted depth, per image: depth * median(gt) / median(depth) over the valid
    pixels, clipped to [1e-3, max_depth]. Returns (aligned depth (B, H, W), scales (B,))."""
    pred, gt, valid = _batched(pred_depth, gt_depth, valid_mask)
    scales = np.array([np.median(g[v]) / np.median(p[v]) if v.any() else 1.0
                       for p, g, v in zip(pred.astype(np.float64), gt.astype(np.float64), valid.astype(bool))])
    return np.clip(pred * scales[:, None, None], CLIP, max_depth), scales


def crop_mask(name: str, shape) -> np.ndarray:
    """The (H, W) evaluation crop: "eigen" (NYUv2's rows 45:471, columns 41:601 of 480x640), "garg" and
    "eigen-kitti" (KITTI's, as fractions of the size), or "none"."""
    h, w = shape[-2:]
    mask = np.zeros((h, w), bool)
    if name == "none":
        mask[:] = True
    elif name == "eigen":
        if (h, w) != (480, 640):
            raise ValueError(f"the Eigen crop is defined on NYUv2's 480x640 maps; got {h}x{w}")
        mask[45:471, 41:601] = True
    elif name == "garg":
        mask[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
    elif name == "eigen-kitti":
        mask[int(0.3324324 * h):int(0.91351351 * h), int(0.0359477 * w):int(0.96405229 * w)] = True
    else:
        raise ValueError(f"unknown crop {name!r}; choose from {', '.join(CROPS)}")
    return mask


def _projection_error(depth1, depth2, rotation, translation, intrinsics, mask) -> float:
    """eval_tae.py's tae_torch: the points of depth1 moved into frame 2 and projected (rounded to the nearest
    pixel, half to even; a later point overwrites an earlier one), against depth2 where both are positive
    and `mask` holds: the mean of |depth2 - projected| / depth2 (0 where nothing lands)."""
    h, w = depth1.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    yy, xx = np.meshgrid(np.arange(h, dtype=depth1.dtype), np.arange(w, dtype=depth1.dtype), indexing="ij")
    points = np.stack([((xx - cx) * depth1 / fx).ravel(), ((yy - cy) * depth1 / fy).ravel(),
                       depth1.ravel()], axis=1)  # (H*W, 3)
    moved = points @ rotation.T + translation  # (H*W, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(moved[:, 0] * fx / moved[:, 2] + cx)  # (H*W,)
        v = np.round(moved[:, 1] * fy / moved[:, 2] + cy)  # (H*W,)
    inside = np.isfinite(u) & np.isfinite(v) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    if not inside.any():
        return 0.0
    projected = np.zeros((h, w), depth1.dtype)
    projected[v[inside].astype(np.int64), u[inside].astype(np.int64)] = moved[inside, 2]
    both = (projected > 0) & (depth2 > 0) & mask
    if not both.any():
        return 0.0
    return float(np.mean(np.abs(depth2[both] - projected[both]) / depth2[both]))


def tae(depths, intrinsics, poses, masks=None) -> float:
    """Temporal alignment error (percent) of a video's depth (T, H, W), as Video Depth Anything's eval_tae.py:
    each consecutive pair is reprojected both ways with the camera-to-world `poses` (T, 4, 4) and the
    intrinsics (T, 3, 3) of the earlier frame, and the mean relative error of the 2 (T - 1) reprojections is
    returned x 100. `masks` (T, H, W): where the later (target) frame's depth counts (default everywhere)."""
    depths = np.asarray(depths, np.float64)  # (T, H, W)
    poses = np.asarray(poses, np.float64)  # (T, 4, 4)
    intrinsics = np.asarray(intrinsics, np.float64)  # (T, 3, 3)
    if depths.ndim != 3 or len(depths) < 2:
        raise ValueError(f"tae needs a (T, H, W) video of at least 2 frames; got shape {depths.shape}")
    masks = np.ones(depths.shape, bool) if masks is None else np.asarray(masks, bool)  # (T, H, W)
    total = 0.0
    for i in range(len(depths) - 1):
        forward = np.linalg.inv(poses[i + 1]) @ poses[i]  # frame i -> frame i + 1, (4, 4)
        backward = np.linalg.inv(forward)  # (4, 4)
        total += _projection_error(depths[i], depths[i + 1], forward[:3, :3], forward[:3, 3], intrinsics[i],
                                   masks[i + 1])
        total += _projection_error(depths[i + 1], depths[i], backward[:3, :3], backward[:3, 3], intrinsics[i],
                                   masks[i])
    return total / (2 * (len(depths) - 1)) * 100


def aligned_video_tae(pred_disparity, gt_depth, intrinsics, poses, max_depth: float, masks=None) -> float:
    """eval_tae.py end to end: one disparity alignment for the whole video (`align_disparity`, valid where
    1e-3 < gt < max_depth), then `tae` of the aligned depth."""
    depth, _, _ = align_disparity(pred_disparity, gt_depth, valid_depth(gt_depth, max_depth), max_depth)
    return tae(depth, intrinsics, poses, masks)
