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
    from .convert import midas

    conversion = midas.convert_checkpoint(args.src, args.pretrained_window_sizes)
    config = conversion.config
    count = sum(a.size for a in _leaves(conversion.params))
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


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


def cmd_info(args) -> int:
    from . import load

    model = load(args.model, pretrained_window_sizes=args.pretrained_window_sizes)
    c = model.config
    h, w = c.native_size
    print(f"model:      {c.name} ({c.family})")
    print(f"source:     {model.source}")
    print(f"parameters: {model.num_params:,}")
    print(f"input:      native {h}x{w} (HxW), sides multiples of {c.input_multiple}, "
          f"{'keeps' if c.keep_aspect_ratio else 'ignores'} the aspect ratio by default")
    print(f"config:     {c.to_json()}")
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
    return parser


def main(argv=None) -> int:
    from .convert.torch_zip import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"dpt-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dpt-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
