"""The loaded model: a thin runner around the pure `dpt.forward`.

    DepthModel     config + params on devices + jit(forward) + predict()
    load(source)   any checkpoint source (checkpoint.load_checkpoint) -> DepthModel
"""

from __future__ import annotations

import functools
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
from .dpt import SKY_MASK_FROM, call_params, cast_params, forward, forward_stream
from .errors import ImageError
from .layers import COMPUTE_DTYPES


@functools.lru_cache(maxsize=64)
def _program(config: DPTConfig, dtype: str, kind: str = "pictures", out_shardings=None):
    """jit of one config's forward on pictures, on whole clips ("clip") or one stream step ("stream"): models of
    one config (loaded twice, from two files) share compiled programs."""
    if kind == "clip":  # frames attend to each other: clips are not split across devices
        return jax.jit(lambda params, images, frames: forward(config, params, images, dtype, frames=frames),
                       static_argnums=2)
    if kind == "stream":
        return jax.jit(lambda params, image, context: forward_stream(config, params, image, context, dtype))
    return jax.jit(lambda params, images, prompt: forward(config, params, images, dtype, prompt=prompt),
                   out_shardings=out_shardings)


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
        self._call_params = call_params(self.config, self.params, self.dtype)  # what the programs read
        self._apply = _program(self.config, self.dtype, out_shardings=self._batch_sharding)
        self._apply_clip = _program(self.config, self.dtype, "clip")
        self._apply_stream = _program(self.config, self.dtype, "stream")

    @property
    def num_devices(self) -> int:
        return self._mesh.devices.size

    @property
    def num_params(self) -> int:
        return count_params(self.params)

    def apply(self, images, prompt=None, *, program=None) -> jax.Array:
        """Depth (B, H, W) of normalized images (B, H, W, 3), split across the devices; a prompted model also
        takes `prompt`, metric depth (B, h, w, 1) or one (h, w) map for every image
        (`prompt_input.checked_prompt` rules); `program`: another jitted function of (params, images),
        e.g. the sky branch's."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"apply takes normalized images of shape (B, H, W, 3); got {tuple(images.shape)}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"apply takes normalized float images; got dtype {images.dtype} "
                             "(use predict() for raw uint8 pictures)")
        self.config.check_input_size(*images.shape[1:3])
        n = images.shape[0]
        if (prompt is not None) != self.config.prompt:
            raise ValueError(f"{self.config.name} needs a depth prompt (prompt=)" if self.config.prompt
                             else f"{self.config.name} takes no depth prompt")
        if prompt is not None:
            prompt = jnp.asarray(prompt, jnp.float32)
            if prompt.ndim == 2:
                prompt = jnp.broadcast_to(prompt[None, :, :, None], (n, *prompt.shape, 1))  # (B, h, w, 1)
            if prompt.ndim != 4 or prompt.shape[0] != n or prompt.shape[-1] != 1:
                raise ValueError(f"prompt must be (h, w) or ({n}, h, w, 1); got {tuple(prompt.shape)}")
        pad = -n % self.num_devices  # the batch is split evenly across the devices
        if pad:
            images = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]), images.dtype)])
            if prompt is not None:  # padded images get a copy of the last prompt (a constant one would give NaN)
                prompt = jnp.concatenate([prompt, jnp.repeat(prompt[-1:], pad, axis=0)])
        if prompt is not None:
            prompt = jax.device_put(prompt, self._batch_sharding)
        images = jax.device_put(images, self._batch_sharding)
        params = self._call_params
        depth = program(params, images) if program is not None else self._apply(params, images, prompt)
        return depth[:n] if pad else depth

    def sky_score(self) -> "SkyScore":
        """The model's sky branch as a model of its own (`apply` gives the sky score); models with one only."""
        if not self.config.sky_head:
            raise ValueError(f"{self.config.name} has no sky output")
        return SkyScore(self)

    def apply_clip(self, images, frames: int) -> jax.Array:
        """A temporal model on normalized (n * frames, H, W, 3), a clip's frames in a row -> (n * frames, H, W)."""
        if images.shape[0] % frames:
            raise ValueError(f"apply_clip takes whole clips of {frames} frames; got {images.shape[0]} images")
        self.config.check_input_size(*images.shape[1:3])
        return self._apply_clip(self._call_params, images, frames)

    def apply_stream(self, image, context=None):
        """A temporal model on one normalized frame (1, H, W, 3) of a stream: (depth (1, H, W), its states); see
        `dpt.forward_stream` for `context` (the states of earlier frames)."""
        self.config.check_input_size(*image.shape[1:3])
        return self._apply_stream(self.params, image, context)

    def predict_video(self, frames, *, input_size: int | None = None, streaming: bool = False,
                      batch_size: int = 4) -> np.ndarray:
        """Depth (n, h, w) float32 of a video: `frames` an (n, h, w, 3) uint8 RGB array, any iterable of
        such frames, or a video file's path.

        Temporal models (Video Depth Anything) as the original infer_video_depth: windows of 32 frames
        aligned to each other (`video_depth.window_depth`), or with `streaming` one frame at a time as the
        original streaming class (`video_depth.DepthStream`); `input_size`: the lower bound of the network
        input (default the native 518; the original's `--input_size`). Picture models: each frame alone,
        as `predict` (`batch_size` frames a call). Values: relative inverse depth, or metres (`config.is_metric`).
        """
        from . import video_depth
        from .video import frames_of

        source = frames_of(frames) if isinstance(frames, (str, os.PathLike)) else frames
        if isinstance(source, np.ndarray) and (source.ndim != 4 or source.shape[-1] != 3):
            raise ValueError(f"predict_video takes frames (n, h, w, 3); got an array of shape {source.shape}")
        if not self.config.is_temporal:
            if input_size is not None or streaming:
                raise ValueError(f"input_size and streaming apply to temporal models; {self.config.name} "
                                 "runs each frame alone")
            depth = self.predict(list(source), batch_size=batch_size)
        elif streaming:
            stream = video_depth.DepthStream(self, input_size=input_size)
            depth = [stream(f) for f in source]
        else:
            depth = [d for _, chunk in video_depth.window_depth(self, source, input_size=input_size) for d in chunk]
        if not depth:
            raise ValueError("predict_video was given no frame")
        return np.stack(depth).astype(np.float32)

    def predict(self, images, *, batch_size: int = 4, keep_aspect_ratio: bool | None = None, size=None,
                bucket: bool = False, output: str = "array", prompt_depth=None, focal: float | None = None,
                fov: float | None = None):
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
        `prompt_depth`: for a prompted model (Prompt Depth Anything, `config.prompt`) the metric depth
        prompt of the picture (a path: 16-bit PNG in millimetres, .npy / .npz in metres; or an (h, w)
        array in metres), a list of them for several pictures; the depth is then in metres, between the
        prompt's min and max. A prompt that cannot be used raises PromptError naming it.
        "sky" (models with a sky branch, Depth Anything 3 monocular): the bool (h, w) sky mask, the
        original's `sky >= 0.5` on the score resized to the picture.
        `focal` (pixels) / `fov` (degrees): the camera, for Depth Anything 3 metric (see `pipeline.run`).
        """
        from . import output as _output

        if self.config.is_temporal:
            raise ValueError(f"{self.config.name} is a video model (its frames attend to each other): give it "
                             "a video or frames with predict_video")
        kinds = (output,) if isinstance(output, str) else tuple(output)
        if not kinds or any(k not in ("array", "pil", "color", "sky") for k in kinds):
            raise ValueError(f"output must be 'array', 'pil', 'color' or 'sky', or a tuple of them; got {output!r}")
        if "sky" in kinds and not self.config.sky_head:
            raise ValueError(f"output 'sky': {self.config.name} has no sky output")
        single, items = _as_items(images)
        options = dict(batch_size=batch_size, keep_aspect_ratio=keep_aspect_ratio, size=size, bucket=bucket)
        if self.config.prompt or prompt_depth is not None:
            results = self._predict_prompted(single, items, prompt_depth, options)
        else:
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

    def _predict_prompted(self, single: bool, items: list, prompt_depth, options: dict) -> list:
        """pipeline.run for each picture with its own prompt (`PromptedModel`), after every prompt is checked."""
        from .errors import PromptError
        from .pictures import open_source
        from .prompt_input import check_fits, checked_prompt, read_prompt

        c = self.config
        if not c.prompt:
            raise PromptError("prompt_depth", f"{c.name} takes no depth prompt (only Prompt Depth Anything models do)")
        if prompt_depth is None:
            raise PromptError("prompt_depth", f"{c.name} needs the picture's metric depth prompt: "
                                              "predict(picture, prompt_depth=...)")
        prompts = [prompt_depth] if single else list(prompt_depth) if isinstance(prompt_depth, (list, tuple)) else None
        if prompts is None or len(prompts) != len(items):
            raise PromptError("prompt_depth", f"give one depth prompt per picture: a list of {len(items)}")
        results = []
        for i, (item, p) in enumerate(zip(items, prompts)):
            name = str(p) if isinstance(p, (str, os.PathLike)) else "prompt_depth" + ("" if single else f"[{i}]")
            prompt = read_prompt(p) if isinstance(p, (str, os.PathLike)) else checked_prompt(p, name)
            source = open_source(item, i)
            check_fits(prompt, source.size, name)
            result = pipeline.run(PromptedModel(self, prompt), [source], **options)[0]
            result.index = i
            results.append(result)
        return results

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


@dataclass
class PromptedModel:
    """A prompted DepthModel with the depth prompt of one picture: what `pipeline.run` takes as a model."""

    model: DepthModel
    prompt: np.ndarray  # (h, w) metres, checked (prompt_input.checked_prompt)

    @property
    def config(self) -> DPTConfig:
        return self.model.config

    @property
    def num_devices(self) -> int:
        return self.model.num_devices

    def apply(self, images) -> jax.Array:
        return self.model.apply(images, self.prompt)


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
