"""The loaded model: a config, its parameters and the compiled forward pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from .config import DPTConfig
from .dpt import DPT
from .convert import midas
from .convert.torch_zip import CheckpointError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass
class DepthModel:
    """A DPT depth model ready to run.

    `apply(images)` maps normalized float images (B, H, W, 3), NHWC (the original's forward
    input, transposed), to relative inverse depth (B, H, W). It is jit-compiled once per input
    shape.
    """

    config: DPTConfig
    params: dict
    dtype: str = "float32"
    source: str | None = None
    _apply: object = field(init=False, repr=False)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        compute = DTYPES[self.dtype]
        module = DPT(self.config)
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, compute), self.params)

        def forward(params, images):
            return module.apply({"params": params}, images.astype(compute)).astype(jnp.float32)

        self._apply = jax.jit(forward)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(self.params))

    def apply(self, images) -> jax.Array:
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"apply takes normalized images of shape (B, H, W, 3); got {tuple(images.shape)}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"apply takes normalized float images; got dtype {images.dtype} "
                             "(use predict() for raw uint8 pictures)")
        self.config.check_input_size(*images.shape[1:3])
        return self._apply(self.params, images)

    def save(self, path) -> None:
        """Write a converted safetensors file (float32 parameters, config in the metadata)."""
        params32 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), self.params)
        midas.write_converted(path, self.config, params32)


def load(path, *, dtype: str = "float32", pretrained_window_sizes=None) -> DepthModel:
    """Load an original MiDaS v3.1 checkpoint (.pt or .safetensors) or a dpt-jax converted file.

    `pretrained_window_sizes` overrides the SwinV2 value that checkpoints do not store (the
    three official SwinV2 checkpoints are recognised and need no override).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else "not a regular file")
    if midas.is_converted(path):
        config, params = midas.read_converted(path, pretrained_window_sizes)
    else:
        conversion = midas.convert_checkpoint(path, pretrained_window_sizes)
        config, params = conversion.config, conversion.params
    return DepthModel(config, params, dtype=dtype, source=path)
