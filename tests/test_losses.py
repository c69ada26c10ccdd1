"""The training losses against the original PyTorch code (tests/fixtures/losses/make_losses.py): values and
gradients with respect to the prediction."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpt_jax import losses

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "losses" / "losses.npz")


def check(fn, case, *names):
    """fn's value and d/d prediction against the original's, 1e-5 relative (gradients: of their largest)."""
    args = [jnp.asarray(FIXTURE[f"{case}_{n}"]) for n in names]
    value, grad = jax.jit(jax.value_and_grad(fn))(*args)
    np.testing.assert_allclose(float(value), float(FIXTURE[f"{case}_loss"]), rtol=1e-5)
    want = FIXTURE[f"{case}_grad"]
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0


def test_silog_as_depth_anything_v2():
    def fn(pred, gt, valid):
        return losses.silog_loss(pred, gt, losses.metric_valid(gt, valid, 0.5, 8.0))

    check(fn, "silog", "pred", "gt", "valid")


@pytest.mark.parametrize("case, stacked", [("ssi", 1), ("ssi2", 2)])
def test_trimmed_ssi_as_video_depth_anything(case, stacked):
    check(lambda p, g, m: losses.trimmed_ssi_loss(p, g, m, frames_stacked=stacked), case, "pred", "gt", "mask")


def test_video_depth_loss_as_video_depth_anything():
    check(lambda p, g, m: losses.video_depth_loss(p, g, m)[0], "video", "pred", "gt", "mask")
    args = (jnp.asarray(FIXTURE[f"video_{n}"]) for n in ("pred", "gt", "mask"))
    _, spatial, stable = jax.jit(losses.video_depth_loss)(*args)
    np.testing.assert_allclose([float(spatial), float(stable)], [FIXTURE["video_spatial"], FIXTURE["video_stable"]],
                               rtol=1e-5)


def test_no_valid_pixel_gives_zero_and_finite_gradients():
    pred = jnp.ones((1, 4, 4)) * 2.0
    none = jnp.zeros((1, 4, 4), bool)
    for fn in (lambda p: losses.silog_loss(p, p + 1, none), lambda p: losses.trimmed_ssi_loss(p, p * 3, none)):
        value, grad = jax.jit(jax.value_and_grad(fn))(pred)
        assert float(value) == 0.0 and np.all(np.isfinite(grad))
