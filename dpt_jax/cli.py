"""The `dpt-jax` command line."""

from __future__ import annotations

import argparse
import sys


def _windows(text: str | None):
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 12,12,12,6; got {text!r}")
    return sizes


def cmd_convert(args) -> int:
    from flax import traverse_util

    from .convert import midas

    conversion = midas.convert_checkpoint(args.src, args.pretrained_window_sizes)
    config = conversion.config
    count = sum(a.size for a in traverse_util.flatten_dict(conversion.params).values())
    midas.write_converted(args.output, config, conversion.params)
    print(f"variant:    {config.name} ({config.family})")
    print(f"parameters: {count:,}")
    if config.family == "swinv2":
        print(f"pretrained window sizes: {config.encoder.pretrained_window_sizes}")
    print(f"skipped:    {len(conversion.skipped)} keys the original forward does not use")
    for k in conversion.skipped if args.verbose else []:
        print(f"  {k}")
    print(f"wrote       {args.output}")
    return 0


def cmd_info(args) -> int:
    from . import load

    from . import hub

    model = load(hub.resolve(args.model), pretrained_window_sizes=args.pretrained_window_sizes)
    c = model.config
    h, w = c.native_size
    print(f"model:      {c.name} ({c.family})")
    print(f"source:     {model.source}")
    print(f"parameters: {model.num_params:,}")
    print(f"input:      native {h}x{w} (HxW), sides multiples of {c.input_multiple}, "
          f"{'keeps' if c.keep_aspect_ratio else 'ignores'} the aspect ratio by default")
    print(f"config:     {c.to_json()}")
    return 0


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def expand_inputs(args: list[str]) -> list[str]:
    """Files as given, folders as the pictures directly inside them (sorted), globs expanded (sorted)."""
    import glob
    from pathlib import Path

    out = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif not p.exists() and glob.has_magic(a):
            out += sorted(glob.glob(a, recursive=True)) or [a]  # a glob matching nothing is reported as missing
        else:
            out.append(a)
    return out


def output_paths(inputs: list[str], outdir, suffix: str) -> list:
    """OUTDIR/<stem><suffix> for each input; a stem seen before gets -2, -3, ... appended."""
    from pathlib import Path

    seen: dict[str, int] = {}
    paths = []
    for name in inputs:
        stem = Path(name).stem
        seen[stem] = seen.get(stem, 0) + 1
        paths.append(Path(outdir) / (f"{stem}{suffix}" if seen[stem] == 1 else f"{stem}-{seen[stem]}{suffix}"))
    return paths


def cmd_predict(args) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from . import hub, load, output, pipeline

    inputs = expand_inputs(args.inputs)
    if not inputs:
        raise ValueError("no input pictures found")
    model = load(hub.resolve(args.model), dtype=args.dtype)
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    targets = output_paths(inputs, outdir, output.FORMATS[args.format])
    resolved_inputs = {Path(i).resolve() for i in inputs}
    if clash := [str(t) for t in targets if t.resolve() in resolved_inputs]:
        raise ValueError(f"refusing to overwrite input pictures with outputs: {', '.join(clash)}")
    where = {name: t for name, t in zip(inputs, targets)}
    failed = []
    bar = tqdm(total=len(inputs), unit="img", disable=args.no_progress or not sys.stderr.isatty())

    def on_result(r: pipeline.Result):
        if r.error is None:
            try:
                output.write_depth(where[r.name], r.depth, args.format)
            except (OSError, ValueError) as e:
                r.error = f"cannot write {where[r.name]}: {e}"
        if r.error is not None:
            failed.append(r)
            bar.write(f"{r.name}: {r.error}", file=sys.stderr)
        bar.update(1)

    pipeline.run(model, inputs, batch_size=args.batch_size, keep_aspect_ratio=args.keep_aspect_ratio,
                 on_result=on_result)
    bar.close()
    done = len(inputs) - len(failed)
    print(f"{done} depth map{'s' if done != 1 else ''} written to {outdir}"
          + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def cmd_download(args) -> int:
    from . import hub

    path = hub.download(args.name, progress=not args.no_progress)
    print(path)
    return 0


def cmd_export(args) -> int:
    from . import export, hub, load

    model = load(hub.resolve(args.model), pretrained_window_sizes=args.pretrained_window_sizes)
    if args.with_preprocessing:
        spec = export.export(model, args.output, size=args.size, batch=args.batch, dtype=args.dtype,
                             with_preprocessing=True, picture_size=args.picture_size or args.size)
    elif args.picture_size:
        raise ValueError("--picture-size applies only with --with-preprocessing")
    else:
        spec = export.export(model, args.output, size=args.size, batch=args.batch, dtype=args.dtype)
    print(f"wrote      {args.output}: {model.config.name}")
    print(f"program:   {spec.describe()}")
    if not args.no_verify:
        err = export.verify(model, args.output, spec)
        print(f"verified:  max|exported - dpt-jax| / max|dpt-jax| = {err:.1e} on a random input")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt-jax", description="MiDaS v3.1 DPT depth models in JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an original MiDaS checkpoint to a dpt-jax safetensors file")
    p.add_argument("src", help="original .pt or .safetensors checkpoint")
    p.add_argument("-o", "--output", required=True, help="converted .safetensors file to write")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D",
                   help="SwinV2 only: override the pretrained window sizes (not stored in checkpoints)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the skipped keys")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a model's config, parameter count and input size")
    p.add_argument("model", help="checkpoint path (original or converted)")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="write depth maps for pictures")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="picture files, folders or globs")
    p.add_argument("-m", "--model", default=None,
                   help="checkpoint path or official name (default: the smallest, dpt_swin2_tiny_256)")
    p.add_argument("-o", "--output", default="depth", metavar="OUTDIR", help="output folder (default: ./depth)")
    p.add_argument("--format", choices=["color", "png16", "npy"], default="color",
                   help="color: colormapped PNG; png16: 16-bit PNG of the normalized inverse depth; "
                        "npy: raw float32 inverse depth at the picture's size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--keep-aspect-ratio", action=argparse.BooleanOptionalAction, default=None,
                   help="resize keeping the aspect ratio (default: as MiDaS, on for BEiT, off for SwinV2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal anyway)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("download", help="fetch an official MiDaS v3.1 checkpoint into the cache and check it")
    p.add_argument("name", help="dpt_beit_large_512, dpt_beit_large_384, dpt_beit_base_384, dpt_swin2_large_384, "
                                "dpt_swin2_base_384 or dpt_swin2_tiny_256 (the dpt_ prefix is optional)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("export", help="write a model as a StableHLO (.stablehlo) or ONNX (.onnx) program")
    p.add_argument("model", help="checkpoint path (original or converted) or official name")
    p.add_argument("-o", "--output", required=True, help="file to write: NAME.stablehlo or NAME.onnx")
    p.add_argument("--size", metavar="HxW", help="network input size, sides multiples of 16 (BEiT) or 32 (SwinV2); "
                   "with --with-preprocessing the default is MiDaS's size for the picture size")
    p.add_argument("--batch", default="dynamic", help="batch size, or 'dynamic' (default) for any batch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16 matmuls (StableHLO only); float32 pins full float32 precision")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="take uint8 RGB pictures of one size (--picture-size, default --size) and return depth at "
                        "that size, with MiDaS's resize and normalisation inside")
    p.add_argument("--picture-size", metavar="HxW", help="picture size taken with --with-preprocessing")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the written file against dpt-jax on a random input")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="benchmark against PyTorch (see benchmarks/README.md)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: __import__("dpt_jax.bench", fromlist=["main"]).main(args.bench_args))
    return parser


def run_reporting_errors(command: str, fn, *args) -> int:
    """fn(*args), with the errors a user can cause turned into one line on stderr and an exit status."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError, OSError) as e:  # CheckpointError and ImageError are ValueErrors
        print(f"dpt-jax {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dpt-jax {command}: interrupted", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
