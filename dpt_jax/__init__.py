"""dpt-jax: the DPT depth models (MiDaS v3.1, Depth Anything V1/V2) in JAX/Flax.

    model = dpt_jax.load("da2_vits")          # a file, folder, released name or Hub repo
    depth = model.predict("photo.jpg")        # float32 (h, w) at the picture's size
"""

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

from .config import DPTConfig
from .dpt import forward
from .errors import CheckpointError, DptJaxError
from .model import DepthModel, load
from .registry import FAMILIES, PRESETS, get_config, register_family

__all__ = ["FAMILIES", "PRESETS", "CheckpointError", "DPTConfig", "DepthModel", "DptJaxError", "forward",
           "get_config", "load", "register_family"]
__version__ = "0.1.0"  # the package version: pyproject.toml reads it from here
