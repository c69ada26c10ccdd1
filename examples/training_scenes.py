"""Training data with exact depth: the example scene of render_scene.py seen from random cameras.

Each view moves the camera over the ground (up to 1.5 m sideways, -2..3 m along the view) and turns it
(up to 15 degrees left or right); the picture and its exact z depth (metres, inf for the sky) are written
in the `folder` layout that `dpt-jax finetune --data` and `dpt-jax eval --dataset folder` read:
OUT/train/images/NNNN.png, OUT/train/depth/NNNN.npy, and the same under OUT/val for held-out views.

    python examples/training_scenes.py OUT [--train 64] [--val 8] [--width 112] [--height 84]
"""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

spec = importlib.util.spec_from_file_location("render_scene", Path(__file__).resolve().parent / "render_scene.py")
scene = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scene)


def write_views(folder, count: int, width: int, height: int, seed: int) -> None:
    """`count` random views of the scene at width x height under folder/images and folder/depth."""
    rng = np.random.default_rng(seed)
    scene.W, scene.H = width, height  # the ray caster reads its camera from these module attributes
    for sub in ("images", "depth"):
        (Path(folder) / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene.EYE = np.array([rng.uniform(-1.5, 1.5), 1.5, rng.uniform(-2.0, 3.0)])
        scene.look(np.radians(rng.uniform(-15.0, 15.0)))
        rgb, z = scene.render()
        Image.fromarray(rgb).save(Path(folder) / "images" / f"{i:04d}.png")
        np.save(Path(folder) / "depth" / f"{i:04d}.npy", z.astype(np.float32))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=64, help="training views (default 64)")
    ap.add_argument("--val", type=int, default=8, help="held-out views (default 8)")
    ap.add_argument("--width", type=int, default=112)
    ap.add_argument("--height", type=int, default=84)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write_views(args.out / "train", args.train, args.width, args.height, args.seed)
    write_views(args.out / "val", args.val, args.width, args.height, args.seed + 1)
    print(f"wrote {args.train} training and {args.val} held-out views under {args.out}")


if __name__ == "__main__":
    main()
