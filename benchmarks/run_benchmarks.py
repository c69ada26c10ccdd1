#!/usr/bin/env python
"""Run the standard dpt-jax benchmarks and append the results to benchmarks/results/<machine>-<date>.md/.json.

    python benchmarks/run_benchmarks.py                  # the speed table (CPU: float32, batch 1 and 4)
    python benchmarks/run_benchmarks.py --startup        # + cold vs warm-cache time to first result
    python benchmarks/run_benchmarks.py --convert-memory # + converter peak RSS on synthesized checkpoints
    python benchmarks/run_benchmarks.py --all            # all three
    python benchmarks/run_benchmarks.py --quick          # mini configs, 1 repeat: checks the pipeline only

Everything is done by `dpt_jax.bench` (also `dpt-jax bench ...`); this script only fixes the
standard set of models, sizes and batches. See benchmarks/README.md for what each column means.
Run it on a quiet machine: every number is a wall-clock time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpt_jax import bench

# (model @ input size) of the standard table: each at its native size.
STANDARD_MODELS = ["swin2_tiny_256@256", "beit_base_384@384", "beit_large_512@512"]
STANDARD_MANIFESTS = ["dpt_swin2_tiny_256", "dpt_beit_base_384", "dpt_beit_large_512"]
QUICK_MODELS = ["mini_swin2", "mini_beit"]
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=",".join(STANDARD_MODELS), help="comma-separated MODEL@SIZE list")
    p.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--dtype", default="float32", help="float32 and/or bfloat16, comma-separated (default float32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one (default 1)")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--startup", action="store_true", help="also: fresh-process time to first result, cold vs warm cache")
    p.add_argument("--convert-memory", action="store_true", help="also: converter peak RSS on synthesized checkpoints")
    p.add_argument("--all", action="store_true", help="the table, --startup and --convert-memory")
    p.add_argument("--skip-table", action="store_true", help="only the extra measurements asked for")
    p.add_argument("--quick", action="store_true", help="mini configs, 1 repeat (pipeline check, not a benchmark)")
    p.add_argument("--out", default=str(RESULTS), help=f"results folder (default {RESULTS})")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    models = QUICK_MODELS if args.quick else [m for m in args.models.split(",") if m]
    out = ["--no-write"] if args.no_write else ["--out", args.out]
    status = 0
    if not args.skip_table:
        run = ["run", *models, "--batch", "1" if args.quick else args.batch, "--dtype", args.dtype,
               "--repeats", "1" if args.quick else str(args.repeats), "--warmup", "0" if args.quick else str(args.warmup),
               *(["--no-torch"] if args.no_torch else []), *out]
        status |= bench.main(run)
    if args.startup or args.all:
        status |= bench.main(["startup", *models, *out])
    if args.convert_memory or args.all:
        manifests = [str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mini_beit.json")] \
            if args.quick else STANDARD_MANIFESTS
        status |= bench.main(["convert-memory", *manifests, *out])
    return status


if __name__ == "__main__":
    sys.exit(main())
