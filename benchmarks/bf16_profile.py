#!/usr/bin/env python
"""Where bfloat16 is slower than float32 on this machine: stage by stage, and what XLA makes of a bf16 matmul.

    python benchmarks/bf16_profile.py                       # swin2_tiny_256 at 256x256, batch 1
    python benchmarks/bf16_profile.py --model beit_base_384@384 --repeats 5 --out DIR

Four measurements, each for float32 and bfloat16 (`forward`'s two modes, random weights):
  stages   the model cut at its figure's joints (encoder, reassemble, fusion, head), each jitted on
           its own and timed on the previous stage's output, plus the whole forward pass
  matmul   one n x n @ n x n jitted matmul (the harness's matmul peak) in each dtype
  dense    the model's most common matmul shape (its first stage's MLP Linear) in each dtype
  hlo      the optimised XLA program of the bfloat16 forward: the operand types of its dots and
           convolutions, and how many converts it holds

Results go to <out>/bf16-profile-<machine>-<date>[-N].md/.json (existing files are never changed).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

DTYPES = ("float32", "bfloat16")


def stage_functions(config, dtype):
    """name -> f(params, x) of each stage, with its products in `dtype` as `forward` runs them (see `in_mode`)."""
    from dpt_jax.dpt import DepthHead, Fusion, Reassemble
    from dpt_jax.layers import COMPUTE_DTYPES

    c, mm = config, COMPUTE_DTYPES[dtype]
    family = c.family

    def encoder(params, images):
        return family.encoder(c.encoder, mm).apply({"params": params["encoder"]}, images)

    def reassemble(params, features, grid):
        return Reassemble(c, mm).apply({"params": params["reassemble"]}, features, grid)

    def fusion(params, maps):
        return Fusion(c, mm).apply({"params": params["fusion"]}, maps)

    def head(params, fused, size):
        return DepthHead(c, mm).apply({"params": params["head"]}, fused, size)

    return encoder, reassemble, fusion, head


def in_mode(fn):
    """fn traced as `dpt.forward` traces it: float32 products at HIGHEST precision."""
    import jax

    def wrapped(*args):
        with jax.default_matmul_precision("highest"):
            return fn(*args)

    return wrapped


def timed(fn, args, repeats, warmup):
    import jax

    from dpt_jax.timing import time_calls

    jax.block_until_ready(fn(*args))  # compile
    times = time_calls(lambda: jax.block_until_ready(fn(*args)), repeats, warmup)
    return statistics.median(times), min(times)


def profile_stages(config, size, batch, repeats, warmup, seed):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dpt_jax.dpt import cast_params, forward
    from dpt_jax.timing import random_params

    h, w = size
    images = jnp.asarray(np.random.default_rng(seed).standard_normal((batch, h, w, 3), dtype=np.float32))
    p = config.encoder.patch_size if config.family.outputs_tokens else None
    grid = (h // p, w // p) if p else None
    head_size = None
    base = random_params(config, seed)
    rows = []
    for dtype in DTYPES:
        encoder, reassemble, fusion, head = stage_functions(config, dtype)
        params = jax.device_put(cast_params(base))
        f_enc = jax.jit(in_mode(encoder))
        f_re = jax.jit(in_mode(reassemble), static_argnums=2)
        f_fu = jax.jit(in_mode(fusion))
        f_hd = jax.jit(in_mode(head), static_argnums=2)
        f_all = jax.jit(lambda prm, x: forward(config, prm, x, dtype))
        feats = f_enc(params, images)
        maps = f_re(params, feats, grid)
        fused = f_fu(params, maps)
        head_size = (2 * fused.shape[1], 2 * fused.shape[2]) if config.head == "midas" else (h, w)
        for stage, fn, args in (("encoder", f_enc, (params, images)), ("reassemble", f_re, (params, feats, grid)),
                                ("fusion", f_fu, (params, maps)), ("head", f_hd, (params, fused, head_size)),
                                ("whole forward", f_all, (params, images))):
            med, lo = timed(fn, args, repeats, warmup)
            rows.append({"part": "stage", "name": stage, "dtype": dtype, "median_s": med, "min_s": lo})
            print(f"  {stage:14s} {dtype:9s} median {med * 1e3:8.1f} ms  min {lo * 1e3:8.1f} ms",
                  file=sys.stderr, flush=True)
    return rows


def profile_matmuls(config, size, batch, repeats, warmup):
    """A 2048^3 matmul and the first stage's MLP Linear (tokens x C @ C x hidden), each dtype."""
    import jax
    import jax.numpy as jnp

    e = config.encoder
    if config.family.outputs_tokens:
        tokens, dim = batch * (size[0] // e.patch_size) * (size[1] // e.patch_size), e.embed_dim
        hidden = e.mlp_hidden
    else:  # SwinV2 stage 1: (H/4 * W/4) tokens of embed_dim, MLP ratio
        tokens, dim = batch * (size[0] // e.patch_size) * (size[1] // e.patch_size), e.embed_dim
        hidden = int(e.mlp_ratio * e.embed_dim)
    rows = []
    for label, (m, k, n) in (("matmul 2048^3", (2048, 2048, 2048)), (f"MLP fc1 {tokens}x{dim} @ {dim}x{hidden}",
                                                                      (tokens, dim, hidden))):
        for dtype in DTYPES:
            dt = jnp.dtype(dtype)
            ka, kb = jax.random.split(jax.random.PRNGKey(0))
            a = jax.random.normal(ka, (m, k), jnp.float32).astype(dt)
            b = jax.random.normal(kb, (k, n), jnp.float32).astype(dt)
            if dtype == "float32":
                f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
            else:  # as layers.Dense runs in bfloat16: bf16 operands, float32 accumulation
                f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
            med, lo = timed(f, (a, b), max(repeats, 5), warmup)
            gflops = 2 * m * k * n / lo / 1e9
            rows.append({"part": "matmul", "name": label, "dtype": dtype, "median_s": med, "min_s": lo,
                         "gflops_best": gflops})
            print(f"  {label:40s} {dtype:9s} {lo * 1e3:8.2f} ms  {gflops:6.1f} GFLOP/s", file=sys.stderr, flush=True)
    return rows


def hlo_summary(config, size, batch, seed):
    """Operand types of the dots / convolutions and the number of converts in the optimised bf16 program."""
    import jax
    import jax.numpy as jnp

    from dpt_jax.dpt import cast_params, forward
    from dpt_jax.timing import random_params

    params = cast_params(random_params(config, seed))
    images = jnp.zeros((batch, *size, 3), jnp.float32)
    out = {}
    lowered = jax.jit(lambda p, x: forward(config, p, x, "bfloat16")).lower(params, images)
    for stage in ("lowered", "optimised"):
        text = lowered.as_text(dialect="hlo") if stage == "lowered" else lowered.compile().as_text()
        out[stage] = {"ops": hlo_ops(text), "converts": len(re.findall(r" convert\(", text))}
    return out


def hlo_ops(text: str) -> dict:
    """Counts of "dot / convolution / custom fusion <operand types> -> <result type>" in an HLO module's text."""
    line_re = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[[^=]*?\s(dot|convolution|fusion)\(([^)]*)\)(.*)$")
    types = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[", text, re.M))
    counts = {}
    for line in text.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        _, result, op, operands, rest = m.groups()
        if op == "fusion":
            kind = re.search(r'"kind":"(\w+)"', rest)
            if "kind=kCustom" not in rest or not kind:
                continue
            op = kind.group(1).strip("_")
        args = [types.get(a.strip().lstrip("%"), "?") for a in operands.split(",") if a.strip()]
        key = f"{op} ({', '.join(dict.fromkeys(args))}) -> {result}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def format_tables(rows, hlo, size, batch) -> str:
    by = {(r["part"], r["name"], r["dtype"]): r for r in rows}
    lines = [f"Stages at {size[0]}x{size[1]}, batch {batch} (each jitted on its own; ms, median of the timed "
             "calls):", "",
             "| part | float32 ms | bfloat16 ms | bf16 / f32 | bf16 - f32 ms |", "|---|---:|---:|---:|---:|"]
    for part in ("stage", "matmul"):
        names = list(dict.fromkeys(r["name"] for r in rows if r["part"] == part))
        for name in names:
            f, b = by[(part, name, "float32")], by[(part, name, "bfloat16")]
            key = "min_s" if part == "matmul" else "median_s"
            extra = ""
            if part == "matmul":
                extra = f" ({f['gflops_best']:.0f} vs {b['gflops_best']:.0f} GFLOP/s, best)"
            lines.append(f"| {name}{extra} | {f[key] * 1e3:.1f} | {b[key] * 1e3:.1f} | {b[key] / f[key]:.2f} | "
                         f"{(b[key] - f[key]) * 1e3:+.1f} |")
    lines += ["", "XLA ops of the bfloat16 forward, operand -> result types (optimised: the bodies of fusions "
              "are counted too, next to the fusion calls; `?` is an operand defined outside the text parsed):", ""]
    for stage, d in hlo.items():
        ops = ", ".join(f"{k}: {v}" for k, v in sorted(d["ops"].items()))
        lines.append(f"- {stage}: {ops}; {d['converts']} converts")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks import bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="swin2_tiny_256@256", help="MODEL[@HxW] (default swin2_tiny_256@256)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(bench.RESULTS_DIR), metavar="DIR")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    import datetime

    from benchmarks.measure import machine_info
    from benchmarks.report import result_paths, write_results
    from dpt_jax.timing import parse_model_spec

    config, size = parse_model_spec(args.model)
    print(f"{config.name} @ {size[0]}x{size[1]}, batch {args.batch}", file=sys.stderr)
    rows = profile_stages(config, size, args.batch, args.repeats, args.warmup, args.seed)
    rows += profile_matmuls(config, size, args.batch, args.repeats, args.warmup)
    hlo = hlo_summary(config, size, args.batch, args.seed)
    table = format_tables(rows, hlo, size, args.batch)
    print(table)
    if args.no_write:
        return 0
    info = machine_info()
    feats = info["cpu_features"]
    units = [k for k in ("avx512_bf16", "amx_bf16") if feats[k]]
    extra = {"model": f"{config.name} @ {size[0]}x{size[1]}, batch {args.batch}, random weights (timing.random_params)",
             "lscpu": f"{feats['lscpu_model']}; bfloat16 matrix instructions: "
                      f"{', '.join(units) if units else 'none (no avx512_bf16, no amx_bf16)'}",
             }
    stem = result_paths(args.out, f"bf16-profile-{info['machine']}-{datetime.date.today().isoformat()}", False)[0].stem
    md, js = write_results("bf16-profile", rows, info, args.out, table=table, extra=extra,
                           stem=stem)
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
