"""Depth in 3D on the shipped example scene, whose exact depth and camera examples/render_scene.py defines."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from dpt_jax import errors, geometry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def scene():
    """The renderer as a module, its picture, exact z depth (inf for the sky) and which pixels are ground."""
    spec = importlib.util.spec_from_file_location("render_scene", EXAMPLES / "render_scene.py")
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    rays = rs.camera_rays(0.5, 0.5)  # (H*W, 3) unit directions through the pixel centres
    z = rs.trace(rays)[1].reshape(rs.H, rs.W)
    with np.errstate(divide="ignore"):
        t_ground = np.where(rays[:, 1] < 0, -rs.EYE[1] / rays[:, 1], np.inf)
    ground = np.isclose(z, (t_ground * (rays @ rs.FWD)).reshape(rs.H, rs.W), rtol=1e-12) & np.isfinite(z)
    picture = np.asarray(Image.open(EXAMPLES / "scene.png").convert("RGB"))
    assert picture.shape == (rs.H, rs.W, 3) and ground.sum() > 0.3 * z.size
    return rs, picture, z, ground


def to_world(rs, points):
    """OpenCV camera coordinates (x right, y down, z forward) -> the renderer's world coordinates."""
    p = np.asarray(points, np.float64)
    return rs.EYE + p[:, :1] * rs.RIGHT - p[:, 1:2] * rs.UP + p[:, 2:] * rs.FWD


def test_fov_intrinsics_are_the_renderers_camera(scene):
    rs, _, z, _ = scene
    k = geometry.intrinsics_from_fov(rs.H, rs.W, 60.0)
    rays = rs.camera_rays(0.5, 0.5).reshape(rs.H, rs.W, 3)
    v, u = np.mgrid[0:rs.H, 0:rs.W]
    # The renderer's ray through pixel (v, u), divided by its forward component, is K^-1 (u, v, 1) in its axes.
    fwd = rays @ rs.FWD
    np.testing.assert_allclose((rays @ rs.RIGHT) / fwd, (u - k[0, 2]) / k[0, 0], atol=1e-12)
    np.testing.assert_allclose(-(rays @ rs.UP) / fwd, (v - k[1, 2]) / k[1, 1], atol=1e-12)


def test_point_cloud_puts_the_ground_on_its_plane(scene):
    rs, picture, z, ground = scene
    points, colors = geometry.point_cloud(z.astype(np.float32), picture, fov=60.0)
    finite = np.isfinite(z)
    assert len(points) == finite.sum() and points.dtype == np.float32 and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors, picture[finite])  # row-major order of the kept pixels
    world = to_world(rs, points)
    heights = world[ground[finite], 1]  # the ground is the plane y = 0
    assert np.abs(heights).max() < 1e-6 * z[ground].max() + 1e-6
    c, r, _ = rs.SPHERES[0]  # the nearest sphere's visible points lie on its surface
    on_sphere = np.abs(np.linalg.norm(world - c, axis=1) - r) < 1e-3
    assert on_sphere.sum() > 5000
    # The same cloud from explicit intrinsics; a mask drops pixels.
    k = geometry.intrinsics_from_fov(rs.H, rs.W, 60.0)
    again, _ = geometry.point_cloud(z.astype(np.float32), None, intrinsics=(k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
    np.testing.assert_array_equal(again, points)
    masked, _ = geometry.point_cloud(z.astype(np.float32), intrinsics=k, mask=ground)
    assert len(masked) == ground.sum()


def test_point_cloud_rejects_ambiguous_or_bad_cameras():
    d = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        geometry.point_cloud(d)
    with pytest.raises(ValueError, match="exactly one"):
        geometry.point_cloud(d, fov=60, intrinsics=np.eye(3))
    with pytest.raises(ValueError, match="fx, fy > 0"):
        geometry.point_cloud(d, intrinsics=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="between 0 and 180"):
        geometry.point_cloud(d, fov=180)
    with pytest.raises(ValueError, match="image must be"):
        geometry.point_cloud(d, np.zeros((4, 5, 3), np.uint8), fov=60)


def test_write_ply_reads_back_with_plyfile_as_the_pinhole_formula(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 5, 7
    depth = rng.uniform(0.5, 4.0, (h, w)).astype(np.float32)
    depth[1, 2] = np.inf  # sky: left out
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    fx, fy, cx, cy = 9.0, 11.0, 3.2, 1.9
    points, colors = geometry.point_cloud(depth, image, intrinsics=[[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    path = geometry.write_ply(tmp_path / "cloud.ply", points, colors, ["units: metres", "made by a test"])
    ply = PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    assert ply.comments == ["units: metres", "made by a test"]
    v = ply["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert v["x"].dtype == np.float32 and v["red"].dtype == np.uint8 and v.count == h * w - 1
    rows, cols = np.nonzero(np.isfinite(depth))
    zs = depth[rows, cols].astype(np.float64)
    np.testing.assert_allclose(v["x"], (cols - cx) * zs / fx, rtol=1e-6)
    np.testing.assert_allclose(v["y"], (rows - cy) * zs / fy, rtol=1e-6)
    np.testing.assert_array_equal(v["z"], depth[rows, cols])
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), image[rows, cols])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.ply"]  # no temporary file left
    geometry.write_ply(tmp_path / "plain.ply", points)
    assert [p.name for p in PlyData.read(str(tmp_path / "plain.ply"))["vertex"].properties] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="single ASCII lines"):
        geometry.write_ply(tmp_path / "bad.ply", points, colors, ["two\nlines"])
    with pytest.raises(ValueError, match="finite"):
        geometry.write_ply(tmp_path / "bad.ply", np.full((2, 3), np.nan, np.float32))
    assert not (tmp_path / "bad.ply").exists()


def distorted(z, a=40.0, b=0.3):
    """What a relative model would ideally output: the exact inverse depth (0 for the sky) under an affine map."""
    return (a * np.where(np.isfinite(z), 1 / z, 0.0) + b).astype(np.float32)


def test_align_recovers_metric_depth_from_a_handful_of_known_depths(scene):
    rs, _, z, ground = scene
    p = distorted(z)
    mask = np.zeros(z.shape, bool)
    mask[[300, 400, 250, 200, 350, 460], [100, 320, 500, 40, 600, 200]] = True  # 6 known pixels
    assert np.isfinite(z[mask]).all()
    known = np.where(mask, z, np.nan)
    a = geometry.align(p, known, mask)
    assert a.scale == pytest.approx(1 / 40.0, rel=1e-6) and a.shift == pytest.approx(-0.3 / 40.0, rel=1e-5)
    finite = np.isfinite(z)
    rel = np.abs(a.depth[finite] - z[finite]) / z[finite]
    assert rel.max() < 1e-5, rel.max()  # every pixel, the ground out to 2 km included
    assert a.used[mask].all() and a.used.sum() == 6 and a.rms < 1e-7
    # The aligned ground is a plane in metres.
    points, _ = geometry.point_cloud(a.depth, fov=60.0, mask=ground)
    heights = to_world(rs, points)[:, 1]
    near = points[:, 2] < 20
    assert np.abs(heights[near]).max() < 1e-4


def test_robust_align_ignores_wrong_known_depths(scene):
    _, _, z, _ = scene
    p = distorted(z)
    rows = np.array([300, 400, 250, 200, 350, 460, 330, 420, 280])
    cols = np.array([100, 320, 500, 40, 600, 200, 10, 630, 250])
    mask = np.zeros(z.shape, bool)
    mask[rows, cols] = True
    known = np.where(mask, z, np.nan)
    known[rows[0], cols[0]] *= 3.0  # two wrong samples of nine
    known[rows[4], cols[4]] *= 0.4
    plain = geometry.align(p, known, mask)
    robust = geometry.align(p, known, mask, robust=True)
    finite = np.isfinite(z) & (z < 100)
    err = lambda d: (np.abs(d[finite] - z[finite]) / z[finite]).max()  # noqa: E731
    assert err(plain.depth) > 0.05  # least squares is pulled by the wrong samples ...
    assert err(robust.depth) < 1e-5  # ... the robust fit gives them weight 0
    assert not robust.used[rows[0], cols[0]] and not robust.used[rows[4], cols[4]] and robust.used.sum() == 7


def test_align_refuses_what_cannot_fix_a_scale_and_shift():
    p = np.arange(12, dtype=np.float32).reshape(3, 4)
    one = np.zeros((3, 4), bool)
    one[1, 1] = True
    with pytest.raises(ValueError, match="at least two pixels"):
        geometry.align(p, np.ones((3, 4)), one)
    same = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="at least two pixels"):
        geometry.align(same, np.ones((3, 4)), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="finite and positive"):
        geometry.align(p, -np.ones((3, 4)), np.ones((3, 4), bool))


def test_known_depth_files(tmp_path):
    shape = (4, 6)
    depth = np.full(shape, np.nan)
    depth[1, 2], depth[3, 5], depth[0, 0] = 2.0, 7.5, 1.25
    expected_mask = np.isfinite(depth)

    np.save(tmp_path / "k.npy", depth)
    (tmp_path / "k.csv").write_text("# known depths\nx,y,depth\n2,1,2.0\n5,3,7.5\n\n0,0,1.25\n")
    np.savez(tmp_path / "k.npz", depth=np.nan_to_num(depth, nan=5.0), mask=expected_mask)
    for name in ("k.npy", "k.csv", "k.npz"):
        d, m = geometry.load_known_depths(tmp_path / name, shape)
        np.testing.assert_array_equal(m, expected_mask)
        np.testing.assert_array_equal(d[m], depth[expected_mask])

    def refused(name, match):
        with pytest.raises(errors.AlignError, match=match) as e:
            geometry.load_known_depths(tmp_path / name, shape)
        assert name in str(e.value)

    np.save(tmp_path / "wrong.npy", np.ones((6, 4)))
    refused("wrong.npy", r"shape \(6, 4\); the picture is \(4, 6\)")
    np.save(tmp_path / "objects.npy", np.empty(shape, object), allow_pickle=True)
    refused("objects.npy", "expected numbers")
    (tmp_path / "short.npy").write_bytes((tmp_path / "k.npy").read_bytes()[:-8])
    refused("short.npy", "holds .* bytes")
    np.savez(tmp_path / "nodepth.npz", d=depth)
    refused("nodepth.npz", "no array named 'depth'")
    np.savez(tmp_path / "badmask.npz", depth=np.zeros(shape), mask=np.ones(shape, bool))
    refused("badmask.npz", "finite and positive")
    (tmp_path / "zip.npz").write_bytes(b"PK not a zip")
    refused("zip.npz", "cannot read")
    (tmp_path / "range.csv").write_text("6,0,1.0\n")
    refused("range.csv", r"line 1: pixel \(6, 0\)")
    (tmp_path / "text.csv").write_text("1,1,2\n1,a,2\n")
    refused("text.csv", "line 2: expected x,y,depth")
    (tmp_path / "one.csv").write_text("1,1,2\n")
    refused("one.csv", "at least 2")
    (tmp_path / "k.txt").write_text("1,1,2\n")
    refused("k.txt", ".npy, .npz or .csv")
    refused("missing.csv", "no such file")
    assert zipfile.is_zipfile(tmp_path / "k.npz")


def test_save_point_cloud_says_its_units(scene, tmp_path):
    rs, picture, z, ground = scene
    p = distorted(z)
    known = tmp_path / "known.csv"
    points = [(100, 300), (320, 400), (500, 250)]
    known.write_text("x,y,depth\n" + "".join(f"{x},{y},{float(z[y, x])!r}\n" for x, y in points))
    Image.fromarray(picture).save(tmp_path / "scene.png")
    out = geometry.save_point_cloud(tmp_path / "metric.ply", p, tmp_path / "scene.png", known=known, max_depth=1e4)
    ply = PlyData.read(str(out))
    assert any(c.startswith("units: metres") for c in ply.comments)
    [fit] = [c.split() for c in ply.comments if c.startswith("alignment:")]
    assert float(fit[2]) == pytest.approx(1 / 40, rel=1e-6) and float(fit[4]) == pytest.approx(-0.3 / 40, rel=1e-5)
    assert fit[5:9] == ["fitted", "to", "3", "of"] and fit[9] == "3"
    v = ply["vertex"]
    finite = np.isfinite(z)
    assert v.count == finite.sum()  # the sky (~1e8 m after alignment) left out
    # 3 samples of float32 predictions fix s and t to ~1e-7; at 2 km that is 2e-5 of the depth.
    near = z[finite] < 100
    np.testing.assert_allclose(v["z"][near], z[finite][near], rtol=1e-5)
    np.testing.assert_array_equal(v["red"], picture[finite][:, 0])

    out = geometry.save_point_cloud(tmp_path / "relative.ply", p, picture)
    ply = PlyData.read(str(out))
    assert any(c.startswith("units: arbitrary, not metres") for c in ply.comments)
    zs = ply["vertex"]["z"]
    assert zs.min() == pytest.approx(1.0, rel=1e-5) and zs.max() == pytest.approx(10.0, rel=1e-5)
    with pytest.raises(ValueError, match="picture is"):
        geometry.save_point_cloud(tmp_path / "x.ply", p[:-1], picture)
