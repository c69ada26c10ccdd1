"""`dpt-jax predict` on videos and with -f ply: naming, no replacing, errors per input, units in the PLY header."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData
from test_video import H, W, decode, make_video

import dpt_jax
from dpt_jax import cli, geometry
from helpers import FIXTURES

MODEL = str(FIXTURES / "mini_beit.safetensors")
FRAMES = 5  # batches of 4 and 1


_loaded = {}


@pytest.fixture(autouse=True)
def one_model(monkeypatch):
    """The runs of this module load the mini model once, so its compiled programs are reused (time only)."""
    load, loaded = dpt_jax.load, _loaded
    monkeypatch.setattr(dpt_jax.model, "load",
                        lambda path, **kw: loaded.get(path) or loaded.setdefault(path, load(path, **kw)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=FRAMES)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A small picture with a left-to-right gradient and a bright square, so its depth varies."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 4, y * 5, np.where((abs(x - 40) < 8) & (abs(y - 20) < 8), 250, 30)], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("pic") / "pic.png"
    Image.fromarray(rgb).save(path)
    return path


def predict(*args):
    return cli.main(["predict", *map(str, args), "-m", MODEL, "--no-progress", "--batch-size", "4"])


def test_video_and_picture_in_one_run(clip, picture, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(clip, picture, "-o", out, "--frames", "npy") == 0
    err = capsys.readouterr().err
    frames, _, count = decode(out / "clip-depth.mp4")
    assert frames.shape == (FRAMES, H, W, 3) and count == FRAMES
    stack = np.load(out / "clip-depth.npy")
    assert stack.shape == (FRAMES, H, W) and np.isfinite(stack).all() and np.ptp(stack, axis=(1, 2)).min() > 0
    assert (out / "pic-depth.png").is_file()
    assert f"{FRAMES} frames" in err and "frames/s" in err and "2 inputs done" in err
    assert "compiling for 96x128 (batch 4)" in err and "compiled and ran 96x128 (batch 4) in" in err  # the video's

    # A second run replaces nothing it did not create; --overwrite does; --side-by-side is another name.
    before = (out / "clip-depth.mp4").stat().st_mtime_ns
    assert predict(clip, "-o", out, "--frames", "npy") == 0
    assert (out / "clip-depth.mp4").stat().st_mtime_ns == before
    assert "1 input skipped" in capsys.readouterr().err
    assert predict(clip, "-o", out, "--side-by-side", "--normalize", "running", "--smoothing", "0.5") == 0
    assert decode(out / "clip-side.mp4")[0].shape == (FRAMES, H, 2 * W, 3)
    assert (out / "clip-depth.mp4").stat().st_mtime_ns == before
    assert predict(clip, "-o", out, "--overwrite") == 0
    assert (out / "clip-depth.mp4").stat().st_mtime_ns != before


def test_a_corrupt_video_is_reported_and_the_others_are_written(clip, picture, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    (folder / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # a header, then garbage
    (folder / "c.png").write_bytes(picture.read_bytes())
    out = tmp_path / "out"
    assert predict(folder, "-o", out) == 1  # folders pick up videos too
    err = capsys.readouterr().err
    assert "b.mp4" in err and "1 failed" in err and "2 inputs done" in err
    assert sorted(p.name for p in out.iterdir()) == ["a-depth.mp4", "c-depth.png"]  # nothing half-written
    assert decode(out / "a-depth.mp4")[0].shape[0] == FRAMES


def test_a_truncated_video_says_where_its_frames_were_kept(clip, tmp_path, capsys):
    data = make_video(tmp_path / "full.mp4", frames=8, options={"movflags": "faststart"}).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])  # the index declares 8 frames; fewer can be decoded
    out = tmp_path / "out"
    assert predict(cut, "-o", out, "--frames", "npy") == 1
    err = capsys.readouterr().err
    kept = out / "cut-depth.npy"
    assert sorted(p.name for p in out.iterdir()) == ["cut-depth.npy"]  # no video, the frames asked for
    decoded = np.load(kept).shape[0]
    assert 0 < decoded < 8
    assert f"the {decoded} frames decoded before it were written to {kept}" in err
    assert f"1 file written: {kept} (1 failed)" in err and "nothing written" not in err


def read_ply(path):
    ply = PlyData.read(str(path))
    v = ply["vertex"]
    return np.stack([v["x"], v["y"], v["z"]], -1), ply.comments


def test_ply_with_and_without_known_depths(picture, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(picture, "-o", out, "-f", "ply,npy", "--fov", "70") == 0
    points, comments = read_ply(out / "pic-points.ply")
    assert any(c.startswith("units: arbitrary, not metres") for c in comments)
    assert points.shape == (H * W, 3) and np.isclose(points[:, 2].min(), 1) and np.isclose(points[:, 2].max(), 10)
    k = geometry.intrinsics_from_fov(H, W, 70)
    assert any(f"fx {k[0, 0]:.9g}" in c for c in comments)

    # Known depths at a few pixels, made from the prediction by a chosen s, t: the fit finds metres.
    p = np.load(out / "pic-depth.npy").astype(np.float64)
    s, t = 0.8 / np.ptp(p), 0.25 - 0.8 * p.min() / np.ptp(p)  # 1/depth from 0.25 to 1.05: 4 m .. 0.95 m
    rows = [(x, y, 1 / (s * p[y, x] + t)) for x, y in [(3, 4), (60, 40), (30, 20), (10, 45), (50, 8)]]
    csv = tmp_path / "known.csv"
    csv.write_text("x,y,depth\n" + "".join(f"{x},{y},{float(d)!r}\n" for x, y, d in rows))
    assert predict(picture, "-o", tmp_path / "aligned", "-f", "ply", "--align", csv, "--far", "3") == 0
    points, comments = read_ply(tmp_path / "aligned" / "pic-points.ply")
    assert any(c.startswith("units: metres") for c in comments)
    expected = 1 / (s * p + t)
    keep = expected <= 3 * (1 + 1e-6)
    assert abs(len(points) - keep.sum()) <= 1  # --far drops what is deeper than 3 m
    np.testing.assert_allclose(np.sort(points[:, 2]), np.sort(expected[keep])[:len(points)], rtol=1e-4)
    capsys.readouterr()


def test_3d_options_are_checked_before_any_model_loads(picture, clip, tmp_path, capsys):
    csv = tmp_path / "known.csv"
    csv.write_text("1,1,2.0\n5,5,3.0\n")
    other = tmp_path / "other.png"
    other.write_bytes(picture.read_bytes())
    cases = [
        (["--align", csv], "add ply to -f/--format"),  # 3D options without -f ply
        (["-f", "ply", "--robust"], "--robust applies to --align"),
        ([other, "-f", "ply", "--align", csv], "belong to one picture; this run has 2"),
        (["-f", "ply", "--align", tmp_path / "missing.csv"], "missing.csv: no such file"),
        (["--normalize", "global", "--smoothing", "0.5"], "--smoothing applies to --normalize running"),
    ]
    for extra, message in cases:
        assert predict(picture, *extra, "-o", tmp_path / "out") == 1
        err = capsys.readouterr().err
        assert message in err and "model" not in err.split("error:")[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
