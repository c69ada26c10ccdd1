"""The example scene as a point cloud, seen from a second viewpoint.

The exact z depth of every pixel of examples/scene.png (metres, from examples/render_scene.py's ray
caster; the sky has none) goes through dpt_jax.geometry.point_cloud with the renderer's 60 degree
camera, as `dpt-jax predict -f ply` does with a model's depth. The coloured points are then turned
25 degrees about the vertical line through the ground 7 m ahead and drawn with a z-buffer, 2x2 pixels
a point: the holes are the parts of the scene the first camera could not see. This is exact
geometry, not a model's prediction (no trained weights are reachable where this is built).

    python examples/render_point_cloud.py   # writes examples/point_cloud.png
"""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from dpt_jax import geometry

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("render_scene", HERE / "render_scene.py")
scene = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scene)

TURN, PIVOT = np.radians(25.0), np.array([0.0, 0.0, 7.0])  # about the vertical line 7 m ahead (world)
BACKGROUND = np.array([24, 24, 28], np.uint8)


def splat(points, colors, k, size, radius=2):
    """Z-buffered drawing of (N, 3) camera-space points (OpenCV axes) through K: the nearest point wins a pixel."""
    h, w = size
    z = points[:, 2]
    u = np.floor(k[0, 0] * points[:, 0] / z + k[0, 2] + 0.5).astype(np.int64)  # (N,) nearest pixel column
    v = np.floor(k[1, 1] * points[:, 1] / z + k[1, 2] + 0.5).astype(np.int64)
    du, dv = np.meshgrid(np.arange(radius), np.arange(radius))
    u, v = (u[:, None] + du.ravel()).ravel(), (v[:, None] + dv.ravel()).ravel()  # (N * r^2,) each point as r x r pixels
    z, colors = np.repeat(z, radius * radius), np.repeat(colors, radius * radius, axis=0)
    inside = (z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    pixel, z, colors = (v * w + u)[inside], z[inside], colors[inside]
    order = np.lexsort((z, pixel))  # by pixel, then nearest first
    first = np.unique(pixel[order], return_index=True)[1]
    image = np.tile(BACKGROUND, (h * w, 1))
    image[pixel[order][first]] = colors[order][first]
    return image.reshape(h, w, 3)


def main():
    picture = np.asarray(Image.open(HERE / "scene.png").convert("RGB"))  # (H, W, 3)
    z = scene.trace(scene.camera_rays(0.5, 0.5))[1].reshape(scene.H, scene.W)  # metres; inf for the sky
    fov = np.degrees(scene.HFOV)
    points, colors = geometry.point_cloud(z, picture, fov=fov)  # (N, 3) metres, (N, 3) uint8; the sky left out
    # To world coordinates (x right, y up, z ahead, the ground at y = 0), turned about the vertical
    # line through PIVOT, and back into the (unchanged) camera: as if the camera orbited the other way.
    axes = np.stack([scene.RIGHT, -scene.UP, scene.FWD])  # rows: OpenCV camera axes in world coordinates
    world = points @ axes + scene.EYE
    c, s = np.cos(TURN), np.sin(TURN)
    turn = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    moved = ((world - PIVOT) @ turn.T + PIVOT - scene.EYE) @ axes.T
    k = geometry.intrinsics_from_fov(scene.H, scene.W, fov)
    image = splat(moved, colors, k, (scene.H, scene.W))
    Image.fromarray(image).save(HERE / "point_cloud.png", optimize=True)
    print(f"wrote {HERE / 'point_cloud.png'}: {len(points):,} points, depth {z[np.isfinite(z)].min():.2f}.."
          f"{z[np.isfinite(z)].max():.1f} m")


if __name__ == "__main__":
    main()
