"""The loaded model: a config, its parameters and the compiled forward pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import pipeline
from .config import DPTConfig
from .dpt import DPT
from .layers import matmul_params, mixed_precision
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
    devices: Sequence[jax.Device] | None = None  # default: every local device; a batch is split across them
    _apply: object = field(init=False, repr=False)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        compute = DTYPES[self.dtype]
        module = DPT(self.config)
        devices = list(self.devices or jax.local_devices())
        self._mesh = Mesh(np.array(devices), ("batch",))
        replicated = NamedSharding(self._mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self._mesh, PartitionSpec("batch"))
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), self.params)
        if compute != jnp.float32:
            params = matmul_params(params, compute)
        self.params = jax.device_put(params, replicated)

        def forward(params, images):
            images = images.astype(jnp.float32)
            if compute == jnp.float32:
                # float32 means float32: no TF32/bf16 passes on accelerators (they cost ~1e-3 relative error).
                with jax.default_matmul_precision("highest"):
                    return module.apply({"params": params}, images)
            with mixed_precision(compute):  # matmuls in bfloat16, everything else float32
                return module.apply({"params": params}, images)

        self._apply = jax.jit(forward, out_shardings=self._batch_sharding)

    @property
    def num_devices(self) -> int:
        return self._mesh.devices.size

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
        n = images.shape[0]
        pad = -n % self.num_devices  # the batch is split evenly across the devices
        if pad:
            images = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)])
        depth = self._apply(self.params, jax.device_put(images, self._batch_sharding))
        return depth[:n] if pad else depth

    def predict(self, images, *, batch_size: int = 4, keep_aspect_ratio: bool | None = None, size=None,
                bucket: bool = False, output: str = "array"):
        """Inverse depth for pictures, each at its own size, through MiDaS's preprocessing.

        `images`: one picture or a list of them; a picture is a file path, a PIL image or an
        (h, w, 3) array (uint8, uint16, or float in [0, 1]; grayscale and RGBA are converted).
        Returns one result per picture (a list for a list). A picture that cannot be used raises
        ImageError naming it; `pipeline.run` is the batch form that reports failures and goes on.
        `output`: "array" (float32 (h, w) inverse depth), "pil" (16-bit grayscale PIL image, mode
        I;16, scaled to its own range) or "color" (RGB PIL image, `dpt_jax.output.colorize`).
        `size`: network input target instead of the native size (an int as MiDaS's --height, or
        (H, W)); `keep_aspect_ratio`: default as MiDaS (True for BEiT, False for SwinV2);
        `bucket`: see `pipeline.run`.
        """
        from . import output as _output

        if output not in ("array", "pil", "color"):
            raise ValueError(f"output must be 'array', 'pil' or 'color'; got {output!r}")
        single = not isinstance(images, (list, tuple))
        results = pipeline.run(self, [images] if single else images, batch_size=batch_size,
                               keep_aspect_ratio=keep_aspect_ratio, size=size, bucket=bucket)
        for r in results:
            if r.error is not None:
                raise pipeline.ImageError(r.name, r.error)
        depths = [r.depth for r in results]
        if output != "array":
            depths = [_output.to_pil(d, "gray16" if output == "pil" else "color") for d in depths]
        return depths[0] if single else depths

    def save(self, path) -> None:
        """Write a converted safetensors file (float32 parameters, config in the metadata)."""
        params32 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), self.params)
        midas.write_converted(path, self.config, params32)


def configure_compilation_cache(directory=None) -> str | None:
    """Turn on JAX's persistent compilation cache, so a second process does not compile again.

    `directory`: where to keep it; default `$DPT_JAX_COMPILATION_CACHE`, else `<cache dir>/xla`
    (see `hub.cache_dir`). "off" (as argument or variable) leaves JAX as it is, and so does a
    cache directory the user configured in JAX already. Returns the directory in use.
    """
    from . import hub

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    directory = directory or os.environ.get("DPT_JAX_COMPILATION_CACHE") or str(hub.cache_dir() / "xla")
    if str(directory).lower() == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return str(directory)


def load(path, *, dtype: str = "float32", pretrained_window_sizes=None, devices=None,
         compilation_cache=None) -> DepthModel:
    """Load an original MiDaS v3.1 checkpoint (.pt or .safetensors) or a dpt-jax converted file.

    `pretrained_window_sizes` overrides the SwinV2 value that checkpoints do not store (the
    three official SwinV2 checkpoints are recognised and need no override).
    `compilation_cache`: directory of the persistent compilation cache, or "off"
    (see `configure_compilation_cache`).
    """
    configure_compilation_cache(compilation_cache)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else "not a regular file")
    if midas.is_converted(path):
        config, params = midas.read_converted(path, pretrained_window_sizes)
    else:
        conversion = midas.convert_checkpoint(path, pretrained_window_sizes)
        config, params = conversion.config, conversion.params
    return DepthModel(config, params, dtype=dtype, source=path, devices=devices)
