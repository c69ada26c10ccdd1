"""Several pictures of one scene through a Depth Anything 3 any-view model: depth, cameras, one point cloud.

    predict_views(model, pictures) -> Scene   as the original api.py's inference on a list of images
    predict_views(model, pictures, extrinsics=..., intrinsics=...)   with known cameras (its camera encoder)
    scene_points(scene) -> (points, colours)  the merged point cloud, in the first view's camera frame

Each picture is resized as the original's input processor does (`preprocess.upper_bound_levels`),
then all are centre-cropped to the smallest height and width, normalised and run as one scene:
the encoder picks the reference view (three views or more, `dinov2.saddle_balanced`), attends
across the views in its global blocks, and the camera decoder gives each view's pose and
intrinsics. Everything is at the network's size (as the original returns it): depth (relative,
one scale for the whole scene), its confidence, world-to-camera extrinsics and intrinsics in
network pixels.

Known cameras (api.py's `inference(..., extrinsics=, intrinsics=)`): world-to-camera 4x4 (or 3x4)
poses and 3x3 intrinsics in pixels of the pictures, one per view. The intrinsics follow the
pictures' resizes and crop; the poses are made relative to the first camera and their
translations divided by the median distance of the camera centres from it (at least 0.1); the
camera encoder turns them into the tokens the encoder uses (no reference view is chosen). The
depth then comes back in the scale of the given poses: a similarity (Umeyama, with scale) maps
the given camera centres onto the predicted ones (RANSAC over subsets from ten views on, as the
original), the depth is divided by its scale, and the cameras returned are the given ones (the
intrinsics at the network's size). `align_to_input_scale=False` keeps the network's depth and
returns the given poses mapped into the predicted frame instead.
"""

from __future__ import annotations

import functools
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


def network_intrinsics(intrinsics: np.ndarray, picture_size, first, size, crop) -> np.ndarray:
    """(3, 3) float32 intrinsics of a picture -> at the network input, as the original's input processor: rows 0 and
    1 scaled by each resize's width and height ratios (float32), then the principal point moved by the crop
    (`crop` = (top, left))."""
    k = np.array(intrinsics, np.float32)
    for (h0, w0), (h1, w1) in ((picture_size, first), (first, size)):
        k[:1] *= np.float32(w1 / float(w0))
        k[1:2] *= np.float32(h1 / float(h0))
    k[0, 2] -= crop[1]
    k[1, 2] -= crop[0]
    return k


def relative_poses(extrinsics: np.ndarray) -> np.ndarray:
    """(S, 4, 4) world-to-camera -> relative to the first camera (it becomes the identity), translations divided by
    the median (the lower middle one) distance of the camera centres from it, at least 0.1: api.py's
    `_normalize_extrinsics`, in float32."""
    e = np.asarray(extrinsics, np.float32)
    out = (e @ _inverse_rigid(e[0])).astype(np.float32)  # (S, 4, 4)
    centres = _inverse_rigid(out)[:, :3, 3]
    distances = np.sqrt(np.sum(centres * centres, axis=-1))
    median = max(float(np.sort(distances)[(len(distances) - 1) // 2]), 0.1)
    out[:, :3, 3] /= np.float32(median)
    return out


def _inverse_rigid(e: np.ndarray) -> np.ndarray:
    """(..., 4, 4) [R | t] -> [R^T | -R^T t] (the original's affine_inverse), in e's dtype."""
    out = np.zeros_like(e)
    rt = np.swapaxes(e[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ e[..., :3, 3:]
    out[..., 3, 3] = 1
    return out


def check_cameras(extrinsics, intrinsics, views: int, source: str = "the cameras") -> tuple[np.ndarray, np.ndarray]:
    """Known cameras as (S, 4, 4) world-to-camera float64 and (S, 3, 3) intrinsics, or a ValueError naming `source`
    and what is wrong: one pose (4x4, or 3x4 without the bottom row) and one intrinsics matrix per view, finite, a
    rotation in each pose, positive focal lengths and a last row [0, 0, 1]."""
    if extrinsics is None or intrinsics is None:
        raise ValueError(f"{source}: known cameras need both the extrinsics and the intrinsics of every view")
    e, k = np.asarray(extrinsics, dtype=np.float64), np.asarray(intrinsics, dtype=np.float64)
    if e.ndim != 3 or e.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{source}: extrinsics must be one 4x4 (or 3x4) world-to-camera matrix per view; "
                         f"got shape {e.shape}")
    if k.ndim != 3 or k.shape[1:] != (3, 3):
        raise ValueError(f"{source}: intrinsics must be one 3x3 matrix per view; got shape {k.shape}")
    for what, n in (("extrinsics", len(e)), ("intrinsics", len(k))):
        if n != views:
            raise ValueError(f"{source}: {n} {what} for {views} views; give one per view, in the pictures' order")
    if not (np.isfinite(e).all() and np.isfinite(k).all()):
        raise ValueError(f"{source}: the cameras hold values that are not finite numbers")
    if e.shape[1] == 3:
        e = np.concatenate([e, np.broadcast_to(np.array([[[0.0, 0.0, 0.0, 1.0]]]), (views, 1, 4))], axis=1)
    for i in range(views):
        r = e[i, :3, :3]
        if not np.allclose(e[i, 3], [0, 0, 0, 1]):
            raise ValueError(f"{source}: view {i + 1}'s pose has the bottom row {e[i, 3].tolist()}, not [0, 0, 0, 1]")
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-3) and np.linalg.det(r) > 0):
            raise ValueError(f"{source}: view {i + 1}'s pose is not a rotation and a translation (world to camera)")
        if not (k[i, 0, 0] > 0 and k[i, 1, 1] > 0 and np.allclose(k[i, 2], [0, 0, 1])):
            raise ValueError(f"{source}: view {i + 1}'s intrinsics need fx > 0, fy > 0 and the last row [0, 0, 1]")
    return e, k


#: The keys of one view in a --cameras JSON file
CAMERA_KEYS = {"picture", "world_to_camera", "intrinsics"}


def load_cameras(path, pictures: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Known cameras from a file for the views `pictures` (their names, in order): (S, 4, 4) world-to-camera and
    (S, 3, 3) intrinsics in pixels of the pictures, or a ValueError naming the file and what is wrong.

    .json: {"views": [{"world_to_camera": 4x4 or 3x4 rows, "intrinsics": 3x3 rows, "picture": optional name}, ...]},
    one entry per view in the pictures' order (a "picture" must be that view's file name). .npz: arrays
    "extrinsics" (S, 4, 4) or (S, 3, 4) and "intrinsics" (S, 3, 3).
    """
    import json
    import os

    name = os.fspath(path)
    try:
        if name.lower().endswith(".npz"):
            with np.load(name, allow_pickle=False) as f:
                if set(f.files) != {"extrinsics", "intrinsics"}:
                    raise ValueError(f"{name}: a cameras .npz holds exactly the arrays 'extrinsics' and 'intrinsics'; "
                                     f"found {sorted(f.files)}")
                e, k = f["extrinsics"], f["intrinsics"]
        elif name.lower().endswith(".json"):
            with open(name, "rb") as f:
                data = json.loads(f.read(1 << 24))
            entries = data.get("views") if isinstance(data, dict) else None
            if not isinstance(entries, list) or not all(isinstance(v, dict) for v in entries):
                raise ValueError(f'{name}: a cameras .json is {{"views": [{{"world_to_camera": ..., "intrinsics": '
                                 '...}}, ...]}}, one entry per view')
            for i, v in enumerate(entries):
                if "network_size" in v:
                    raise ValueError(f"{name}: view {i + 1} looks like dpt-jax's own cameras output (intrinsics at the "
                                     "network's size); give intrinsics in pixels of the input pictures")
                if set(v) - CAMERA_KEYS or not {"world_to_camera", "intrinsics"} <= set(v):
                    raise ValueError(f"{name}: view {i + 1} must have 'world_to_camera' and 'intrinsics' (and may "
                                     f"have 'picture'); it has {sorted(v)}")
                if "picture" in v and i < len(pictures) and v["picture"] != os.path.basename(pictures[i]):
                    raise ValueError(f"{name}: view {i + 1} is for {v['picture']!r}, but picture {i + 1} is "
                                     f"{os.path.basename(pictures[i])!r} (give the views in the pictures' order)")
            try:
                e = np.array([v["world_to_camera"] for v in entries], dtype=np.float64)
                k = np.array([v["intrinsics"] for v in entries], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: each view's world_to_camera and intrinsics must be matrices of numbers "
                                 "(lists of equal-length rows)") from None
        else:
            raise ValueError(f"{name}: known cameras are read from a .json or a .npz file")
    except OSError as err:
        raise ValueError(f"{name}: cannot read the cameras file ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: not valid JSON ({err})") from None
    return check_cameras(e, k, len(pictures), name)


def predict_views(model, pictures, names: list[str] | None = None, *, extrinsics=None, intrinsics=None,
                  align_to_input_scale: bool = True) -> Scene:
    """One scene from several pictures (paths, PIL images or (h, w, 3) arrays) through an any-view model.

    `extrinsics` (S, 4, 4) or (S, 3, 4) world-to-camera and `intrinsics` (S, 3, 3) in pixels of the
    pictures: known cameras (see the module's docstring); then the depth is in the scale of the given
    poses and the returned cameras are the given ones (`align_to_input_scale=False`: the network's scale).
    """
    import jax
    import jax.numpy as jnp

    from .pictures import decode, open_source

    config = model.config
    if config.head != "dualdpt":
        raise ValueError(f"{config.name} sees one picture at a time; several views of a scene need a Depth Anything 3 "
                         "any-view model (da3_small, da3_base, da3_large, da3_giant)")
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
    known = extrinsics is not None or intrinsics is not None
    if known:
        extrinsics, intrinsics = check_cameras(extrinsics, intrinsics, len(decoded))
    levels = network_pictures(config, decoded)  # (S, H, W, 3)
    mean, std = np.asarray(config.input_mean, np.float32), np.asarray(config.input_std, np.float32)
    x = jnp.asarray((levels / np.float32(255.0) - mean) / std)
    cameras = None
    if known:
        from .preprocess import network_size, upper_bound_sizes

        size = levels.shape[1:3]
        k_net = []
        for p, k in zip(decoded, intrinsics):
            own = network_size(config, p.shape[:2])
            first = upper_bound_sizes(*p.shape[:2], max(own), config.resize_multiple)[0]
            crop = ((own[0] - size[0]) // 2, (own[1] - size[1]) // 2)
            k_net.append(network_intrinsics(k, p.shape[:2], first, own, crop))
        k_net = np.stack(k_net)  # (S, 3, 3) float32
        cameras = (jnp.asarray(relative_poses(extrinsics)), jnp.asarray(k_net))
    out = jax.device_get(_scene_program(config, model.dtype)(model.params, x, cameras))
    # the colours: the network input back through the normalisation in float64, truncated (the original's
    # processed images, not the resized picture)
    images = (np.clip(np.asarray(x, np.float64) * np.asarray(config.input_std) + np.asarray(config.input_mean), 0, 1)
              * 255).astype(np.uint8)
    depth, w2c, k = np.asarray(out["depth"]), np.asarray(out["extrinsics"]), np.asarray(out["intrinsics"])
    if known:  # api.py's _align_to_input_extrinsics_intrinsics
        rotation, translation, scale = align_poses(w2c, extrinsics)
        k = k_net
        if align_to_input_scale:
            w2c, depth = extrinsics[:, :3].astype(np.float32), (depth / np.float32(scale)).astype(np.float32)
        else:
            w2c = _aligned_poses(extrinsics, rotation, translation, scale)[:, :3].astype(np.float32)
    return Scene(names or [s.name for s in sources], images, depth, np.asarray(out["confidence"]), w2c, k)


@functools.lru_cache(maxsize=8)
def _scene_program(config, dtype: str):
    """jit(forward) of a scene (every output, all views together; known cameras or None), one per config and dtype:
    a second scene of the same sizes reuses its compiled program."""
    import jax

    from .dpt import forward

    @jax.jit
    def run(params, images, cameras):
        return forward(config, params, images, dtype, outputs=True, views=images.shape[0], cameras=cameras)

    return run


# ---------------------------------------------------------------------------------------------
# The original's pose alignment (utils/pose_align.py with evo's Umeyama), in float64

#: api.py aligns with RANSAC from this many views on (10 subsets of half the views, numpy's generator seeded 42)
RANSAC_VIEWS, RANSAC_ITERATIONS, RANSAC_SEED = 10, 10, 42


def umeyama(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The similarity (r, t, s) with y ~ s r x + t for points x, y (3, n): evo's umeyama_alignment with scale; a
    ValueError where the covariance has rank below 2 (fewer than three camera centres off one line)."""
    n = x.shape[1]
    mean_x, mean_y = x.mean(axis=1), y.mean(axis=1)
    sigma_x = np.linalg.norm(x - mean_x[:, None]) ** 2 / n
    cov = (y - mean_y[:, None]) @ (x - mean_x[:, None]).T / n
    u, d, v = np.linalg.svd(cov)
    if np.count_nonzero(d > np.finfo(d.dtype).eps) < 2:
        raise ValueError("the camera centres are degenerate (fewer than three, or on one line): the original's "
                         "Umeyama alignment of the poses is not possible")
    flip = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(v) < 0:
        flip[2, 2] = -1
    r = u @ flip @ v
    s = float(np.trace(np.diag(d) @ flip) / sigma_x)
    return r, mean_y - s * r @ mean_x, s


def align_poses(predicted: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(r, t, s) mapping the given cameras' centres onto the predicted ones (world-to-camera 3x4 / 4x4 each), as
    api.py calls utils/pose_align.align_poses_umeyama: plain from three views, RANSAC from RANSAC_VIEWS on."""
    ref = _inverse_rigid(_homogeneous(predicted))[:, :3, 3].T  # (3, S) predicted centres
    est = _inverse_rigid(_homogeneous(given))[:, :3, 3].T
    if ref.shape[1] < RANSAC_VIEWS:
        return umeyama(est, ref)
    r0, t0, s0 = umeyama(est, ref)  # pre-alignment: its inlier threshold
    moved = s0 * r0 @ est + t0[:, None]
    threshold = float(np.median([np.linalg.norm(ref - p[:, None], axis=0).min() for p in moved.T]))
    n = ref.shape[1]
    rng = np.random.default_rng(RANSAC_SEED)
    best, best_score, best_inliers = (r0, t0, s0), (-1, np.inf), None
    for _ in range(RANSAC_ITERATIONS):
        sample = rng.choice(np.arange(n), size=max(3, (n + 1) // 2), replace=False)
        try:
            r, t, s = umeyama(est[:, sample], ref[:, sample])
        except ValueError:
            continue
        errors = np.linalg.norm(s * r @ est + t[:, None] - ref, axis=0)
        inliers = errors <= threshold
        k = int(inliers.sum())
        mean = float(errors[inliers].mean()) if k else np.inf
        if k > best_score[0] or (k == best_score[0] and mean < best_score[1]):
            best, best_score, best_inliers = (r, t, s), (k, mean), inliers
    if best_inliers is not None and best_inliers.sum() >= 3:
        return umeyama(est[:, best_inliers], ref[:, best_inliers])
    return best


def _aligned_poses(given: np.ndarray, r: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """The given world-to-camera poses after the similarity: camera-to-world [r R | s r c + t], inverted."""
    c2w = _inverse_rigid(_homogeneous(given))
    c2w[:, :3, :3] = r @ c2w[:, :3, :3]
    c2w[:, :3, 3] = (s * c2w[:, :3, 3]) @ r.T + t
    return _inverse_rigid(c2w)


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
    """(..., 3 or 4, 4) poses -> (..., 4, 4) float64, the last row [0 0 0 1]."""
    e = np.asarray(e, np.float64)
    out = np.broadcast_to(np.eye(4), e.shape[:-2] + (4, 4)).copy()
    out[..., :e.shape[-2], :] = e
    return out
