#!/usr/bin/env python
"""Run the standard dpt-jax benchmarks and write the results to benchmarks/results/<machine>-<date>.md/.json.

    python benchmarks/run_benchmarks.py                  # the speed table (CPU: float32, batch 1 and 4)
    python benchmarks/run_benchmarks.py --startup        # + cold vs warm-cache time to first result
    python benchmarks/run_benchmarks.py --convert-memory # + converter peak RSS on synthesized checkpoints
    python benchmarks/run_benchmarks.py --all            # all three
    python benchmarks/run_benchmarks.py --quick          # mini configs, 1 repeat: checks the pipeline only
    python benchmarks/run_benchmarks.py --out DIR        # results elsewhere (--no-write: print only)

This script only fixes the standard set of models, sizes and batches; benchmarks/bench.py runs
each piece on its own. See benchmarks/README.md for what each column means. Run it on a quiet
machine: every number is a wall-clock time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks import bench  # noqa: E402

# (model @ input size) of the standard table: each at its native size.
STANDARD_MODELS = ["swin2_tiny_256@256", "beit_base_384@384", "beit_large_512@512"]
STANDARD_MANIFESTS = ["dpt_swin2_tiny_256", "dpt_beit_base_384", "dpt_beit_large_512"]
QUICK_MANIFEST = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mini_beit.json"


def quick_models() -> list[str]:
    """Every family's toy configs: the quick run exercises each registered family."""
    from dpt_jax.registry import MINI_CONFIGS

    return list(MINI_CONFIGS)


def _stem(args) -> str:
    """The one <machine>-<date>[-N] every part of this run writes to: a new one unless --append."""
    import datetime

    from benchmarks.measure import machine_info
    from benchmarks.report import result_paths

    stem = f"{machine_info()['machine']}-{datetime.date.today().isoformat()}"
    return result_paths(args.out, stem, args.append)[0].stem


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=",".join(STANDARD_MODELS), help="comma-separated MODEL@SIZE list")
    p.add_argument("--batch", default="1,4", help="comma-separated batch sizes (default 1,4)")
    p.add_argument("--dtype", default="float32", help="float32 and/or bfloat16, comma-separated (default float32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one (default 1)")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--startup", action="store_true",
                   help="also: fresh-process time to first result, cold vs warm cache")
    p.add_argument("--convert-memory", action="store_true", help="also: converter peak RSS on synthesized checkpoints")
    p.add_argument("--manifests", metavar="DIR", help="folder of the checkpoint manifests for --convert-memory "
                                                      "(default: this repository's tests/fixtures/manifests)")
    p.add_argument("--all", action="store_true", help="the table, --startup and --convert-memory")
    p.add_argument("--skip-table", action="store_true", help="only the extra measurements asked for")
    p.add_argument("--quick", action="store_true", help="mini configs, 1 repeat (pipeline check, not a benchmark)")
    p.add_argument("--out", default=str(bench.RESULTS_DIR), metavar="DIR",
                   help="results folder (default: benchmarks/results next to this script); a run never changes "
                        "existing files there unless --append")
    p.add_argument("--append", action="store_true", help="add to existing <machine>-<date>.md/.json")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    models = quick_models() if args.quick else [m for m in args.models.split(",") if m]
    out = ["--no-write"] if args.no_write else ["--out", args.out, "--stem", _stem(args), "--append"]
    status = 0
    if not args.skip_table:
        run = ["run", *models, "--batch", "1" if args.quick else args.batch, "--dtype", args.dtype,
               "--repeats", "1" if args.quick else str(args.repeats),
               "--warmup", "0" if args.quick else str(args.warmup),
               *(["--no-torch"] if args.no_torch else []), *out]
        status |= bench.main(run)
    if args.startup or args.all:
        status |= bench.main(["startup", *models, *out])
    if args.convert_memory or args.all:
        manifests = [str(QUICK_MANIFEST)] if args.quick else STANDARD_MANIFESTS
        given = ["--manifests", args.manifests] if args.manifests else []
        status |= bench.main(["convert-memory", *manifests, *given, *out])
    return status


if __name__ == "__main__":
    sys.exit(main())
