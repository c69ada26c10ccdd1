"""Training losses as the original projects define them, as pure jnp functions of (B, H, W) maps.

    silog_loss          Depth Anything V2 metric_depth's SiLogLoss (metric models, depth in metres)
    trimmed_ssi_loss    Video Depth Anything's TrimmedProcrustesLoss: MiDaS's trimmed scale-and-shift-invariant
                        loss plus its multi-scale gradient matching (relative models, inverse depth)
    video_depth_loss    Video Depth Anything's VideoDepthLoss: the above per frame plus temporal gradient matching

Only the "batch-based" reduction is given (the one both originals train with): sums over the whole batch divided
by the batch's count of valid pixels. Boolean masks select pixels; a batch without a valid pixel gives 0 where the
originals give 0 (and SiLog, whose original gives NaN there, gives 0 too). Gradients flow as in the originals:
through the median and mean deviation of the normalisation, and through VideoDepthLoss's least-squares fit.
"""

from __future__ import annotations

import jax.numpy as jnp


def _safe_divide(num, den):
    """num / den, 0 where den is 0 (and a zero gradient there)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0.0)


def silog_loss(pred, target, valid, lambd: float = 0.5):
    """sqrt(mean(d^2) - lambd * mean(d)^2), d = log(target) - log(pred) over the `valid` pixels (B, H, W)."""
    valid = valid.astype(bool)
    n = jnp.sum(valid)
    d = jnp.where(valid, jnp.log(jnp.where(valid, target, 1.0)) - jnp.log(jnp.where(valid, pred, 1.0)), 0.0)
    variance = _safe_divide(jnp.sum(d * d), n) - lambd * _safe_divide(jnp.sum(d), n) ** 2
    return jnp.where(n > 0, jnp.sqrt(jnp.where(n > 0, variance, 1.0)), 0.0)


def metric_valid(target, valid, min_depth: float, max_depth: float):
    """Depth Anything V2 metric_depth's training mask: valid and min_depth <= target <= max_depth."""
    return valid.astype(bool) & (target >= min_depth) & (target <= max_depth)


def normalize_robust(x, mask):
    """(x - median) / mean |x - median| per image (B, H, W), as MiDaS's normalize_prediction_robust.

    The median is torch.median's (the lower of the two middle values) over ALL pixels of mask * x, the masked-out
    ones counting as zeros, as the original computes it; the scale is clamped at 1e-6. Images without a valid
    pixel are left as they are (median 0, scale 1).
    """
    mask = mask.astype(x.dtype)
    count = jnp.sum(mask, (1, 2))  # (B,)
    flat = (mask * x).reshape(x.shape[0], -1)  # (B, H*W)
    median = jnp.sort(flat, axis=1)[:, (flat.shape[1] - 1) // 2]  # (B,)
    median = jnp.where(count > 0, median, 0.0)
    centred = x - median[:, None, None]  # (B, H, W)
    scale = jnp.maximum(_safe_divide(jnp.sum(mask * jnp.abs(centred), (1, 2)), count), 1e-6)
    scale = jnp.where(count > 0, scale, 1.0)  # (B,)
    return centred / scale[:, None, None]


def trimmed_mae(pred, target, mask, trim: float = 0.2):
    """TrimmedMAELoss: the smallest (1 - trim) share of |pred - target| over the whole batch's valid pixels,
    summed, divided by the count of ALL valid pixels (not of those kept), as the original."""
    mask = mask.astype(bool)
    n = jnp.sum(mask)
    residual = jnp.where(mask, jnp.abs(pred - target), jnp.inf).reshape(-1)  # masked-out pixels sort last
    ordered = jnp.sort(residual)  # (B*H*W,)
    keep = jnp.floor(n.astype(jnp.float32) * jnp.float32(1.0 - trim))  # int(len(res) * (1 - trim))
    kept = jnp.where(jnp.arange(ordered.shape[0]) < keep, ordered, 0.0)
    return _safe_divide(jnp.sum(kept), n.astype(jnp.float32))


def gradient_matching(pred, target, mask, scales: int = 4, frames_stacked: int = 1):
    """GradientLoss: sum over `scales` subsamplings (::1, ::2, ::4, ...) of the masked |x and y differences| of
    pred - target, each divided by its subsampled mask's count. `frames_stacked` > 1: the maps are that many frames
    stacked along H and no y difference crosses from one frame into the next (the original's num_frame_h)."""
    mask = mask.astype(pred.dtype)
    frame_id = None
    if frames_stacked > 1:
        rows = jnp.arange(mask.shape[1])  # (H,)
        frame_h = mask.shape[1] // frames_stacked
        frame_id = jnp.where(rows < frames_stacked * frame_h, rows // frame_h + 1, 0)  # leftover rows: 0
    total = 0.0
    for scale in range(scales):
        step = 2 ** scale
        p, t, m = pred[:, ::step, ::step], target[:, ::step, ::step], mask[:, ::step, ::step]
        diff = m * (p - t)  # (B, h, w)
        mask_x = m[:, :, 1:] * m[:, :, :-1]
        mask_y = m[:, 1:, :] * m[:, :-1, :]
        if frame_id is not None:
            f = frame_id[::step]
            mask_y = mask_y * (f[1:] == f[:-1]).astype(m.dtype)[None, :, None]
        grad_x = mask_x * jnp.abs(diff[:, :, 1:] - diff[:, :, :-1])
        grad_y = mask_y * jnp.abs(diff[:, 1:, :] - diff[:, :-1, :])
        total = total + _safe_divide(jnp.sum(grad_x) + jnp.sum(grad_y), jnp.sum(m))
    return total


def trimmed_ssi_loss(pred, target, mask, alpha: float = 0.5, scales: int = 4, trim: float = 0.2,
                     frames_stacked: int = 1):
    """TrimmedProcrustesLoss: trimmed MAE of the robustly normalised prediction and target, plus alpha times
    their gradient matching over `scales` scales (B, H, W)."""
    pred_n = normalize_robust(pred, mask)
    target_n = normalize_robust(target, mask)
    total = trimmed_mae(pred_n, target_n, mask, trim)
    if alpha > 0:
        total = total + alpha * gradient_matching(pred_n, target_n, mask, scales, frames_stacked)
    return total


def scale_and_shift(pred, target, mask):
    """The least-squares (scale, shift) per item fitting pred to target over the mask (B, ...), as MiDaS's
    compute_scale_and_shift (0, 0 where the system is singular; its 1e-6 added to the determinant)."""
    mask = mask.astype(pred.dtype)
    axes = tuple(range(1, pred.ndim))
    a_00 = jnp.sum(mask * pred * pred, axes)
    a_01 = jnp.sum(mask * pred, axes)
    a_11 = jnp.sum(mask, axes)
    b_0 = jnp.sum(mask * pred * target, axes)
    b_1 = jnp.sum(mask * target, axes)
    det = a_00 * a_11 - a_01 * a_01
    ok = det != 0
    den = jnp.where(ok, det + 1e-6, 1.0)
    return (jnp.where(ok, (a_11 * b_0 - a_01 * b_1) / den, 0.0),
            jnp.where(ok, (-a_01 * b_0 + a_00 * b_1) / den, 0.0))


def temporal_gradient_matching(pred, target, mask, threshold: float = 0.05):
    """TemporalGradientMatchingLoss with one temporal scale and no trim (as VideoDepthLoss builds it): the MAE of
    the frame-to-frame differences (B, T, H, W) where both frames are valid and the target's difference is below
    `threshold` times the later frame's target range."""
    mask = mask.astype(bool)
    low = jnp.min(jnp.where(mask, target, jnp.inf), axis=(2, 3))  # (B, T)
    high = jnp.max(jnp.where(mask, target, -jnp.inf), axis=(2, 3))
    limit = (high - low) * threshold  # (B, T): -inf for a frame without valid pixels
    pred_diff = pred[:, 1:] - pred[:, :-1]  # (B, T-1, H, W)
    target_diff = target[:, 1:] - target[:, :-1]
    both = mask[:, 1:] & mask[:, :-1] & (jnp.abs(target_diff) < limit[:, 1:, None, None])
    return trimmed_mae(pred_diff, target_diff, both, trim=0.0)


def video_depth_loss(pred, target, mask, alpha: float = 0.5, scales: int = 4, stable_scale: float = 10.0):
    """VideoDepthLoss on clips (B, T, H, W): untrimmed SSI loss of every frame, plus `stable_scale` times the
    temporal gradient matching of the prediction fitted to the target per clip (scale and shift by least squares).
    Returns (total, spatial, stable)."""
    b, t, h, w = pred.shape
    spatial = trimmed_ssi_loss(pred.reshape(b * t, h, w), target.reshape(b * t, h, w), mask.reshape(b * t, h, w),
                               alpha, scales, trim=0.0)
    scale, shift = scale_and_shift(pred, target, mask)  # (B,), (B,)
    fitted = scale[:, None, None, None] * pred + shift[:, None, None, None]  # (B, T, H, W)
    stable = temporal_gradient_matching(fitted, target, mask) * stable_scale
    return spatial + stable, spatial, stable
