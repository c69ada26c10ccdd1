#!/usr/bin/env python
"""The benchmark harness, piece by piece: rows (JAX and PyTorch), FLOP counts, start-up, converter memory, peak.

    python benchmarks/bench.py run beit_base_384@384 --batch 1,4 --dtype float32,bfloat16
    python benchmarks/bench.py flops beit_large_512 --breakdown
    python benchmarks/bench.py startup swin2_tiny_256
    python benchmarks/bench.py convert-memory dpt_beit_large_512
    python benchmarks/bench.py peak --dtype float32,bfloat16

run_benchmarks.py runs the standard set; benchmarks/README.md explains every column.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from dpt_jax.layers import COMPUTE_DTYPES  # noqa: E402
from dpt_jax.timing import cpu_cores, parse_model_spec  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _csv(cast):
    def parse(text):
        try:
            return [cast(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parse


def _dtypes(text):
    dtypes = _csv(str)(text)
    if bad := [d for d in dtypes if d not in COMPUTE_DTYPES]:
        raise argparse.ArgumentTypeError(f"dtypes must be among {', '.join(COMPUTE_DTYPES)}; got {', '.join(bad)}")
    return dtypes


def add_output_args(p) -> None:
    p.add_argument("--out", default=str(RESULTS_DIR), metavar="DIR",
                   help="results folder (default: this repository's benchmarks/results); each run writes "
                        "<machine>-<date>.md and .json there, or <machine>-<date>-N.* if those exist")
    p.add_argument("--append", action="store_true", help="add the run to existing <machine>-<date>.md/.json instead")
    p.add_argument("--stem", help="file name without suffix (default <machine>-<date>)")
    p.add_argument("--no-write", action="store_true", help="print only, write no results file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="MODEL is a preset (beit_large_512, swin2_tiny_256, ...; with or without "
                                       "'dpt_') or a mini config (mini_beit, mini_swin2, ...), optionally @S or "
                                       "@HxW for the input size (default: native).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="benchmark rows: JAX and PyTorch latency, throughput, memory, GFLOP/s")
    r.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    r.add_argument("--batch", type=_csv(int), default=[1], help="comma-separated batch sizes (default 1)")
    r.add_argument("--dtype", type=_dtypes, default=["float32"], help="float32 and/or bfloat16 (default float32)")
    r.add_argument("--repeats", type=int, default=5, help="timed calls per row (default 5)")
    r.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one (default 1)")
    r.add_argument("--no-torch", action="store_true", help="skip the PyTorch (transformers) side")
    r.add_argument("--torch-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    r.add_argument("--torch-attn", default="auto", choices=["auto", "sdpa", "eager"],
                   help="transformers attention implementation (default auto: the family's HFLayout."
                        "default_attention, sdpa where transformers offers it for that backbone)")
    r.add_argument("--threads", type=int, help="torch threads (default: the cores JAX uses)")
    r.add_argument("--precision", choices=["default", "high", "highest"],
                   help="jax_default_matmul_precision (default: leave JAX's default)")
    r.add_argument("--peak-size", type=int, help="matmul size for the peak (default 2048 on CPU, 8192 on GPU)")
    r.add_argument("--peak-repeats", type=int, default=5)
    r.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    r.add_argument("--in-process", action="store_true", help="run every row in this process (warm caches!)")
    r.add_argument("--no-xla-flops", action="store_true", help="skip XLA's cost analysis of each row")
    add_output_args(r)

    f = sub.add_parser("flops", help="analytic FLOP count per stage, checked against the traced program and XLA")
    f.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    f.add_argument("--batch", type=int, default=1)
    f.add_argument("--dtype", default="float32", choices=list(COMPUTE_DTYPES))
    f.add_argument("--xla", choices=["compiled", "lowered", "none"], default="lowered",
                   help="XLA cost analysis of the optimized executable (compiles: slow for large models), "
                        "of the unoptimized HLO (default), or none")
    f.add_argument("--breakdown", action="store_true", help="print the per-component table")

    s = sub.add_parser("startup", help="fresh-process time to first result: cold vs warm persistent compilation cache")
    s.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--dtype", default="float32", choices=list(COMPUTE_DTYPES))
    s.add_argument("--runs", type=int, default=2, help="processes in a row sharing one cache (default 2)")
    s.add_argument("--cache-dir", help="cache folder to use (default: a fresh temporary one per model)")
    add_output_args(s)

    c = sub.add_parser("convert-memory", help="peak RSS of converting a synthesized full-size checkpoint")
    c.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="manifest name (dpt_beit_large_512, swin2_tiny_256, ...) or path to a manifest .json")
    c.add_argument("--manifests", dest="manifest_dir", metavar="DIR",
                   help="folder of the named manifests (default: this repository's tests/fixtures/manifests)")
    c.add_argument("--workdir", help="where the synthetic and converted files go (default: a temporary folder)")
    add_output_args(c)

    k = sub.add_parser("peak", help="measure the matmul peak only")
    k.add_argument("--dtype", type=_dtypes, default=["float32"])
    k.add_argument("--size", type=int)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--no-torch", action="store_true")
    return p


def _write(kind, results, info, args, **kw) -> None:
    from .report import write_results

    if not args.no_write and results:
        md, js = write_results(kind, results, info, args.out, append=args.append, stem=args.stem, **kw)
        print(f"wrote {md} and {js}")


def cmd_run(args) -> int:
    from .measure import machine_info
    from .report import format_peaks, format_rows
    from .rows import RowSpec, measure_peaks, run_row

    specs = []
    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        for b in args.batch:
            for dt in args.dtype:
                specs.append(RowSpec(model=text.split("@")[0], config=config, height=h, width=w, batch=b, dtype=dt,
                                     repeats=args.repeats, warmup=args.warmup, torch=not args.no_torch,
                                     torch_dtype=args.torch_dtype, torch_attn=args.torch_attn, threads=args.threads,
                                     xla_flops=not args.no_xla_flops, matmul_precision=args.precision))
    info = machine_info()
    peaks, measured = ({}, [])
    if not args.no_peak:
        _log("measuring the matmul peak ...")
        peaks, measured = measure_peaks(args.dtype, n=args.peak_size, repeats=args.peak_repeats,
                                        with_torch=not args.no_torch, threads=args.threads)
        _log(format_peaks(measured))
    rows, failures = [], []
    for spec in specs:
        label = f"{spec.model} {spec.height}x{spec.width} batch {spec.batch} {spec.dtype}"
        _log(f"row: {label} ...")
        try:
            row = run_row(spec, isolate=not args.in_process, info=info, peaks=peaks)
        except (RuntimeError, MemoryError) as e:  # one failed row (e.g. out of memory) must not lose the others
            failures.append(f"{label}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            _log(f"  FAILED: {e}")
            continue
        rows.append(row)
        _log(f"  jax median {row['jax_latency_median_s'] * 1e3:.1f} ms"
             + (f", torch median {row['torch_latency_median_s'] * 1e3:.1f} ms" if "torch_latency_median_s" in row
                else f", torch: {row.get('torch_skipped')}"))
    table = format_rows(rows)
    if failures:
        table += "\n\nFailed rows:\n" + "\n".join(f"- {f}" for f in failures)
    extra = {"matmul peak": format_peaks(measured) or "not measured",
             "rows": "isolated (one fresh process per row)" if not args.in_process else "in one process",
             "torch threads": args.threads or cpu_cores()}
    matches = {r["model"]: r for r in rows if "params_match" in r}
    if matches:
        extra["parameter counts"] = "; ".join(
            f"{m}: ours {r['jax_params']:,} vs transformers {r['torch_params_used']:,} used "
            f"({r['torch_params_total']:,} total) -> {'match' if r['params_match'] else 'MISMATCH'}"
            for m, r in matches.items())
    print(table)
    for k, v in extra.items():
        print(f"{k}: {v}")
    _write("rows", rows, info, args, table=table, extra=extra)
    return 1 if failures else 0


def cmd_flops(args) -> int:
    from .flops import flop_count, trace_forward, traced_flops, xla_flops
    from .torch_side import torch_flop_count, torch_status

    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        fc = flop_count(config, h, w, args.batch)
        print(f"{config.name} at {h}x{w}, batch {args.batch}: {fc.total / 1e9:.3f} GFLOP "
              f"({fc.per_image / 1e9:.3f} per image; with padding taps "
              f"{flop_count(config, h, w, args.batch, padding_taps=True).total / 1e9:.3f})")
        if args.breakdown:
            print(fc.table())
        tr = trace_forward(config, h, w, args.batch, args.dtype)
        traced = traced_flops(config, h, w, args.batch, args.dtype, traced=tr)["total"]
        print(f"  traced dot_general + conv: {traced / 1e9:.3f} GFLOP ({100 * (traced / fc.total - 1):+.3f} %)")
        if args.xla != "none":
            x = xla_flops(config, h, w, args.batch, args.dtype, compiled=args.xla == "compiled", traced=tr)
            print(f"  XLA cost_analysis ({args.xla}): {x / 1e9:.3f} GFLOP ({100 * (x / fc.total - 1):+.2f} %: "
                  "XLA also counts elementwise ops)")
        ok, why = torch_status(config)
        if ok:
            tf = torch_flop_count(config, h, w, args.batch)
            dense = flop_count(config, h, w, args.batch, padding_taps=True, original_order=True).total
            print(f"  torch FlopCounterMode on the transformers model: {tf / 1e9:.3f} GFLOP "
                  f"({100 * (tf / dense - 1):+.3f} % vs the analytic count of the original's order, padding taps)")
        else:
            print(f"  torch FLOP count skipped: {why}")
    return 0


def cmd_startup(args) -> int:
    from .measure import machine_info
    from .report import format_startup
    from .startup import startup_times

    info = machine_info()
    results = []
    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        _log(f"startup: {config.name} {h}x{w} batch {args.batch} {args.dtype} ({args.runs} processes) ...")
        r = startup_times(config, h, w, args.batch, args.dtype, cache_dir=args.cache_dir, runs=args.runs)
        r["model"] = text.split("@")[0]
        results.append(r)
    table = format_startup(results)
    print(table)
    _write("startup", results, info, args, table=table)
    return 0


def cmd_convert_memory(args) -> int:
    from .convert_memory import convert_memory, resolve_manifest
    from .measure import machine_info
    from .report import format_convert

    manifests = [resolve_manifest(m, args.manifest_dir) for m in args.manifests]  # all found before any runs
    info = machine_info()
    results = []
    for m in manifests:
        _log(f"convert-memory: {m.stem} ...")
        results.append(convert_memory(m, args.workdir))
    table = format_convert(results)
    print(table)
    _write("convert-memory", results, info, args, table=table)
    return 0


def cmd_peak(args) -> int:
    from .rows import measure_peaks

    _, measured = measure_peaks(args.dtype, n=args.size, repeats=args.repeats, with_torch=not args.no_torch)
    for m in measured:
        print(f"{m['framework']} {m['dtype']} {m['n']}x{m['n']} matmul: {m['gflops']:.1f} GFLOP/s "
              f"(best of {args.repeats}: {m['seconds'] * 1e3:.1f} ms)")
    return 0


COMMANDS = {"run": cmd_run, "flops": cmd_flops, "startup": cmd_startup, "convert-memory": cmd_convert_memory,
            "peak": cmd_peak}


def main(argv: Optional[list] = None) -> int:
    """Parses `argv` (without the program name) and returns the exit status; user errors are one line on stderr."""
    from dpt_jax.cli import run_reporting_errors

    args = build_parser().parse_args(argv)
    return run_reporting_errors(f"bench {args.command}", COMMANDS[args.command], args)


if __name__ == "__main__":
    if not __package__:  # run as a script: the relative imports above need the package
        from benchmarks.bench import main
    sys.exit(main())
