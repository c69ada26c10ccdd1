"""Video Depth Anything against its original code: one 32-frame window, speed and bfloat16 error, side by side.

Transformers has no Video Depth Anything, so the peer is the original repository's own
`VideoDepthAnything.forward`, run by a Python that has torch and the original's requirements
(`--original-python`, `--original-src`: a checkout of DepthAnything/Video-Depth-Anything). Both
sides get the same random weights (every parameter of the preset drawn by
`dpt_jax.timing.random_params`, handed over as a safetensors file of the original's keys) and the
same window of 32 normalised frames. Reported, with the machine on every row:

  * frames/s of one window (median of `--repeats` calls after a warm-up), float32 on both sides;
  * bfloat16: dpt-jax's `dtype="bfloat16"` and the original's CPU autocast (bfloat16), each
    against the original's float32 output (max|d| / max|ref|).

    python -m benchmarks.video_depth_anything --original-python VENV/bin/python --original-src SRC
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .measure import MARKER, child_result, machine_info

#: The original's side: build the model, load the weights, time float32 and run autocast once.
ORIGINAL = f"""
import json, statistics, sys, time
import numpy as np, torch
src, weights, clip, out, encoder, features, channels, repeats, threads = sys.argv[1:10]
sys.path.insert(0, src)
torch.set_num_threads(int(threads))
from safetensors.torch import load_file
from video_depth_anything.video_depth import VideoDepthAnything
model = VideoDepthAnything(encoder=encoder, features=int(features), out_channels=json.loads(channels)).eval()
missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
assert set(missing) <= {{"pretrained.mask_token"}} and not unexpected, (missing, unexpected)
x = torch.from_numpy(np.load(clip))
times = []
with torch.no_grad():
    for i in range(int(repeats) + 1):
        t = time.perf_counter(); depth = model(x); times.append(time.perf_counter() - t)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        autocast = model(x).float()
np.save(out + "-fp32.npy", depth.numpy()); np.save(out + "-autocast.npy", autocast.numpy())
print({MARKER!r} + json.dumps({{"seconds": times[1:], "torch": torch.__version__}}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original-python", required=True, help="a Python with torch and the original's requirements")
    p.add_argument("--original-src", required=True, help="a checkout of DepthAnything/Video-Depth-Anything")
    p.add_argument("--model", default="vda_vits")
    p.add_argument("--size", default="518x518", help="HxW of the network input (multiples of 14)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    import jax

    from dpt_jax import registry
    from dpt_jax.convert import hf
    from dpt_jax.convert.safetensors_io import write_safetensors
    from dpt_jax.model import DepthModel
    from dpt_jax.timing import cpu_cores, random_params

    config = registry.get_config(args.model)
    h, w = map(int, args.size.split("x"))
    params = random_params(config)
    clip = np.random.default_rng(0).standard_normal((1, 32, 3, h, w)).astype(np.float32)  # (B, T, 3, H, W)
    images = jax.numpy.asarray(clip[0].transpose(0, 2, 3, 1))  # (32, H, W, 3)
    with tempfile.TemporaryDirectory() as tmp:
        weights, clip_path, out = Path(tmp) / "w.safetensors", Path(tmp) / "clip.npy", Path(tmp) / "out"
        write_safetensors(weights, hf.original_state(config, params), {"format": "pt"})
        np.save(clip_path, clip)
        encoder = {384: "vits", 768: "vitb", 1024: "vitl"}[config.encoder.embed_dim]
        run = subprocess.run([args.original_python, "-c", ORIGINAL, args.original_src, str(weights), str(clip_path),
                              str(out), encoder, str(config.fusion_features), json.dumps(config.reassembly_features),
                              str(args.repeats), str(cpu_cores())], capture_output=True, text=True)
        original = child_result(run.stdout)
        if original is None:
            raise SystemExit(f"the original's side failed:\n{run.stderr[-3000:]}")
        reference = np.load(str(out) + "-fp32.npy")[0]  # (32, H, W)
        autocast = np.load(str(out) + "-autocast.npy")[0]
    rows = {}
    for dtype in ("float32", "bfloat16"):
        model = DepthModel(config, params, dtype=dtype)
        times = []
        for _ in range(args.repeats + 1):
            t = time.perf_counter()
            depth = np.asarray(model.apply_clip(images, 32))
            times.append(time.perf_counter() - t)
        rows[dtype] = {"seconds": times[1:], "error_vs_original_fp32": float(np.abs(depth - reference).max()
                                                                              / np.abs(reference).max())}
    rows["original_autocast_bf16_error_vs_fp32"] = float(np.abs(autocast - reference).max() / np.abs(reference).max())
    machine = machine_info()
    load = os.getloadavg()[0]
    fps = lambda s: 32 / statistics.median(s)  # noqa: E731
    print(f"{args.model} @ {h}x{w}, one window of 32 frames; {machine.get('cpu', '')}, load {load:.1f}")
    print(f"  dpt-jax float32   {fps(rows['float32']['seconds']):6.2f} frames/s   "
          f"error vs original fp32 {rows['float32']['error_vs_original_fp32']:.1e}")
    ratio = statistics.median(rows["float32"]["seconds"]) / statistics.median(original["seconds"])
    print(f"  original float32  {fps(original['seconds']):6.2f} frames/s   (dpt-jax / original time: {ratio:.2f})")
    print(f"  dpt-jax bfloat16  {fps(rows['bfloat16']['seconds']):6.2f} frames/s   "
          f"error vs original fp32 {rows['bfloat16']['error_vs_original_fp32']:.1e}")
    print(f"  original autocast bfloat16 error vs its fp32 {rows['original_autocast_bf16_error_vs_fp32']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "load_average": load, "model": args.model,
                                               "size": [h, w], "dpt_jax": rows, "original": original}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
