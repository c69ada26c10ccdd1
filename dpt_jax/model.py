"""The loaded model: a thin runner around the pure `dpt.forward`.

    DepthModel     config + params on devices + jit(forward) + predict()
    load(source)   any checkpoint source (checkpoint.load_checkpoint) -> DepthModel
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import pipeline
from .checkpoint import count_params, load_checkpoint, write_converted
from .config import DPTConfig
from .dpt import SKY_MASK_FROM, cast_params, forward
from .errors import ImageError
from .layers import COMPUTE_DTYPES


@dataclass
class DepthModel:
    """A DPT depth model ready to run.

    `apply(images)` maps normalized float images (B, H, W, 3), NHWC (the original's forward
    input, transposed), to depth (B, H, W): relative inverse depth, or metres for a metric model
    (`config.is_metric`). It is jit-compiled once per input shape.
    """

    config: DPTConfig
    params: dict
    dtype: str = "float32"
    source: str | None = None
    devices: Sequence[jax.Device] | None = None  # default: every local device; a batch is split across them
    _apply: object = field(init=False, repr=False)

    def __post_init__(self):
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {self.dtype!r}")
        devices = list(self.devices or jax.local_devices())
        self._mesh = Mesh(np.array(devices), ("batch",))
        self._batch_sharding = NamedSharding(self._mesh, PartitionSpec("batch"))
        self.params = jax.device_put(cast_params(self.params), NamedSharding(self._mesh, PartitionSpec()))
        config, dtype = self.config, self.dtype
        self._apply = jax.jit(lambda params, images: forward(config, params, images, dtype),
                              out_shardings=self._batch_sharding)

    @property
    def num_devices(self) -> int:
        return self._mesh.devices.size

    @property
    def num_params(self) -> int:
        return count_params(self.params)

    def apply(self, images, *, program=None) -> jax.Array:
        """Depth of normalized images (B, H, W, 3), split across the devices (`program`: another jitted
        function of (params, images), e.g. the sky branch's)."""
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
        depth = (program or self._apply)(self.params, jax.device_put(images, self._batch_sharding))
        return depth[:n] if pad else depth

    def sky_score(self) -> "SkyScore":
        """The model's sky branch as a model of its own (`apply` gives the sky score); models with one only."""
        if not self.config.sky_head:
            raise ValueError(f"{self.config.name} has no sky output")
        return SkyScore(self)

    def predict(self, images, *, batch_size: int = 4, keep_aspect_ratio: bool | None = None, size=None,
                bucket: bool = False, output: str = "array", focal: float | None = None, fov: float | None = None):
        """Depth for pictures, each at its own size, through the original's preprocessing.

        What the numbers are: relative inverse depth (larger is nearer, unknown scale and shift)
        for MiDaS and relative Depth Anything models; depth in metres for metric Depth Anything
        models (`config.is_metric`). Pre- and postprocessing follow the config: MiDaS run.py, or
        Depth Anything's image2tensor / infer_image (lower bound 518, ImageNet mean/std).

        `images`: one picture, or several (a list, an (n, h, w, 3) array, any iterable such as a
        generator); a picture is a file path, a PIL image or an (h, w, 3) array (uint8, uint16, or
        float in [0, 1]; grayscale and RGBA are converted).
        Returns one result per picture (a list for several); with `output` a tuple of kinds, each
        result is a tuple of them (`output=("array", "pil")`: the raw depth and its picture).
        A picture that cannot be used raises ImageError naming it; `pipeline.run` is the batch form that
        reports failures and goes on.
        `output`: "array" (float32 (h, w) depth as above), "pil" (16-bit grayscale PIL image, mode
        I;16, as `-f png16` writes it: scaled to its own range, or metres x 256 for metric models) or
        "color" (RGB PIL image, `dpt_jax.output.colorize`, near bright).
        `size`: network input target instead of the native size (an int as MiDaS's --height, or
        (H, W)); `keep_aspect_ratio`: default as the original preprocessing (`config.keep_aspect_ratio`);
        `bucket`: see `pipeline.run`.
        "sky" (models with a sky branch, Depth Anything 3 monocular): the bool (h, w) sky mask, the
        original's `sky >= 0.5` on the score resized to the picture.
        `focal` (pixels) / `fov` (degrees): the camera, for Depth Anything 3 metric (see `pipeline.run`).
        """
        from . import output as _output

        kinds = (output,) if isinstance(output, str) else tuple(output)
        if not kinds or any(k not in ("array", "pil", "color", "sky") for k in kinds):
            raise ValueError(f"output must be 'array', 'pil', 'color' or 'sky', or a tuple of them; got {output!r}")
        if "sky" in kinds and not self.config.sky_head:
            raise ValueError(f"output 'sky': {self.config.name} has no sky output")
        single, items = _as_items(images)
        options = dict(batch_size=batch_size, keep_aspect_ratio=keep_aspect_ratio, size=size, bucket=bucket)
        results = pipeline.run(self, items, focal=focal, fov=fov, **options) if kinds != ("sky",) else None
        skies = pipeline.run(self.sky_score(), items, **options) if "sky" in kinds else None
        for r in (results or []) + (skies or []):
            if r.error is not None:
                raise ImageError(r.name, r.error)

        def shaped(i, kind):
            if kind == "sky":
                return skies[i].depth >= SKY_MASK_FROM
            depth = results[i].depth
            if kind == "array":
                return depth
            mode = "gray16" if kind == "pil" else "color"  # as the png16 / color files hold them
            return _output.to_pil(depth, mode, metric=self.config.is_metric)

        out = [shaped(i, kinds[0]) if isinstance(output, str) else tuple(shaped(i, k) for k in kinds)
               for i in range(len(results or skies))]
        return out[0] if single else out

    def save(self, path) -> None:
        """Write a converted safetensors file (float32 parameters, config in the metadata)."""
        write_converted(path, self.config, jax.device_get(self.params))

    def save_pretrained(self, directory, *, overwrite: bool = False):
        """Write a Hugging Face transformers folder (config.json + model.safetensors) that
        `transformers.AutoModelForDepthEstimation.from_pretrained(directory)` reads; see convert/hf.py.

        A non-empty folder is refused unless it is a previous export or `overwrite` is set.
        """
        from .convert import hf

        return hf.write(directory, self.config, jax.device_get(self.params), overwrite=overwrite)


class SkyScore:
    """A model's sky branch, run as the model runs (what `pipeline.run` asks of a model: config, apply,
    num_devices): `apply` gives the sky score (B, H, W) >= 0, the original calls sky from SKY_MASK_FROM."""

    def __init__(self, model: DepthModel):
        self.model = model
        self.config = model.config.replace(focal_metric_divisor=0.0)  # a score, never turned into metres
        config, dtype = model.config, model.dtype
        self._apply = jax.jit(lambda params, images: forward(config, params, images, dtype, outputs=True)["sky"],
                              out_shardings=model._batch_sharding)

    @property
    def num_devices(self) -> int:
        return self.model.num_devices

    def apply(self, images) -> jax.Array:
        return self.model.apply(images, program=self._apply)


def _as_items(images) -> tuple[bool, list]:
    """(one picture?, the pictures): a path, PIL image or (h, w, 3) array is one; a list, tuple, (n, h, w, 3)
    array or any other iterable (a generator) is several."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "getbands"):  # a path, a PIL image
        return True, [images]
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        array = np.asarray(images)
        return (True, [array]) if array.ndim != 4 else (False, list(array))
    if isinstance(images, (list, tuple)):
        return False, list(images)
    try:
        return False, list(iter(images))
    except TypeError:
        return True, [images]  # pipeline.run names what is wrong with it


def load(source=None, *, dtype: str = "float32", variant: str | None = None, max_depth: float | None = None,
         devices=None, progress: bool = True, **options) -> DepthModel:
    """Load a model: a file or folder, or a name that is downloaded and cached on first use.

    `source`: an original MiDaS v3.1 / Depth Anything checkpoint (.pt/.pth or .safetensors), a
    dpt-jax converted file, a Hugging Face transformers folder (config.json + model.safetensors),
    a released model's name (see `hub.REGISTRY`; None: `hub.DEFAULT_MODEL`), "<name>_hf" (its
    transformers-layout repository) or a Hugging Face Hub repo id ("Intel/dpt-swinv2-tiny-256").
    `variant`: which model the file holds, where its keys cannot tell (Depth Anything V1/V2,
    relative/metric, Hypersim/VKITTI: "da2_vits", "da2_metric_hypersim_vitl", "da1_vitb", ...);
    the official release file names are recognised. Where the keys can tell, it must match them.
    `max_depth`: metres, overrides a metric model's (20 Hypersim, 80 VKITTI).
    `options`: what a family's files do not store (`registry.options()`, e.g.
    `pretrained_window_sizes` for SwinV2 checkpoints of no released architecture).
    Leaves JAX's configuration alone: see `compile_cache.enable` for the persistent compilation cache.
    """
    checkpoint = load_checkpoint(source, variant=variant, max_depth=max_depth, progress=progress, **options)
    return DepthModel(checkpoint.config, checkpoint.params, dtype=dtype, source=checkpoint.path, devices=devices)
