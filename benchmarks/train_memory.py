"""Device memory of one fine-tuning step, from XLA's own accounting of the compiled train step.

The train step of `dpt_jax.train` (loss, gradients, AdamW update; parameters and optimizer state float32) is
compiled for a preset with abstract parameters (nothing is allocated, nothing downloaded) and its
`compiled.memory_analysis()` read (and, backend-independent, the bytes of the activations JAX's autodiff saves for
the backward pass): argument bytes (train state + batch), output bytes (the new state: donated, so
it reuses the arguments' buffers), temp bytes (activations kept for the backward pass, gradients, workspace). The
peak is argument + temp (+ output not aliased to an argument). This is XLA CPU's schedule and fusion; a GPU
compiler schedules and fuses differently (see README, Fine-tune, for how far the numbers carry).

    python -m benchmarks.train_memory                      # da2_vitl at 518, batch 2: remat/dtype combinations
    python -m benchmarks.train_memory --model da2_vits --size 518 --batch 2
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .bf16_accuracy import cpu_features
from .measure import machine_info

GIB = 2 ** 30
_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "u32": 4, "bool": 1, "i8": 1, "u8": 1, "f64": 8, "i64": 8}


def saved_residual_bytes(name: str, size: int, batch: int, remat: bool, dtype: str) -> int:
    """Bytes of the activations JAX's autodiff keeps for the backward pass (jax.ad_checkpoint's saved residuals,
    the parameters left out): what the program must hold at once whatever the backend, before any workspace."""
    import contextlib
    import io
    import re

    from jax.ad_checkpoint import print_saved_residuals

    from dpt_jax import registry, train
    from dpt_jax.timing import random_params

    config = registry.get_config(name)
    recipe = train.Recipe(batch_size=batch, size=size, remat=remat, dtype=dtype)
    params = train.cast_params(random_params(config))
    args = (np.zeros((batch, size, size, 3), np.float32), np.ones((batch, size, size), np.float32),
            np.ones((batch, size, size), bool))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        print_saved_residuals(lambda p: train.batch_loss(config, recipe, p, *args), params)
    total = 0
    for line in text.getvalue().splitlines():
        m = re.match(r"\s*(\w+)\[([\d,]*)\]", line)
        if m and "from the argument" not in line:
            total += int(np.prod([int(x) for x in m.group(2).split(",") if x])) * _ITEMSIZE[m.group(1)]
    return total


def step_memory(name: str, size: int, batch: int, remat: bool, dtype: str) -> dict:
    """memory_analysis() of the compiled train step of preset `name` (bytes and GiB)."""
    from flax import traverse_util

    from dpt_jax import registry, train
    from dpt_jax.dpt import param_shapes

    config = registry.get_config(name)
    recipe = train.Recipe(batch_size=batch, size=size, remat=remat, dtype=dtype)
    params = traverse_util.unflatten_dict({tuple(k.split("/")): jax.ShapeDtypeStruct(s, jnp.float32)
                                           for k, s in param_shapes(config).items()})
    state = {"params": params, "opt_state": jax.eval_shape(train.optimizer(recipe).init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    batch_args = (jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
                  jax.ShapeDtypeStruct((batch, size, size), jnp.float32),
                  jax.ShapeDtypeStruct((batch, size, size), jnp.bool_))
    compiled = train.train_step.lower(config, train.step_recipe(recipe), state, *batch_args).compile()
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    n_params = sum(int(np.prod(s)) for s in param_shapes(config).values())
    return {"model": name, "size": size, "batch": batch, "remat": remat, "dtype": dtype, "parameters": n_params,
            "argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
            "generated_code_bytes": m.generated_code_size_in_bytes, "peak_bytes": peak,
            "peak_gib": round(peak / GIB, 2), "temp_gib": round(m.temp_size_in_bytes / GIB, 2),
            "state_gib": round(m.argument_size_in_bytes / GIB, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="da2_vitl")
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    rows = []
    for remat, dtype in ((True, "bfloat16"), (False, "bfloat16"), (True, "float32"), (False, "float32")):
        rows.append(step_memory(args.model, args.size, args.batch, remat, dtype))
        rows[-1]["saved_residual_gib"] = round(saved_residual_bytes(args.model, args.size, args.batch, remat, dtype)
                                               / GIB, 2)
        print(json.dumps(rows[-1]), flush=True)
    info = machine_info()
    feats = cpu_features()
    result = {"machine": info, "lscpu": feats, "backend_note": "XLA CPU compiled.memory_analysis(); saved_residual_gib "
              "from jax.ad_checkpoint.print_saved_residuals", "rows": rows}
    day = datetime.date.today().isoformat()
    path = args.out / f"train-memory-{info['machine']}-{day}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
