"""dpt_jax.output (colormap, grayscale, PFM, side by side) and dpt_jax.atomic (temporary-file names, cleaning)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dpt_jax import atomic, output


def test_colorize_scales_each_map_to_its_own_range_near_is_bright():
    depth = np.array([[0.0, 1.0], [2.0, 4.0]])
    rgb = output.colorize(depth)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], output.INFERNO[0])  # far (smallest inverse depth): darkest
    np.testing.assert_array_equal(rgb[1, 1], output.INFERNO[255])  # near: brightest
    np.testing.assert_array_equal(rgb[0, 1], output.INFERNO[64])  # 1/4 of the range, rounded
    np.testing.assert_array_equal(output.colorize(depth * 10 + 3), rgb)  # scale and shift do not matter
    assert (output.colorize(np.full((3, 3), 5.0)) == output.INFERNO[0]).all()  # constant: all dark
    with pytest.raises(ValueError, match="NaN"):
        output.colorize(np.array([[np.nan, 1.0]]))


def test_pfm_is_what_midas_writes(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    path = output.write_depth(tmp_path / "d.pfm", depth, "pfm")
    raw = path.read_bytes()
    header = b"Pf\n4 3\n-1.000000\n"  # width height, then a negative scale: little-endian
    assert raw[:len(header)] == header and len(raw) == len(header) + 12 * 4
    first_row_in_file = np.frombuffer(raw[len(header):len(header) + 16], "<f4")
    np.testing.assert_array_equal(first_row_in_file, depth[-1])  # rows bottom to top
    np.testing.assert_array_equal(output.read_pfm(path), depth)


def test_gray_pil_and_side_by_side(tmp_path):
    depth = np.linspace(0, 1, 20).reshape(4, 5)
    assert output.to_pil(depth).mode == "I;16" and np.asarray(output.to_pil(depth)).max() == 65535
    assert output.to_pil(depth, "gray8").mode == "L" and output.to_pil(depth, "color").mode == "RGB"
    pic = np.full((4, 5, 3), 0.5, np.float32)
    side = output.side_by_side(pic, depth)
    assert side.shape == (4, 10, 3) and (side[:, :5] == 128).all()
    np.testing.assert_array_equal(side[:, 5:], output.colorize(depth))
    with pytest.raises(ValueError, match="differ in size"):
        output.side_by_side(pic[:3], depth)
    with pytest.raises(ValueError, match="needs the picture"):
        output.write_depth(tmp_path / "s.png", depth, "side")


def test_write_without_replace_keeps_a_file_that_is_there(tmp_path):
    target = tmp_path / "d.png"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        output.write_depth(target, np.eye(3), "color", replace=False)
    assert target.read_bytes() == b"mine" and os.listdir(tmp_path) == ["d.png"]  # no temporary file left
    output.write_depth(tmp_path / "new.png", np.eye(3), "gray8", replace=False)
    assert Image.open(tmp_path / "new.png").mode == "L"


def test_partial_files_name_their_process_and_only_dead_ones_are_cleaned(tmp_path):
    with atomic.atomic_write(tmp_path / "x.bin") as f:
        (name,) = [n for n in os.listdir(tmp_path) if n.startswith(".partial-")]
        assert name.startswith(f".partial-{os.getpid()}-{atomic._host_tag()}-")
        f.write(b"1")
        assert atomic.clean_stale_partials(tmp_path) == []  # ours, running
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    stale = tmp_path / f".partial-{dead}-{atomic._host_tag()}-q.png"
    other_host = tmp_path / f".partial-{dead}-00000000-q.png"
    for f in (stale, other_host):
        f.write_bytes(b"")
    assert atomic.clean_stale_partials(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted([other_host.name, "x.bin"])
