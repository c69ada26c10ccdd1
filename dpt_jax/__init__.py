"""dpt-jax: DPT depth models (MiDaS v3.1 BEiT and SwinV2 encoders) in JAX/Flax."""

import os as _os

# The converter's source is the top-level folder convert/, installed as dpt_jax.convert (see the
# README). When Python imports this package straight from a source checkout (e.g. `python -c ...`
# run in the repository root, which puts the checkout ahead of the installed copy), let
# dpt_jax.convert resolve to that folder too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "convert")) and _os.path.isfile(
    _os.path.join(_checkout, "convert", "torch_zip.py")
):
    __path__.append(_checkout)

from .beit import BeitConfig
from .config import DPTConfig
from .errors import CheckpointError, DptJaxError
from .model import DepthModel, forward, load
from .registry import FAMILIES, PRESETS, get_config
from .swinv2 import SwinV2Config

__all__ = ["FAMILIES", "PRESETS", "BeitConfig", "CheckpointError", "DPTConfig", "DepthModel", "SwinV2Config",
           "forward", "get_config", "load"]
__version__ = "0.1.0"  # the package version: pyproject.toml reads it from here
