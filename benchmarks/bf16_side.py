#!/usr/bin/env python
"""bfloat16 speed: dpt-jax bfloat16 against `torch.autocast("cpu", bfloat16)`, same process, calls alternating.

    python -m benchmarks.bf16_side                                   # swin2_tiny_256, beit_base_384, da2_vits
    python -m benchmarks.bf16_side --models beit_base_384@384 --repeats 7 --out DIR

Four sides per model, all at its native size, batch 1, random weights (speed only; accuracy against
PyTorch's own bfloat16 is `bf16_accuracy.py`): dpt-jax float32 and bfloat16 (`DepthModel`, what
`predict` runs), and the transformers model of the same architecture (`torch_side.hf_model`) in
float32 and under autocast bfloat16 (oneDNN: AMX / AVX512-BF16 where the CPU has them). Reported:
first-call and median/min latencies, CPU seconds per call, and the ratio dpt-jax bfloat16 / torch
autocast (the target: at most 0.7), with the CPU's bfloat16 matrix instructions and the load average.
Needs the `bench` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

SIDES = ("dpt-jax float32", "dpt-jax bfloat16", "torch float32", "torch autocast bfloat16")
DEFAULT_MODELS = "swin2_tiny_256@256,beit_base_384@384,da2_vits@518"


def torch_call(model, x, autocast: bool):
    """A zero-argument call of the transformers model on `x` (NCHW), under autocast bfloat16 or in float32."""
    import contextlib

    import torch

    def call():
        mode = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), mode:
            return model(pixel_values=x).predicted_depth

    return call


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"MODEL@HxW,... (default {DEFAULT_MODELS})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--stem", default=None)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import jax
    import torch

    from benchmarks.measure import alternating_calls, machine_info, side_fields
    from benchmarks.report import write_results
    from benchmarks.torch_side import hf_model
    from dpt_jax.model import DepthModel
    from dpt_jax.timing import cpu_cores, parse_model_spec, random_params

    info = machine_info()
    torch.set_num_threads(cpu_cores())
    feats = info["cpu_features"]
    units = [k for k in ("avx512_bf16", "amx_bf16") if feats[k]] or ["none"]
    rows = []
    for spec in args.models.split(","):
        name = spec.partition("@")[0]
        config, (height, width) = parse_model_spec(spec)
        params = random_params(config)
        theirs, _ = hf_model(config)
        x = np.random.default_rng(0).standard_normal((1, height, width, 3)).astype(np.float32)
        xj = jax.device_put(x)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        f32, bf16 = (DepthModel(config, params, dtype=d) for d in ("float32", "bfloat16"))
        load_before = os.getloadavg()
        timed = alternating_calls({
            SIDES[0]: lambda: f32.apply(xj), SIDES[1]: lambda: bf16.apply(xj),
            SIDES[2]: torch_call(theirs, xt, False), SIDES[3]: torch_call(theirs, xt, True)}, args.repeats)
        row = {"model": name, "height": height, "width": width, "batch": 1, "load_before": list(load_before),
               "load_after": list(os.getloadavg()), "bf16_units": units}
        row.update(side_fields(timed))
        row["ratio"] = row["dpt_jax_bfloat16_median_ms"] / row["torch_autocast_bfloat16_median_ms"]
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{s} {row[s.replace('-', '_').replace(' ', '_') + '_median_ms']:.0f} ms"
                                      for s in SIDES)
              + f"; dpt-jax bf16 / torch autocast {row['ratio']:.2f}; load {load_before[0]:.1f}", flush=True)
    table = "\n".join(
        ["| model | dpt-jax f32 ms | dpt-jax bf16 ms | torch f32 ms | torch autocast bf16 ms "
         "| **dpt-jax bf16 / torch autocast** | dpt-jax bf16 / f32 | load (1 min) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
        + [f"| {r['model']} @ {r['height']}x{r['width']} | {r['dpt_jax_float32_median_ms']:.0f} | "
           f"{r['dpt_jax_bfloat16_median_ms']:.0f} | {r['torch_float32_median_ms']:.0f} | "
           f"{r['torch_autocast_bfloat16_median_ms']:.0f} | **{r['ratio']:.2f}** | "
           f"{r['dpt_jax_bfloat16_median_ms'] / r['dpt_jax_float32_median_ms']:.2f} | "
           f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f} |" for r in rows])
    print(table)
    if not args.no_write:
        extra = {"what": "dpt-jax bfloat16 vs torch.autocast('cpu', bfloat16) on the transformers model, random "
                         f"weights, batch 1, median of {args.repeats} alternating calls",
                 "lscpu": f"{feats['lscpu_model']}; bfloat16 matrix instructions: {', '.join(units)}; "
                          f"{' '.join(feats['vector_flags'])}"}
        stem = args.stem or f"bf16-side-{info['machine']}-{time.strftime('%Y-%m-%d')}"
        md, js = write_results("bf16-side", rows, info, args.out, table=table, extra=extra, stem=stem)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
