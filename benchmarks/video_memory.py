"""Peak host memory of a temporal model's video run against the video's length.

Each clip (a synthetic moving scene, encoded with PyAV) runs in a fresh interpreter through
`dpt_jax.video.predict_video` (windows of 32 frames aligned to each other, global colour
mapping, a depth video written), with random weights of the preset; the child reports its peak
resident memory (VmHWM). The original holds every frame and every depth map of a video; dpt-jax
holds at most two windows of frames, so the peak should not grow with the length.

    python -m benchmarks.video_memory                       # vda_vits, 100 and 1000 frames of 240x320
    python -m benchmarks.video_memory --frames 100 1000 --input-size 224 --model vda_vits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from .measure import MARKER, child_result, machine_info, python_child

CHILD = f"""
import json, sys, time
from dpt_jax import registry, video
from dpt_jax.model import DepthModel
from dpt_jax.timing import random_params
from benchmarks.measure import status_kb
config = registry.get_config(sys.argv[1])
model = DepthModel(config, random_params(config))
start = time.perf_counter()
result = video.predict_video(model, sys.argv[2], sys.argv[3], size=int(sys.argv[4]))
print({MARKER!r} + json.dumps({{"frames": result.frames, "seconds": time.perf_counter() - start,
                                "processed_size": result.processed_size, "peak_rss_mb": status_kb("VmHWM") / 1024}}))
"""


def make_clip(path: Path, frames: int, h: int, w: int) -> Path:
    """A clip of `frames` frames: a gradient with a disc drifting across it (content changes every frame)."""
    import av
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            cx = (i * 3) % w
            disc = ((x - cx) ** 2 + (y - h / 2) ** 2 < (h / 5) ** 2) * 200
            rgb = np.stack([(x + i) % 256, (y * 2) % 256, disc], -1).astype(np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vda_vits", help="a temporal preset (random weights)")
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--frame-size", default="240x320", help="HxW of the clips")
    p.add_argument("--input-size", type=int, default=224, help="the network input's lower bound")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    h, w = map(int, args.frame_size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip = make_clip(Path(tmp) / f"clip{n}.mp4", n, h, w)
            run = subprocess.run(python_child(CHILD, args.model, str(clip), str(Path(tmp) / f"depth{n}.mp4"),
                                              str(args.input_size)), capture_output=True, text=True)
            result = child_result(run.stdout)
            if result is None:
                raise SystemExit(f"the {n}-frame run failed:\n{run.stderr[-2000:]}")
            rows.append({"model": args.model, "frame_size": [h, w], **result})
            print(f"{args.model} {n:5d} frames {w}x{h} (model at {result['processed_size'][1]}x"
                  f"{result['processed_size'][0]}): peak RSS {result['peak_rss_mb']:.0f} MB, {result['seconds']:.0f} s")
    if len(rows) > 1:
        print(f"peak of the longest / the shortest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
