"""dpt-jax: MiDaS v3.1 DPT depth models (BEiT and SwinV2 encoders) in JAX/Flax."""

from .config import PRESETS, BeitConfig, DPTConfig, SwinV2Config, get_config
from .convert.torch_zip import CheckpointError
from .model import DepthModel, load

__all__ = ["PRESETS", "BeitConfig", "CheckpointError", "DPTConfig", "DepthModel", "SwinV2Config", "get_config", "load"]
__version__ = "0.1.0"
