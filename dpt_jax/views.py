"""Several pictures of one scene through a Depth Anything 3 any-view model: depth, cameras, one point cloud.

    predict_views(model, pictures) -> Scene   as the original api.py's inference on a list of images
    scene_points(scene) -> (points, colours)  the merged point cloud, in the first view's camera frame

Each picture is resized as the original's input processor does (`preprocess.upper_bound_levels`),
then all are centre-cropped to the smallest height and width, normalised and run as one scene:
the encoder picks the reference view (three views or more, `dinov2.saddle_balanced`), attends
across the views in its global blocks, and the camera decoder gives each view's pose and
intrinsics. Everything is at the network's size (as the original returns it): depth (relative,
one scale for the whole scene), its confidence, world-to-camera extrinsics and intrinsics in
network pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The point cloud keeps the pixels whose confidence is at least 1.05, raised to the 40th percentile of
#: the scene's confidences and capped at its 90th (the original's glb export)
CONFIDENCE_FLOOR, LOWER_PERCENTILE, UPPER_PERCENTILE = 1.05, 40.0, 90.0


@dataclass
class Scene:
    names: list[str]
    images: np.ndarray  # (S, H, W, 3) uint8: the pictures as the network saw them
    depth: np.ndarray  # (S, H, W) float32 relative depth, one scale for the scene
    confidence: np.ndarray  # (S, H, W) float32, >= 1
    extrinsics: np.ndarray  # (S, 3, 4) float32 world to camera
    intrinsics: np.ndarray  # (S, 3, 3) float32, network pixels


def network_pictures(config, pictures: list[np.ndarray]) -> np.ndarray:
    """(S, H, W, 3) float32 uint8 levels: each picture resized as the original's input processor does, then all
    centre-cropped to the smallest height and width."""
    import jax.numpy as jnp

    from .preprocess import network_size, upper_bound_levels, upper_bound_sizes

    levels = []
    for p in pictures:
        size = network_size(config, p.shape[:2])
        first = upper_bound_sizes(*p.shape[:2], max(size), config.resize_multiple)[0]
        levels.append(np.asarray(upper_bound_levels(jnp.asarray(p[None]), first, size))[0])
    h, w = min(x.shape[0] for x in levels), min(x.shape[1] for x in levels)
    return np.stack([x[(x.shape[0] - h) // 2:(x.shape[0] - h) // 2 + h, (x.shape[1] - w) // 2:(x.shape[1] - w) // 2 + w]
                     for x in levels])


def predict_views(model, pictures, names: list[str] | None = None) -> Scene:
    """One scene from several pictures (paths, PIL images or (h, w, 3) arrays) through an any-view model."""
    import jax
    import jax.numpy as jnp

    from .dpt import forward
    from .pictures import decode, open_source

    config = model.config
    if config.head != "dualdpt":
        raise ValueError(f"{config.name} sees one picture at a time; several views of a scene need a Depth Anything 3 "
                         "any-view model (da3_small, da3_base, da3_large)")
    sources = [open_source(p, i) for i, p in enumerate(pictures)]
    if not sources:
        raise ValueError("a scene needs at least one picture")
    decoded = []
    for s in sources:
        picture, message = decode(s)
        if message is not None:
            from .errors import ImageError

            raise ImageError(s.name, message)
        decoded.append(picture)
    levels = network_pictures(config, decoded)  # (S, H, W, 3)
    mean, std = np.asarray(config.input_mean, np.float32), np.asarray(config.input_std, np.float32)
    x = jnp.asarray((levels / np.float32(255.0) - mean) / std)
    run = jax.jit(lambda p, images: forward(config, p, images, model.dtype, outputs=True, views=images.shape[0]))
    out = jax.device_get(run(model.params, x))
    # the colours: the network input back through the normalisation in float64, truncated (the original's
    # processed images, not the resized picture)
    images = (np.clip(np.asarray(x, np.float64) * np.asarray(config.input_std) + np.asarray(config.input_mean), 0, 1)
              * 255).astype(np.uint8)
    return Scene(names or [s.name for s in sources], images, np.asarray(out["depth"]), np.asarray(out["confidence"]),
                 np.asarray(out["extrinsics"]), np.asarray(out["intrinsics"]))


def confidence_threshold(confidence: np.ndarray) -> float:
    """The original glb export's threshold: max(1.05, P40) capped at P90 of every view's confidences together."""
    lower, upper = np.percentile(confidence, LOWER_PERCENTILE), np.percentile(confidence, UPPER_PERCENTILE)
    return float(min(max(CONFIDENCE_FLOOR, lower), upper))


def scene_points(scene: Scene) -> tuple[np.ndarray, np.ndarray, float]:
    """(points (n, 3) float32 in the first view's camera frame, colours (n, 3) uint8, the confidence threshold).

    As the original's glb export: the pixels with finite positive depth and confidence at least
    `confidence_threshold`, back-projected at integer pixel coordinates through each view's
    intrinsics and camera-to-world pose, then (here) into the first camera's frame (x right, y
    down, z forward), without the export's glTF axis flip and centring.
    """
    threshold = confidence_threshold(scene.confidence)
    s, h, w = scene.depth.shape
    us, vs = np.meshgrid(np.arange(w), np.arange(h))
    pixels = np.stack([us, vs, np.ones_like(us)], axis=-1).reshape(-1, 3).astype(np.float64)  # (H*W, 3)
    first = _homogeneous(scene.extrinsics[0])  # world -> camera 0
    points, colours = [], []
    for i in range(s):
        d = scene.depth[i].reshape(-1).astype(np.float64)
        keep = np.flatnonzero(np.isfinite(d) & (d > 0) & (scene.confidence[i].reshape(-1) >= threshold))
        rays = np.linalg.inv(scene.intrinsics[i].astype(np.float64)) @ pixels[keep].T  # (3, n)
        camera = np.vstack([rays * d[keep], np.ones((1, keep.size))])  # (4, n)
        world = np.linalg.inv(_homogeneous(scene.extrinsics[i])) @ camera
        points.append((first @ world)[:3].T.astype(np.float32))
        colours.append(scene.images[i].reshape(-1, 3)[keep])
    return np.concatenate(points), np.concatenate(colours), threshold


def world_points(scene: Scene) -> np.ndarray:
    """The kept points in the world frame (the reference camera's), as the original computes them before its glTF
    alignment: for comparisons with it."""
    points, _, _ = scene_points(scene)
    inverse = np.linalg.inv(_homogeneous(scene.extrinsics[0]))
    return (inverse[:3, :3] @ points.T.astype(np.float64) + inverse[:3, 3:]).T.astype(np.float32)


def _homogeneous(e: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3] = e.astype(np.float64)
    return out
