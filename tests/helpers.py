"""Helpers shared by the tests (importable because pyproject puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import traverse_util

FIXTURES = Path(__file__).parent / "fixtures"
MANIFESTS = FIXTURES / "manifests"


def rel_err(got, ref) -> float:
    """max|got - ref| / max|ref|: the measure of the reference README."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


_PROGRAMS: dict = {}


def run_with_intermediates(model, images):
    """Depth and every sown intermediate of a loaded DepthModel, as {fixture name: NumPy array in fixture layout}.

    Jitted, one program per (config, input shape), shared by every test that asks (and by both
    checkpoint formats of a fixture: the parameters are an argument).
    """
    import jax

    from dpt_jax.dpt import DPT

    key = (model.config, tuple(images.shape))
    if key not in _PROGRAMS:
        module = DPT(model.config)
        _PROGRAMS[key] = jax.jit(lambda p, x: module.apply({"params": p}, x, mutable=["intermediates"]))
    depth, state = _PROGRAMS[key](model.params, images)
    out = {"depth": np.asarray(depth)}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        x = np.asarray(value[0])
        out[path[-1]] = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x  # maps back to NCHW like the fixtures
    return out
