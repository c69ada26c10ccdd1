"""predict --camera: the capture loop on an injected frame source (no camera exists where the tests run)."""

from __future__ import annotations

import numpy as np
import pytest

import dpt_jax
from dpt_jax import camera, cli
from helpers import FIXTURES

MINI = str(FIXTURES / "mini_beit.safetensors")


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(MINI)


def frames(n, interrupt_after=None):
    """n synthetic frames (48x64); Ctrl-C (KeyboardInterrupt) after `interrupt_after` of them."""
    y, x = np.mgrid[0:48, 0:64]
    for i in range(n):
        if i == interrupt_after:
            raise KeyboardInterrupt
        yield np.stack([(x * 4 + 30 * i) % 256, y * 5, np.full_like(x, 90)], -1).astype(np.uint8)


def test_frames_are_written_until_ctrl_c_and_the_next_run_continues_the_numbers(model, tmp_path):
    lines = []
    assert camera.run(model, frames(9, interrupt_after=3), tmp_path, on_status=lines.append) == 3
    assert lines[-1] == "stopped (Ctrl-C) after 3 frames"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["camera-000000-depth.png", "camera-000001-depth.png", "camera-000002-depth.png"]
    from PIL import Image

    first = next(frames(1))
    expected = dpt_jax.output.colorize(model.predict(first))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / names[0])), expected)
    assert camera.run(model, frames(2), tmp_path) == 2  # the source ended: the frames done are kept
    assert sorted(p.name for p in tmp_path.iterdir())[-2:] == ["camera-000003-depth.png", "camera-000004-depth.png"]


def test_a_window_gets_the_colour_maps_and_can_end_the_loop(model):
    shown = []
    assert camera.run(model, frames(5), show=lambda colour: shown.append(colour.shape) or len(shown) < 2) == 1
    assert shown == [(48, 64, 3), (48, 64, 3)]  # the second call said stop


def test_cli_camera_opens_the_device_before_the_model_and_ends_cleanly(model, tmp_path, monkeypatch, capsys):
    opened = []
    monkeypatch.setattr(dpt_jax.model, "load", lambda path, **kw: opened.append("model") or model)

    class FakeDevice:
        def __init__(self, index):
            opened.append(index)

        def __iter__(self):
            return frames(5, interrupt_after=2)

        def close(self):
            opened.append("closed")

    monkeypatch.setattr(camera, "Device", FakeDevice)
    monkeypatch.setattr(camera, "window", lambda: None)  # no display
    out = tmp_path / "out"
    assert cli.main(["predict", "--camera", "1", "-m", MINI, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert opened == [1, "model", "closed"] and len(list(out.iterdir())) == 2
    assert f"frames written to {out} (Ctrl-C ends)" in err and f"2 camera frames done, written to {out}" in err
    assert cli.main(["predict", "x.png", "--camera", "-m", MINI]) == 1
    assert "--camera takes no inputs" in capsys.readouterr().err
    assert cli.main(["predict", "-m", MINI]) == 1
    assert "give the inputs" in capsys.readouterr().err


def test_a_missing_camera_is_named(tmp_path, capsys):
    pytest.importorskip("av")
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the device name checked is Linux's")
    assert cli.main(["predict", "--camera", "63", "-m", str(tmp_path / "never-loaded"), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "camera 63: cannot open /dev/video63 (v4l2)" in err
