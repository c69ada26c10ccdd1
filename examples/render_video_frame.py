"""One frame of a depth video of the example scene, mapped as `dpt-jax predict` maps a video's depth.

The camera of examples/render_scene.py walks forward and pans right over a few frames; each frame
is rendered with that file's ray caster together with its exact inverse depth (1/z, the sky 0).
The inverse depths of all frames are then coloured as dpt_jax.video does with --normalize global:
one min/max over the whole clip, the video writer's own inferno mapping (its compiled `render`
step), and the input and depth side by side. The frame in the middle of the move is saved. This
is exact geometry, not a model's prediction (no trained weights are reachable where this is built).

    python examples/render_video_frame.py   # writes examples/video_frame.png
"""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from PIL import Image

from dpt_jax import video
from dpt_jax.output import colormap

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("render_scene", HERE / "render_scene.py")
scene = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scene)

FRAMES, SHOWN = 7, 3  # frames of the move; the one saved
scene.W, scene.H = 320, 240  # the ray caster reads its camera from these module attributes


def render_frame(t):
    """(h, w, 3) uint8 picture and (h, w) exact inverse depth at time t in [0, 1]."""
    scene.EYE = np.array([0.3 * t, 1.5, 1.2 * t])  # 1.2 m forward, a little to the right
    scene.look(np.radians(12.0 * t))  # panning right by 12 degrees
    rgb, z = scene.render()
    return rgb, np.where(np.isfinite(z), 1 / z, 0.0).astype(np.float32)


def main():
    pictures, inverse = zip(*(render_frame(k / (FRAMES - 1)) for k in range(FRAMES)))
    inverse = np.stack(inverse)  # (n, h, w)
    lo, hi = float(inverse.min()), float(inverse.max())  # --normalize global: one range for the clip
    render = video._device_steps()[2]  # the video writer's mapping to inferno colours
    n = len(inverse)
    colour, _ = render(jnp.asarray(inverse), jnp.full((n,), lo, jnp.float32), jnp.full((n,), hi, jnp.float32),
                       jnp.asarray(colormap("inferno")))
    frame = np.concatenate([pictures[SHOWN], np.asarray(colour)[SHOWN]], axis=1)  # (h, 2w, 3): input | depth
    Image.fromarray(frame).save(HERE / "video_frame.png", optimize=True)
    print(f"wrote {HERE / 'video_frame.png'}: frame {SHOWN} of {FRAMES}, inverse depth {lo:.4f}..{hi:.4f} "
          "1/m over the clip")


if __name__ == "__main__":
    main()
