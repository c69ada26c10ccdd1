"""Render a small synthetic scene with a NumPy ray caster, together with its exact inverse depth.

A checkerboard ground recedes to the horizon under a sky gradient; four spheres and a box stand at
different distances, lit by a low sun (Lambert shading, soft sphere shadows, a hemispherical ambient
term with contact occlusion) and faded by a little distance fog. No random numbers are used, so the
output is the same on every run.

    python examples/render_scene.py   # writes examples/scene.png, examples/scene_true_inverse_depth.png
"""

from pathlib import Path

import numpy as np
from PIL import Image

from dpt_jax.output import colorize

W, H = 640, 480
HFOV = np.radians(60.0)  # horizontal field of view
EYE = np.array([0.0, 1.5, 0.0])  # camera 1.5 m above the ground, looking along +z ...
PITCH = np.radians(-8.0)  # ... and tilted slightly down
FWD = np.array([0.0, np.sin(PITCH), np.cos(PITCH)])
UP = np.array([0.0, np.cos(PITCH), -np.sin(PITCH)])
RIGHT = np.array([1.0, 0.0, 0.0])

SUN = np.array([0.7, 0.8, 0.3]) / np.linalg.norm([0.7, 0.8, 0.3])  # from the right, a bit in front
SUN_RGB = np.array([1.0, 0.93, 0.82])
SKY_ZENITH, SKY_HORIZON = np.array([0.16, 0.32, 0.72]), np.array([0.78, 0.84, 0.92])
BOUNCE = np.array([0.30, 0.27, 0.22])  # light coming back up from the ground

SPHERES = [  # centre, radius, albedo
    (np.array([-1.3, 0.7, 4.0]), 0.7, np.array([0.80, 0.12, 0.08])),
    (np.array([1.2, 1.0, 7.5]), 1.0, np.array([0.10, 0.45, 0.75])),
    (np.array([5.5, 1.6, 16.0]), 1.6, np.array([0.20, 0.65, 0.20])),
    (np.array([-3.0, 3.5, 34.0]), 3.5, np.array([0.60, 0.30, 0.70])),
]
BOX_LO, BOX_HI, BOX_ALBEDO = np.array([-4.8, 0.0, 10.0]), np.array([-2.6, 2.4, 12.2]), np.array([0.85, 0.65, 0.30])
EPS = 1e-4


def camera_rays(jx, jy):
    """Unit directions of the rays through the points (column + jx, row + jy) of every pixel, as (H*W, 3)."""
    tan_h = np.tan(HFOV / 2)
    x = ((np.arange(W) + jx) / W * 2 - 1) * tan_h
    y = (1 - (np.arange(H) + jy) / H * 2) * tan_h * H / W
    d = FWD + x[None, :, None] * RIGHT + y[:, None, None] * UP
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)


def sphere_t(o, d, c, r):
    """Distance along each ray to the sphere (inf on a miss)."""
    oc = o - c
    b = np.sum(oc * d, -1)
    h = b * b - (np.sum(oc * oc, -1) - r * r)
    t = -b - np.sqrt(np.maximum(h, 0.0))
    return np.where((h > 0) & (t > EPS), t, np.inf)


def box_t(o, d, lo, hi):
    """Distance along each ray to the axis-aligned box (inf on a miss), and the axis of the face hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - o) / d, (hi - o) / d
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in, t_out = near.max(-1), far.min(-1)
    return np.where((t_in <= t_out) & (t_in > EPS), t_in, np.inf), near.argmax(-1)


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def sun_visibility(p, k=6.0):
    """Soft shadows of the spheres (penumbra from how closely the sun ray misses), hard one of the box."""
    vis = np.ones(len(p))
    for c, r, _ in SPHERES:
        oc = p - c
        b = oc @ SUN
        h = b * b - (np.sum(oc * oc, -1) - r * r)
        gap = np.sqrt(np.maximum(r * r - h, 0.0)) - r  # > 0: the sun ray misses the sphere by about this much
        t = np.maximum(-b - np.sqrt(np.maximum(h, 0.0)), 1e-6)
        vis *= np.where(b > 0, 1.0, smoothstep(k * gap / t))
    return vis * ~np.isfinite(box_t(p, SUN, BOX_LO, BOX_HI)[0])


def sphere_occlusion(p, n):
    """Ambient light left after the spheres hide part of the sky (cosine-weighted solid angle)."""
    ao = np.ones(len(p))
    for c, r, _ in SPHERES:
        v = c - p
        dist = np.linalg.norm(v, axis=-1)
        ao *= 1 - np.maximum(np.sum(n * v, -1) / dist, 0.0) * (r / dist) ** 2
    return ao


def trace(d):
    """Linear RGB colour and camera-space depth z (inf for the sky) along each ray from the eye."""
    ts = [sphere_t(EYE, d, c, r) for c, r, _ in SPHERES]
    t_box, axis = box_t(EYE, d, BOX_LO, BOX_HI)
    with np.errstate(divide="ignore"):
        t_ground = np.where(d[:, 1] < -EPS, -EYE[1] / d[:, 1], np.inf)
    ts = np.stack(ts + [t_box, t_ground])
    which, t = ts.argmin(0), ts.min(0)
    hit = np.isfinite(t)
    p = EYE + np.where(hit, t, 0.0)[:, None] * d

    n, albedo, shiny = np.zeros_like(d), np.zeros_like(d), np.zeros(len(d))
    for i, (c, r, a) in enumerate(SPHERES):
        m = which == i
        n[m], albedo[m], shiny[m] = (p[m] - c) / r, a, 0.35
    m = which == len(SPHERES)
    n[m, axis[m]] = -np.sign(d[m, axis[m]])
    albedo[m] = BOX_ALBEDO
    m = (which == len(SPHERES) + 1) & hit
    n[m] = [0.0, 1.0, 0.0]
    checker = (np.floor(p[m, 0]) + np.floor(p[m, 2])) % 2  # 1 m tiles
    contrast = 0.45 * np.exp(-t[m] / 30)  # fade the pattern with distance, where it would alias
    albedo[m] = (0.5 + (checker - 0.5) * contrast)[:, None] * np.array([1.0, 0.93, 0.8])

    lambert = np.maximum(n @ SUN, 0.0) * sun_visibility(p + 1e-3 * n)
    up = (0.5 + 0.5 * n[:, 1])[:, None]
    ambient = (up * SKY_ZENITH + (1 - up) * BOUNCE) * sphere_occlusion(p, n)[:, None]
    half = SUN - d
    half /= np.linalg.norm(half, axis=-1, keepdims=True)
    spec = shiny * np.maximum(np.sum(n * half, -1), 0.0) ** 40 * (lambert > 0)
    colour = albedo * (0.9 * ambient + lambert[:, None] * SUN_RGB) + (spec * lambert)[:, None] * SUN_RGB
    fog = np.exp(-0.012 * np.where(hit, t, 0.0))[:, None]
    colour = fog * colour + (1 - fog) * SKY_HORIZON

    s = np.clip(d[:, 1] / 0.35, 0.0, 1.0)[:, None]  # sky: pale at the horizon, deep blue overhead
    colour[~hit] = ((1 - s) * SKY_HORIZON + s * SKY_ZENITH)[~hit]
    return colour, np.where(hit, t * (d @ FWD), np.inf)


def look(yaw):
    """Point the camera `yaw` radians to the right of +z, keeping its downward pitch (FWD, UP, RIGHT)."""
    global FWD, UP, RIGHT
    c, s = np.cos(yaw), np.sin(yaw)
    FWD = np.array([s * np.cos(PITCH), np.sin(PITCH), c * np.cos(PITCH)])
    UP = np.array([-s * np.sin(PITCH), np.cos(PITCH), -c * np.sin(PITCH)])
    RIGHT = np.array([c, 0.0, -s])


def render():
    """The picture (H, W, 3) uint8 and its exact z depth (H, W) (inf for the sky) from the current camera.

    4 samples a pixel on a rotated grid for smooth edges; the depth is taken at the pixel centres."""
    offsets = [(0.375, 0.125), (0.875, 0.375), (0.125, 0.625), (0.625, 0.875)]
    linear = sum(trace(camera_rays(jx, jy))[0] for jx, jy in offsets) / len(offsets)
    rgb = np.round(np.clip(linear, 0.0, 1.0) ** (1 / 2.2) * 255).astype(np.uint8).reshape(H, W, 3)
    return rgb, trace(camera_rays(0.5, 0.5))[1].reshape(H, W)


def main(out_dir=None):
    out_dir = Path(__file__).resolve().parent if out_dir is None else out_dir
    rgb, z = render()
    inverse_depth = np.where(np.isfinite(z), 1 / z, 0.0)
    Image.fromarray(rgb).save(out_dir / "scene.png", optimize=True)
    Image.fromarray(colorize(inverse_depth)).save(out_dir / "scene_true_inverse_depth.png", optimize=True)
    print(f"wrote {out_dir / 'scene.png'} and {out_dir / 'scene_true_inverse_depth.png'}; "
          f"inverse depth {inverse_depth[inverse_depth > 0].min():.4f}..{inverse_depth.max():.4f} 1/m")


if __name__ == "__main__":
    main()
