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


MOTORCYCLE_CALIB = """cam0=[994.978 0 311.193; 0 994.978 254.877; 0 0 1]
cam1=[994.978 0 342.279; 0 994.978 254.877; 0 0 1]
doffs=31.086
baseline=193.001
width=741
height=500
"""


def write_motorcycle(folder):
    """scikit-image's Middlebury 2014 pair written as a Middlebury scene (calibration from its docstring)."""
    from PIL import Image
    from skimage.data import stereo_motorcycle

    from dpt_jax.output import write_pfm

    left, _, disparity = stereo_motorcycle()
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(left).save(folder / "im0.png")
    with open(folder / "disp0.pfm", "wb") as f:
        write_pfm(f, disparity)
    (folder / "calib.txt").write_text(MOTORCYCLE_CALIB)
    return left, disparity


def tiny_da2_metric():
    """The training tests' Depth Anything V2 metric mini (max 20 m): four 16-wide blocks feeding the neck, a 4x4
    position table, an 8-feature neck. tests/fixtures/train/make_train_step.py builds it with the original code."""
    from dpt_jax.dinov2 import Dinov2Config, depth_anything

    encoder = Dinov2Config(embed_dim=16, depth=4, num_heads=2, mlp_hidden=32, hooks=(0, 1, 2, 3), native_grid=(4, 4))
    return depth_anything("tiny_da2_metric", encoder, 8, (4, 8, 8, 8), version=2, max_depth=20.0)


def tiny_vda():
    """A Video Depth Anything (relative) as small as the temporal modules allow: tiny_da2_metric's encoder, the
    neck's temporal maps 32 wide (multiples of their GroupNorm's 32 groups)."""
    from dpt_jax.dinov2 import Dinov2Config, video_depth_anything

    encoder = Dinov2Config(embed_dim=16, depth=4, num_heads=2, mlp_hidden=32, hooks=(0, 1, 2, 3), native_grid=(4, 4))
    return video_depth_anything("tiny_vda", encoder, 32, (4, 8, 32, 32))


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now (a coordinator's, for tests that start several JAX processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(runs, timeout: float, cwd=None) -> tuple[list, list[tuple[str, str]]]:
    """Starts every (command, environment) of `runs` at once (the processes of one distributed run) and waits for
    all: (the processes, their (stdout, stderr)); any still running after `timeout` seconds is killed."""
    import subprocess

    procs = [subprocess.Popen(c, cwd=cwd, env=e, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c, e in runs]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return procs, outs

