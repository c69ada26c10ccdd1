"""Depth Anything V2 in dpt-jax and in KerasHub (`DepthAnythingBackbone`, Keras 3 on JAX), same run, same machine.

Both are JAX programs compiled by the same XLA, so every difference is the implementation's. Each
side is built at the preset's architecture with random weights (dpt-jax: `random_params`; KerasHub:
its own initialisers, the model the family names, `EncoderFamily.keras_hub`; the parameter counts
are reported side by side) and called through one jitted
function (KerasHub's `stateless_call` under `jax.jit`, what `predict` compiles). The two sides'
calls alternate, so a change of load on a shared machine hits both alike. Reported per (model,
batch): compile time, median and min wall-clock latency, median CPU seconds per call (all threads;
steadier than wall time under load), GFLOP/s from the analytic count (benchmarks/flops.py), and the
machine (lscpu model, vector flags, load average before and after).

    KERAS_BACKEND=jax python -m benchmarks.keras_hub_side --models da2_vits,da2_vitb --batch 1,4

Needs the `bench` extra's keras-hub (and keras); float32 only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402


def keras_call(model):
    """A jitted (images) -> depth of a built Keras model, its variables closed over as arguments."""
    import jax

    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x)[0])
    return lambda x: fn(trainable, frozen, x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="da2_vits,da2_vitb")
    p.add_argument("--batch", default="1,4")
    p.add_argument("--size", type=int, default=518)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--stem", default=None)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import jax
    import keras

    from benchmarks.flops import flop_count
    from benchmarks.measure import _version, alternating_calls, machine_info, side_fields
    from benchmarks.report import write_results
    from dpt_jax.checkpoint import count_params
    from dpt_jax.model import DepthModel
    from dpt_jax.timing import random_params, resolve_config

    if keras.backend.backend() != "jax":
        raise SystemExit("KerasHub must run on the JAX backend: set KERAS_BACKEND=jax")
    info = machine_info()
    rows = []
    for name in args.models.split(","):
        config = resolve_config(name)
        params = random_params(config)
        ours = DepthModel(config, params, dtype="float32")
        if config.family.keras_hub is None:
            raise SystemExit(f"KerasHub has no model of the {config.family.title} family")
        theirs = config.family.keras_hub(config, args.size)
        theirs_call = keras_call(theirs)
        for batch in (int(b) for b in args.batch.split(",")):
            x = np.random.default_rng(batch).standard_normal((batch, args.size, args.size, 3)).astype(np.float32)
            x = jax.device_put(x)
            flops = flop_count(config, args.size, args.size, batch).total
            load_before = os.getloadavg()
            timed = alternating_calls({"dpt-jax": lambda: ours.apply(x), "keras-hub": lambda: theirs_call(x)},
                                      args.repeats)
            row = {"model": name, "height": args.size, "width": args.size, "batch": batch, "dtype": "float32",
                   "gflop_per_call": flops / 1e9, "load_before": list(load_before), "load_after": list(os.getloadavg())}
            row.update(side_fields(timed))
            for key in ("dpt_jax", "keras_hub"):
                row[f"{key}_gflops"] = flops / 1e9 / (row[f"{key}_median_ms"] / 1e3)
            row["dpt_jax_params"] = count_params(params)
            row["keras_hub_params"] = int(theirs.count_params())
            row["dpt_jax_over_keras_hub"] = row["dpt_jax_median_ms"] / row["keras_hub_median_ms"]
            rows.append(row)
            print(f"{name} batch {batch}: dpt-jax {row['dpt_jax_median_ms']:.0f} ms ({row['dpt_jax_gflops']:.0f} "
                  f"GFLOP/s, {row['dpt_jax_cpu_s']:.2f} CPU s), KerasHub {row['keras_hub_median_ms']:.0f} ms "
                  f"({row['keras_hub_gflops']:.0f} GFLOP/s, {row['keras_hub_cpu_s']:.2f} CPU s): "
                  f"{row['dpt_jax_over_keras_hub']:.2f}x; load {load_before[0]:.1f} -> {row['load_after'][0]:.1f}",
                  flush=True)
    table = "\n".join(
        ["| model | batch | dpt-jax ms | KerasHub ms | dpt-jax / KerasHub | dpt-jax GFLOP/s | KerasHub GFLOP/s "
         "| dpt-jax CPU s | KerasHub CPU s | params (dpt-jax / KerasHub, M) | load (1 min) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        + [f"| {r['model']} @ {r['height']}x{r['width']} | {r['batch']} | {r['dpt_jax_median_ms']:.0f} | "
           f"{r['keras_hub_median_ms']:.0f} | **{r['dpt_jax_over_keras_hub']:.2f}** | {r['dpt_jax_gflops']:.0f} | "
           f"{r['keras_hub_gflops']:.0f} | {r['dpt_jax_cpu_s']:.2f} | {r['keras_hub_cpu_s']:.2f} | "
           f"{r['dpt_jax_params'] / 1e6:.1f} / {r['keras_hub_params'] / 1e6:.1f} | "
           f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f} |" for r in rows])
    print(table)
    if not args.no_write:
        info = {**info, "keras": _version("keras"), "keras_hub": _version("keras-hub")}
        extra = {"what": "dpt-jax against KerasHub's DepthAnythingBackbone (Keras 3, JAX backend), random weights, "
                         f"float32, median of {args.repeats} alternating calls",
                 "keras / keras-hub": f"{info['keras']} / {info['keras_hub']}",
                 "lscpu": f"{info['cpu_features']['lscpu_model']}; {' '.join(info['cpu_features']['vector_flags'])}"}
        stem = args.stem or f"keras-hub-{info['machine']}-{time.strftime('%Y-%m-%d')}"
        md, js = write_results("keras-hub", rows, info, args.out, table=table, extra=extra, stem=stem)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
