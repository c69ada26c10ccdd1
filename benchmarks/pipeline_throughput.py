#!/usr/bin/env python
"""Folder throughput against model-only throughput: how much the input pipeline costs.

    python benchmarks/pipeline_throughput.py                      # mini_beit fixture and swin2_tiny_256
    python benchmarks/pipeline_throughput.py --models mini --count 24 --repeats 3

A temporary folder of JPEG photos of mixed sizes (examples/scene.png rescaled and cropped to
640x480 ... 2000x1500, both orientations, a third of them stored sideways with an EXIF rotation,
as phones write them) is run through, per model, after every program has been compiled once:

  model only          model.apply on the network inputs of the same batches (pre-decoded,
                      pre-resized, already on the device): the most any folder run can reach
  folder, sequential  pipeline.run(paths, workers=0): decode, EXIF, resize, model and resize
                      back, one after the other (the behaviour before the input pipeline overlapped)
  folder              pipeline.run(paths): decoding in worker threads one batch ahead, batch
                      k+1 dispatched before batch k's depth is pulled (what `dpt-jax predict` runs)
  folder + writing    as `dpt-jax predict -f color`: also writes each colour PNG

Models: the random-weight mini_beit test fixture (tests/fixtures) and a full-size swin2_tiny_256
with random parameters (`DPT(config).init` at its native size; the speed does not depend on the
weights). Each number is the best of --repeats passes, in images/s. Every pass reads the files
again, but from the page cache (the folder was just written). Run it on a quiet machine: on a
shared one the numbers move by 10 % or more between runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(ROOT)
SIZES = [(480, 640), (768, 1024), (1200, 1600), (1500, 2000), (1080, 1440), (900, 1200)]  # (h, w) landscape


def cpu_flags() -> str:
    """The CPU's vector and matrix extensions that matter for JAX on CPU (avx2, avx512*, amx*)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    keep = sorted(f for f in flags if f in ("avx2", "fma") or f.startswith(("avx512", "amx", "avx_vnni")))
    return " ".join(keep) or "none of avx2/avx512/amx"


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs from examples/scene.png: rescaled, cropped, both orientations, some EXIF-rotated."""
    from PIL import Image

    scene = Image.open(ROOT / "examples" / "scene.png").convert("RGB")
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        portrait = (i // len(SIZES)) % 2 == 1
        big = scene.resize((int(w * 1.15), int(h * 1.15)), Image.Resampling.BICUBIC)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        photo = big.crop((x, y, x + w, y + h))  # (w, h) landscape
        exif = Image.Exif()
        if portrait and i % 3 == 0:  # stored landscape, shown portrait: orientation 6
            exif[0x0112] = 6
        elif portrait:
            photo = photo.transpose(Image.Transpose.ROTATE_90)
        path = folder / f"photo{i:03d}.jpg"
        photo.save(path, quality=90, exif=exif)
        paths.append(path)
    return paths


def load_model(name: str):
    import jax

    import dpt_jax
    from dpt_jax import registry
    from dpt_jax.dpt import DPT
    from dpt_jax.model import DepthModel

    if name == "mini":
        return dpt_jax.load(ROOT / "tests" / "fixtures" / "mini_beit.safetensors")
    config = registry.get_config(name)
    h, w = config.native_size
    params = DPT(config).init(jax.random.PRNGKey(0), np.zeros((1, h, w, 3), np.float32))["params"]
    return DepthModel(config, params, source=f"{name} (random init)")


def best_rate(fn, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def measure(model, paths: list[Path], batch_size: int, repeats: int, outdir: Path) -> dict:
    import jax.numpy as jnp

    from dpt_jax import output, overlap, pictures, pipeline
    from dpt_jax.preprocess import normalize_and_resize

    n = len(paths)
    pipeline.run(model, paths, batch_size=batch_size, keep_depth=False)  # compiles every program
    # The network inputs of the same batches the folder run makes, ready on the device.
    sources = [pictures.open_source(p) for p in paths]
    target_of = pipeline.planner(model.config)
    batches = []
    for size_hw, members in pipeline.batches_by_shape(sources, target_of, batch_size):
        x = jnp.concatenate([normalize_and_resize(jnp.asarray(sources[m].load()[None]), size_hw) for m in members])
        b = overlap.padded_batch(len(members), batch_size, model.num_devices)
        batches.append(jnp.concatenate([x, jnp.zeros((b - len(members), *x.shape[1:]), x.dtype)]))
    for x in batches:
        model.apply(x).block_until_ready()

    def model_only():
        outs = [model.apply(x) for x in batches]
        for o in outs:
            o.block_until_ready()

    def write(r):
        output.write_depth(outdir / f"{Path(r.name).stem}-depth.png", r.depth, "color")

    rates = {
        "model only": best_rate(model_only, n, repeats),
        "folder, sequential": best_rate(lambda: pipeline.run(model, paths, batch_size=batch_size, keep_depth=False,
                                                             workers=0), n, repeats),
        "folder": best_rate(lambda: pipeline.run(model, paths, batch_size=batch_size, keep_depth=False), n, repeats),
        "folder + writing": best_rate(lambda: pipeline.run(model, paths, batch_size=batch_size, keep_depth=False,
                                                           on_result=write), n, repeats),
    }
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default="mini,swin2_tiny_256", help="comma-separated: mini and/or registry names")
    p.add_argument("--count", type=int, default=12, help="photos in the folder (default 12)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per number; the best is kept (default 2)")
    args = p.parse_args(argv)

    import jax

    from benchmarks.measure import machine_info, machine_label
    from dpt_jax import overlap, pictures

    jax.config.update("jax_default_matmul_precision", "highest")
    info = machine_info()
    print(f"machine: {machine_label(info)}; CPU flags: {cpu_flags()}; {jax.default_backend()} backend, "
          f"jax {info['jax']}; decoding threads: {overlap.default_workers()}")
    with tempfile.TemporaryDirectory(prefix="dpt-jax-throughput-") as tmp:
        folder, outdir = Path(tmp) / "photos", Path(tmp) / "depth"
        folder.mkdir()
        outdir.mkdir()
        paths = make_photos(folder, args.count)
        sizes = sorted({pictures.open_source(q).size for q in paths})
        print(f"folder: {len(paths)} JPEGs, sizes (h, w) {', '.join(f'{h}x{w}' for h, w in sizes)}; "
              f"batch size {args.batch_size}; best of {args.repeats}")
        for name in args.models.split(","):
            model = load_model(name.strip())
            rates = measure(model, paths, args.batch_size, args.repeats, outdir)
            base = rates["model only"]
            print(f"{model.config.name} ({name.strip()}):")
            for label, rate in rates.items():
                print(f"  {label:20s} {rate:8.2f} images/s  {100 * rate / base:5.1f} % of model only")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
