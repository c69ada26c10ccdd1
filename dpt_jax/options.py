"""The choices a checkpoint cannot tell, as command-line flags: --variant, --max-depth and each family's options.

The flags are derived from `registry.options()` (each family's `Option`s), so a family's option
is a flag of every command that loads a model, and a `load` keyword, without naming it here.
"""

from __future__ import annotations

import argparse

from . import registry


def add_model_options(parser) -> None:
    """--variant, --max-depth, and one flag per family option."""
    parser.add_argument("--variant", metavar="NAME",
                        help="which model the file holds, where its keys cannot tell (Depth Anything: da2_vits, "
                             "da2_metric_hypersim_vitl, da1_vitb, ...; official release file names are recognised); "
                             "where the keys can tell, it must match them")
    parser.add_argument("--max-depth", type=float, metavar="METRES",
                        help="metric models: override the largest depth (Depth Anything: 20 Hypersim, 80 VKITTI)")
    for option in registry.options().values():
        parser.add_argument(f"--{option.name.replace('_', '-')}", type=_parsed(option), metavar=option.metavar,
                            help=option.help)


def _parsed(option):
    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = option.name  # argparse names the type in its messages
    return parse


def model_options(args) -> dict:
    """The `load` keywords of the parsed flags that were given."""
    names = ["variant", "max_depth", *registry.options()]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
