"""Fine-tuning: the original training recipe on the user's pictures and depth, on every local device, resumable.

    Recipe                         the knobs, with the originals' values as defaults (validated, frozen)
    Trainer(config, params, r)     optimizer, jitted train step, evaluation: the pieces, for tests and scripts
    finetune(model, data, out)     the whole run: data -> steps -> validation -> Orbax checkpoints -> .safetensors

The recipe is Depth Anything V2's metric_depth/train.py: AdamW (betas 0.9, 0.999, weight decay 0.01), learning
rate 5e-6 for the encoder and 10x for the rest, decayed as lr * (1 - iters / total) ** 0.9 (set after each step,
so the first two steps both use the base rate), a random horizontal flip of the whole batch with probability 0.5,
and each picture resized to cover size x size (lower bound, aspect kept, sides multiples of the patch; picture
bicubic as cv2.INTER_CUBIC, depth and mask nearest) then cropped at random to size x size. Metric models learn
with SiLog on valid pixels within [min_depth, max_depth]; relative models (inverse depth) with the trimmed
scale-and-shift-invariant loss on 1 / depth (losses.py). Every random choice comes from (seed, micro-step), so a
resumed run draws exactly what an uninterrupted one would.

Temporal models (Video Depth Anything) learn on clips of consecutive frames (`clips`) with Video Depth Anything's
VideoDepthLoss (losses.video_depth_loss): one crop place and one flip for every frame of a clip. The original
publishes the loss (loss/loss.py) but no training script; the rest of the recipe is the one above.

`finetune(..., distributed=True)` runs one process per host (predict_files.start_distributed): a mesh over every
device of every process, each process preparing only its own rows of every micro-batch; XLA all-reduces the
gradients through the shardings, and every process computes the same updates (the same result as one process with
the same devices). Only process 0 writes the log and the outputs; every process takes part in the Orbax checkpoints,
which must be on a file system they share.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import losses
from .config import DPTConfig, bounded, checked_fields, choice, require
from .dpt import cast_params, forward
from .errors import ConfigError, DatasetError
from .resize import cubic_taps


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune; the defaults are Depth Anything V2 metric_depth/train.py's."""

    steps: int = bounded(1, 10**8, default=1000)  # optimizer updates
    batch_size: int = bounded(1, 4096, default=2)  # pictures per micro-batch (over all devices)
    accumulate: int = bounded(1, 1024, default=1)  # micro-batches per update (optax.MultiSteps)
    lr: float = bounded(0.0, 1.0, default=5e-6)  # the encoder's; the rest learns at lr * head_lr_factor
    head_lr_factor: float = bounded(0.0, 1e4, default=10.0)
    weight_decay: float = bounded(0.0, 10.0, default=0.01)
    beta1: float = bounded(0.0, 1.0, default=0.9)
    beta2: float = bounded(0.0, 1.0, default=0.999)
    power: float = bounded(0.0, 100.0, default=0.9)  # polynomial decay of the learning rate over the run
    size: int = bounded(1, 4096, default=518)  # training crop (square); a multiple of the model's input multiple
    flip: bool = True
    # auto: silog for metric models, ssi for relative ones, video (VideoDepthLoss) for temporal ones
    loss: str = choice("auto", "silog", "ssi", "video", default="auto")
    frames: int = bounded(0, 1024, default=0)  # temporal models: frames per clip (0: the model's window, 32)
    min_depth: float = bounded(0.0, 1e6, default=1e-3)  # metres: the valid ground truth
    max_depth: float = bounded(0.0, 1e6, default=0.0)  # metres; 0: the model's max_depth (relative: no cap)
    dtype: str = choice("float32", "bfloat16", default="float32")  # matrix products; master weights float32
    remat: bool = False  # recompute the encoder blocks' activations in the backward pass
    freeze_encoder: bool = False  # the encoder is not trained (Video Depth Anything's paper trains the head alone)
    seed: int = bounded(0, 2**31 - 1, default=0)
    val_every: int = bounded(0, 10**8, default=0)  # evaluate the validation data every N updates (0: at the end)
    save_every: int = bounded(0, 10**8, default=0)  # Orbax checkpoint every N updates (0: only at the end)

    def __post_init__(self):
        checked_fields(self)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def loss_kind(config: DPTConfig, recipe: Recipe) -> str:
    """"silog" (metres), "ssi" (relative inverse depth) or "video" (clips), as the recipe says or the model implies."""
    if recipe.loss != "auto":
        if recipe.loss == "video" and not config.is_temporal:
            raise ConfigError(f"the video loss trains temporal models on clips; {config.name} takes single pictures")
        return recipe.loss
    return "video" if config.is_temporal else ("silog" if config.is_metric else "ssi")


def clip_frames(config: DPTConfig, recipe: Recipe) -> int:
    """Frames per training sample: 1 for picture models; a temporal model's recipe.frames (default: its window)."""
    if not config.is_temporal:
        if recipe.frames > 1:
            raise ConfigError(f"frames {recipe.frames}: {config.name} is not a video model; it takes single pictures")
        return 1
    frames = recipe.frames or config.temporal_frames
    require(frames <= config.temporal_frames,
            f"frames {frames}: {config.name} attends across at most {config.temporal_frames} frames")
    return frames


def lr_schedule(base: float, steps: int, power: float):
    """The original's rate per update count: base for updates 0 and 1, then base * (1 - (n - 1) / steps) ** power."""
    def schedule(count):
        done = jnp.maximum(count - 1, 0).astype(jnp.float32)
        return base * jnp.maximum(1.0 - done / steps, 0.0) ** power
    return schedule


def optimizer(recipe: Recipe):
    """AdamW per parameter group: the tree's top-level "encoder" at recipe.lr (or, freeze_encoder, not updated),
    the rest at lr * head_lr_factor."""
    import optax

    def adamw(base):
        return optax.adamw(lr_schedule(base, recipe.steps, recipe.power), b1=recipe.beta1, b2=recipe.beta2,
                           eps=1e-8, weight_decay=recipe.weight_decay)

    def labels(params):
        return {k: jax.tree_util.tree_map(lambda _: "encoder" if k == "encoder" else "rest", v)
                for k, v in params.items()}

    encoder = optax.set_to_zero() if recipe.freeze_encoder else adamw(recipe.lr)
    tx = optax.multi_transform({"encoder": encoder, "rest": adamw(recipe.lr * recipe.head_lr_factor)}, labels)
    return optax.MultiSteps(tx, every_k_schedule=recipe.accumulate) if recipe.accumulate > 1 else tx


def batch_loss(config: DPTConfig, recipe: Recipe, params, images, depth, valid):
    """The recipe's loss of the model on a batch: images (B*T, S, S, 3) normalised, depth (B*T, S, S) metres,
    valid; T = clip_frames (1 for picture models), each clip's frames consecutive.

    "video": VideoDepthLoss on (B, T, S, S), the model's output against the target in the output's own terms
    (relative models: disparity 1 / depth on the valid pixels, as "ssi" always; metric video models: metres)."""
    frames = clip_frames(config, recipe)
    pred = forward(config, params, images, recipe.dtype, frames=frames, remat=recipe.remat)  # (B*T, S, S)
    kind = loss_kind(config, recipe)
    if kind == "silog":
        cap = recipe.max_depth or config.max_depth or float("inf")
        return losses.silog_loss(pred, depth, losses.metric_valid(depth, valid, recipe.min_depth, cap))
    valid = valid & (depth > recipe.min_depth)
    if recipe.max_depth:
        valid = valid & (depth <= recipe.max_depth)
    metres = kind == "video" and config.is_metric
    target = jnp.where(valid, depth if metres else 1.0 / jnp.where(valid, depth, 1.0), 0.0)  # (B*T, S, S)
    if kind == "video":
        clip = (-1, frames) + pred.shape[1:]
        return losses.video_depth_loss(pred.reshape(clip), target.reshape(clip), valid.reshape(clip))[0]
    return losses.trimmed_ssi_loss(pred, target, valid)


def step_recipe(recipe: Recipe) -> Recipe:
    """The recipe with the fields the train step does not read set to their defaults: one compilation serves
    runs that differ only in seed, validation or checkpoint intervals."""
    return recipe.replace(seed=0, val_every=0, save_every=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def loss_and_grads(config: DPTConfig, recipe: Recipe, params, images, depth, valid):
    """(batch_loss, its gradients with respect to params)."""
    return jax.value_and_grad(batch_loss, argnums=2)(config, recipe, params, images, depth, valid)


def _train_step(config: DPTConfig, recipe: Recipe, state, images, depth, valid, gathered=None, sliced=None):
    """The train step; `gathered` / `sliced` (sharded parameters): the parameters' shardings for the forward and
    backward pass (whole on each device: an all-gather) and the gradients' (as the parameters': a reduce-scatter)."""
    import optax

    params = state["params"] if gathered is None else jax.lax.with_sharding_constraint(state["params"], gathered)
    loss, grads = jax.value_and_grad(batch_loss, argnums=2)(config, recipe, params, images, depth, valid)
    if sliced is not None:
        grads = jax.lax.with_sharding_constraint(grads, sliced)
    updates, opt_state = optimizer(recipe).update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss


#: One micro-batch: (new state, its loss); the optimizer updates the params every recipe.accumulate calls.
train_step = jax.jit(_train_step, static_argnums=(0, 1), donate_argnums=2)


def fsdp_spec(shape, devices: int) -> PartitionSpec:
    """How a sharded-parameters run splits one array: its largest axis divisible by the device count, over the
    devices ("batch", the data-parallel axis too); arrays without one (scalars, odd sizes) stay whole."""
    axes = [i for i, n in enumerate(shape) if n % devices == 0 and n >= devices]
    if devices == 1 or not axes:
        return PartitionSpec()
    axis = max(axes, key=lambda i: shape[i])
    return PartitionSpec(*([None] * axis + ["batch"]))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _predict(config: DPTConfig, params, dtype: str, frames: int, images):
    return forward(config, params, images, dtype, frames=frames)


class Trainer:
    """One model and recipe over every local device: the batch split across them, the state replicated, or with
    `shard_params` split across them too (FSDP: each device holds a slice of every large parameter and of its
    optimizer state; XLA gathers them for the forward and backward pass and reduce-scatters the gradients).

    `devices` may be every device of a multi-process run (jax.devices()): each process then hands `step` only its
    own rows of each micro-batch (`local_rows`), and the arrays are assembled across the processes."""

    def __init__(self, config: DPTConfig, recipe: Recipe, devices=None, shard_params: bool = False):
        require(recipe.size % config.input_multiple == 0,
                f"size {recipe.size} must be a multiple of {config.input_multiple} for {config.name}")
        self.frames = clip_frames(config, recipe)
        loss_kind(config, recipe)  # a video loss for a picture model is refused here
        # each process's devices consecutive: its rows of a batch are one block
        devices = sorted(devices or jax.local_devices(), key=lambda d: (d.process_index, d.id))
        require(recipe.batch_size % len(devices) == 0,
                f"batch_size {recipe.batch_size} must be a multiple of the {len(devices)} devices")
        self.config, self.recipe, self.shard_params = config, recipe, shard_params
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("batch"))
        self._sharded_step = None

    @property
    def local_rows(self) -> range:
        """The samples (pictures or clips) of each micro-batch this process's devices hold: all of them in a
        one-process run."""
        held = sorted(i.start or 0 for i, *_ in self.batch_sharding.addressable_devices_indices_map(
            (self.recipe.batch_size,)).values())
        share = self.recipe.batch_size // self.mesh.devices.size
        return range(held[0], held[-1] + share)

    def state_shardings(self, state):
        """The sharding of each leaf of a train state: replicated, or (shard_params) as fsdp_spec splits it."""
        n = self.mesh.devices.size
        if not self.shard_params:
            return jax.tree_util.tree_map(lambda _: self.replicated, state)
        return jax.tree_util.tree_map(lambda a: NamedSharding(self.mesh, fsdp_spec(np.shape(a), n)), state)

    def init(self, params) -> dict:
        """The train state: float32 params, optimizer state, micro-step count, placed on the devices."""
        params = cast_params(params)
        state = {"params": params, "opt_state": optimizer(self.recipe).init(params), "step": np.int32(0)}
        return jax.device_put(state, self.state_shardings(state))

    def step(self, state, batch):
        """One micro-batch (images, depth, valid) -> (new state, its loss); `state` is consumed (donated).
        `batch`: this process's rows (local_rows) of it; B*T rows for clips of T frames."""
        rows = len(self.local_rows) * self.frames
        batch = tuple(np.asarray(b) for b in batch)
        if batch[0].shape[0] != rows:
            raise ValueError(f"this process holds {rows} rows of each micro-batch; got {batch[0].shape[0]}")
        batch = tuple(jax.make_array_from_process_local_data(
            self.batch_sharding, b, (self.recipe.batch_size * self.frames,) + b.shape[1:]) for b in batch)
        if not self.shard_params:
            return train_step(self.config, step_recipe(self.recipe), state, *batch)
        if self._sharded_step is None:  # the new state keeps the old one's slices
            shardings = self.state_shardings(state)
            whole = jax.tree_util.tree_map(lambda _: self.replicated, shardings["params"])
            step = functools.partial(_train_step, self.config, step_recipe(self.recipe), gathered=whole,
                                     sliced=shardings["params"])
            self._sharded_step = jax.jit(step, donate_argnums=0, out_shardings=(shardings, self.replicated))
        return self._sharded_step(state, *batch)

    def predict(self, params, images):
        """Depth of normalised images (n * frames, H, W, 3), a temporal model's clips of self.frames in a row."""
        return _predict(self.config, params, self.recipe.dtype, self.frames, images)


def host_copy(tree):
    """NumPy copies of a tree of (possibly multi-process) arrays: every process gets the whole of each. An array
    split across processes is gathered, a collective: every process must call this at the same point."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)


# ---------------------------------------------------------------------------------------------
# Data: the original's resize / crop / flip, each micro-batch a pure function of (seed, micro-step)


def _nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.INTER_NEAREST: source index floor(dst * in / out)."""
    rows = np.minimum(np.floor(np.arange(size[0]) * (x.shape[0] / size[0])).astype(int), x.shape[0] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * (x.shape[1] / size[1])).astype(int), x.shape[1] - 1)
    return x[rows][:, cols]


def _cubic(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.INTER_CUBIC of an (h, w, C) float image (resize.cubic_taps, "opencv")."""
    for axis, n in enumerate(size):
        if x.shape[axis] != n:
            idx, w = cubic_taps(x.shape[axis], n, "opencv")  # (n, 4)
            taken = np.take(x, idx, axis=axis)  # axis becomes (n, 4)
            shape = [1] * taken.ndim
            shape[axis], shape[axis + 1] = n, 4
            x = (taken * w.reshape(shape)).sum(axis=axis + 1)
    return x


def resized_size(config: DPTConfig, shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) a picture of `shape` is resized to before the crop: covering size x size, aspect kept, sides
    multiples of the patch (the original's Resize, lower bound)."""
    from .preprocess import processed_size

    return processed_size(*shape, target=size, keep_aspect_ratio=True, multiple_of=config.resize_multiple,
                          rule="lower_bound")


def prepare(config: DPTConfig, sample, size: int, corner: tuple[int, int]):
    """One training picture: (image (S, S, 3) normalised, depth (S, S) metres, valid (S, S)), resized to cover
    size x size (resized_size of its header's size) and cropped at `corner` (top, left), as the original's
    Resize + Crop."""
    picture = sample.picture.load()
    image = picture.astype(np.float32) / (255.0 if picture.dtype == np.uint8 else 1.0)  # (h, w, 3)
    if image.shape[:2] != tuple(sample.picture.size):
        raise DatasetError(sample.picture.name, f"decoded as {image.shape[:2]}; its header says {sample.picture.size}")
    depth, valid = sample.load_truth()
    if depth.shape != image.shape[:2]:
        raise DatasetError(sample.name, f"depth map {depth.shape} and picture {image.shape[:2]} differ in size")
    h, w = resized_size(config, image.shape[:2], size)
    image = _cubic(image, (h, w))
    image = (image - np.float32(config.input_mean)) / np.float32(config.input_std)
    depth, valid = _nearest(depth, (h, w)), _nearest(valid, (h, w))
    top, left = corner
    crop = np.s_[top:top + size, left:left + size]
    return image[crop].astype(np.float32), depth[crop].astype(np.float32), valid[crop]


def _frame_order(name: str):
    """Sort key of frame names: digit runs as numbers (frame_9 before frame_10)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def clips(samples, frames: int, stride: int = 1) -> list[tuple]:
    """Clips of `frames` consecutive frames: the samples grouped by their video (Sample.sequence, else the folder
    their name is in, e.g. images/CLIP/0001.png -> CLIP), each video's frames in name order (numbers by value),
    one clip starting every `stride` frames. Every video must hold at least `frames` frames of one size."""
    videos: dict[str, list] = {}
    for s in samples:
        key = s.sequence if s.sequence is not None else str(Path(s.name).parent)
        videos.setdefault(key, []).append(s)
    out = []
    for key in sorted(videos, key=_frame_order):
        video = sorted(videos[key], key=lambda s: _frame_order(s.name))
        where = "." if key == "." else key
        if len(video) < frames:
            raise DatasetError(where, f"{len(video)} frames; clips of {frames} frames need at least that many "
                                      "(--frames sets a shorter clip)")
        odd = next((s for s in video if tuple(s.picture.size) != tuple(video[0].picture.size)), None)
        if odd is not None:
            raise DatasetError(odd.picture.name, f"{odd.picture.size[1]}x{odd.picture.size[0]}; the video's first "
                                                 f"frame is {video[0].picture.size[1]}x{video[0].picture.size[0]}")
        out += [tuple(video[i:i + frames]) for i in range(0, len(video) - frames + 1, stride)]
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The shuffle of `count` samples in one epoch (drawn once per epoch, not once per sample)."""
    return np.random.default_rng([seed, epoch, 1]).permutation(count)


def micro_batch(config: DPTConfig, recipe: Recipe, samples, position: int, rows: range | None = None):
    """Micro-batch number `position`: the next batch_size samples of a per-epoch shuffle of `samples` (pictures,
    or clips: tuples of frames), each resized and cropped at a random place (one for all frames of a clip), and
    (with probability 0.5, the whole batch) flipped left-right. `rows`: only those samples of the batch are read
    and prepared (a process's share; Trainer.local_rows); the random draws are the whole batch's all the same.
    -> images (n*T, S, S, 3), depth (n*T, S, S), valid (n*T, S, S), each clip's T frames in a row."""
    rng = np.random.default_rng([recipe.seed, position])
    picked = []
    for i in range(position * recipe.batch_size, (position + 1) * recipe.batch_size):
        epoch, k = divmod(i, len(samples))
        unit = samples[_epoch_order(recipe.seed, epoch, len(samples))[k]]
        picked.append(unit if isinstance(unit, tuple) else (unit,))
    corners = []
    for unit in picked:  # drawn from the headers' sizes: no process reads pictures outside its rows
        h, w = resized_size(config, tuple(unit[0].picture.size), recipe.size)
        corners.append((rng.integers(0, h - recipe.size + 1), rng.integers(0, w - recipe.size + 1)))
    flip = recipe.flip and rng.random() < 0.5
    rows = range(len(picked)) if rows is None else rows
    prepared = [prepare(config, frame, recipe.size, corners[r]) for r in rows for frame in picked[r]]
    images, depth, valid = (np.stack(a) for a in zip(*prepared))
    if flip:
        images, depth, valid = images[:, :, ::-1], depth[:, :, ::-1], valid[:, :, ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(depth), np.ascontiguousarray(valid)


def batches_ahead(make, start: int, stop: int, ahead: int = 2):
    """make(position) for position in [start, stop), decoded `ahead` positions in advance in background threads."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=ahead) as pool:
        pending = {p: pool.submit(make, p) for p in range(start, min(start + ahead, stop))}
        for p in range(start, stop):
            if p + ahead < stop:
                pending[p + ahead] = pool.submit(make, p + ahead)
            yield pending.pop(p).result()


# ---------------------------------------------------------------------------------------------
# Validation and checkpoints


def evaluate(trainer: Trainer, params, samples, size: int) -> dict[str, float]:
    """metrics.depth_metrics of the model on `samples` (each at the network size for `size`, the prediction
    resized back as the model's config says); relative models' disparity aligned by least squares first, per
    picture. A temporal model sees its videos as clips of trainer.frames one after another (`clips`, stride the
    clip length: frames after a video's last whole clip are not scored)."""
    from . import metrics
    from .preprocess import network_size, to_network, to_picture

    config, recipe = trainer.config, trainer.recipe
    cap = recipe.max_depth or config.max_depth or float("inf")
    terms = []
    units = clips(samples, trainer.frames, trainer.frames) if config.is_temporal else [(s,) for s in samples]
    for unit in units:
        pictures = np.stack([s.picture.load() for s in unit])  # (T, h, w, 3)
        shape = pictures.shape[1:3]
        images = to_network(config, pictures, network_size(config, shape, target=size))
        preds = np.asarray(to_picture(config, trainer.predict(params, images), shape))  # (T, h, w)
        for sample, pred in zip(unit, preds):
            depth, valid = sample.load_truth()
            valid = valid & (depth >= recipe.min_depth) & (depth <= cap)
            if not config.is_metric and valid.any():
                pred = metrics.align_disparity(pred, depth, valid)[0]
            terms.append(metrics.image_terms(pred, depth, valid))
    return metrics.combine({k: np.concatenate([t[k] for t in terms]) for k in terms[0]})  # as depth_metrics


def checkpoints(folder):
    """An Orbax CheckpointManager on `folder` (kept: the last two; written whole or not at all)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
    return ocp.CheckpointManager(os.path.abspath(folder), options=options)


def save_state(manager, state, meta: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(host_copy(state["step"]))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()


def restore_state(manager, trainer: Trainer, params, meta: dict):
    """The latest checkpoint's state (None if there is none); its model and recipe must be this run's."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if saved != meta:
        differ = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
        raise ConfigError(f"{manager.directory}: the checkpoint is of another run ({', '.join(differ)} differ)")
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, trainer.init(params))
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


# ---------------------------------------------------------------------------------------------
# The whole run


def hf_folder(config: DPTConfig, output, hf_output=None):
    """Where finetune writes the Hugging Face layout of its result (None: nowhere): `hf_output` if given (False:
    nowhere), else OUTPUT's stem + "-hf" beside it where the family has a layout for the model. A folder that holds
    anything but an earlier dpt-jax export is refused, before any training."""
    from .convert import hf

    if hf_output is False or (hf_output is None and config.family.hf_layout_of(config) is None):
        return None
    hf.layout_of(config)  # a ValueError naming the model where there is no layout
    folder = Path(hf_output) if hf_output is not None else Path(output).with_name(Path(output).stem + "-hf")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not hf.is_previous_export(folder))):
        raise ConfigError(f"{folder}: exists and is not an earlier dpt-jax export; choose another Hugging Face "
                          "output folder (--hf-output) or none (--no-hf)")
    return folder


def cpu_collectives() -> None:
    """Before jax.distributed.initialize: CPU devices of several processes exchange gradients through Gloo. Recent
    JAX (0.10) does so by default; older versions default to "none" (no collectives across CPU processes), and
    there this sets jax_cpu_collectives_implementation to "gloo": a process-wide JAX setting, changed only on
    finetune's distributed start path (a choice of "mpi" is kept)."""
    name = "jax_cpu_collectives_implementation"
    if name in jax.config.values and jax.config.values[name] in (None, "none"):
        jax.config.update(name, "gloo")


def finetune(model, data, output, *, recipe: Recipe | None = None, val_data=None, checkpoint_dir=None,
             resume: bool = False, log=None, variant: str | None = None, progress: bool = True,
             devices=None, shard_params: bool = False, hf_output=None, dataset: str = "folder",
             val_dataset: str | None = None, distributed: bool = False, **options) -> dict:
    """Fine-tune `model` (anything `dpt_jax.load` takes) on the folder `data` and write it to `output`
    (.safetensors, ready for `dpt-jax predict -m`).

    `devices` (default: every local device) share each batch; `shard_params`: the parameters and optimizer
    state are split across them too (Trainer). `distributed`: one process per host, joined by
    start_distributed (as `dpt-jax predict --distributed`: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID, or a cluster JAX detects; also when those variables are set), every device of every process
    sharing each batch; call it before anything else uses JAX. Only process 0 writes the log and the outputs;
    the checkpoint folder must be one all processes share.
    Temporal models (Video Depth Anything) train on clips of recipe.frames consecutive frames (`clips`: in the
    folder layout images/CLIP/FRAME.png with depth/CLIP/FRAME.npy|png; a flat images/ is one video) with
    VideoDepthLoss; recipe.batch_size counts clips. `dataset`: the layout of `data`, a name of datasets.DATASETS as
    `dpt-jax eval --dataset` takes it ("folder": images/NAME.*, depth/NAME.npy|png metres, optional
    mask/NAME.png; "nyuv2", "kitti", "eth3d", "diode", "sintel", "middlebury": those datasets' own files).
    `val_data`: a folder of `val_dataset`'s layout (default `dataset`'s), scored every recipe.val_every updates
    and at the end.
    `checkpoint_dir` (default OUTPUT + ".ckpt"): Orbax checkpoints every recipe.save_every updates and at the end;
    `resume` continues from its latest. `log` (default OUTPUT + ".log.jsonl"): one JSON line per micro-step and
    per evaluation. `hf_output`: the Hugging Face transformers folder also written (hf_folder: by default
    OUTPUT's stem + "-hf" where the family has a layout; False: none). Returns {"loss": last loss, "step": updates
    done, "val": last validation metrics or None, "hf": the Hugging Face folder or None}.
    """
    from .checkpoint import load_checkpoint, write_converted
    from .datasets import open_dataset
    from .predict_files import DISTRIBUTED_VARIABLES, start_distributed

    if distributed or any(os.environ.get(n) for n in DISTRIBUTED_VARIABLES):
        cpu_collectives()
    process, processes = start_distributed(distributed)
    if processes > 1 and devices is None:
        devices = jax.devices()
    progress = progress and process == 0
    recipe = recipe or Recipe()
    output = Path(output)
    checkpoint_dir = Path(checkpoint_dir or f"{output}.ckpt")
    log = Path(log or f"{output}.log.jsonl")
    loaded = load_checkpoint(model, variant=variant, progress=progress, **options)
    config = loaded.config
    hf_output = hf_folder(config, output, hf_output)
    trainer = Trainer(config, recipe, devices, shard_params)
    samples = open_dataset(dataset, data)
    if config.is_temporal:
        samples = clips(samples, trainer.frames)
    val_samples = open_dataset(val_dataset or dataset, val_data) if val_data is not None else []
    meta = {"model": config.to_json(), "recipe": dataclasses.asdict(recipe), "data": len(samples),
            "dataset": dataset}
    manager = checkpoints(checkpoint_dir)
    state = restore_state(manager, trainer, loaded.params, meta) if resume else None
    if state is None:
        if not resume and manager.latest_step() is not None:
            raise ConfigError(f"{checkpoint_dir} holds checkpoints of an earlier run: pass resume (--resume) to "
                              "continue it, or choose another folder")
        state = trainer.init(loaded.params)
    total = recipe.steps * recipe.accumulate
    start = int(host_copy(state["step"]))
    result = {"loss": None, "step": start // recipe.accumulate, "val": None, "hf": hf_output}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", desc="finetune")
    t0 = time.perf_counter()
    try:
        with open(log, "a") if process == 0 else contextlib.nullcontext() as log_file:
            def record(entry):
                if log_file is not None:
                    log_file.write(json.dumps(entry) + "\n")
                    log_file.flush()

            rows = trainer.local_rows
            make = lambda p: micro_batch(config, recipe, samples, p, rows)  # noqa: E731
            for position, batch in enumerate(batches_ahead(make, start, total), start=start):
                state, loss = trainer.step(state, batch)
                loss = float(loss)
                if not np.isfinite(loss):
                    raise ConfigError(f"step {position + 1}: the loss is {loss}; lower the learning rate (lr)")
                update = (position + 1) // recipe.accumulate
                lr = float(lr_schedule(recipe.lr, recipe.steps, recipe.power)(update))
                record({"step": position + 1, "update": update, "loss": loss, "lr": lr})
                result.update(loss=loss, step=update)
                if bar is not None:
                    rate = (position + 1 - start) * recipe.batch_size * trainer.frames / max(
                        time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                    bar.update(1)
                at_update = (position + 1) % recipe.accumulate == 0
                last = position + 1 == total
                if val_samples and at_update and (last or (recipe.val_every and update % recipe.val_every == 0)):
                    params = state["params"] if processes == 1 else host_copy(state["params"])
                    if process == 0:  # the others go on and wait for it in the next step's all-reduce
                        result["val"] = evaluate(trainer, params, val_samples, recipe.size)
                        record({"update": update, "val": result["val"]})
                if at_update and (last or (recipe.save_every and update % recipe.save_every == 0)):
                    save_state(manager, state, meta)
    finally:
        if bar is not None:
            bar.close()
        manager.close()
    params = host_copy(state["params"])
    if process != 0:
        return result
    write_converted(output, config, params)
    if hf_output is not None:
        from .convert import hf

        hf.write(hf_output, config, params)
    return result


#: `dpt-jax finetune` flags -> Recipe fields (a flag left out keeps the recipe's default)
_FLAGS = {"steps": "steps", "batch_size": "batch_size", "accumulate": "accumulate", "lr": "lr", "size": "size",
          "loss": "loss", "dtype": "dtype", "seed": "seed", "val_every": "val_every",
          "save_every": "save_every", "frames": "frames"}


def run(args) -> int:
    """`dpt-jax finetune`: the recipe from the flags, then `finetune`."""
    from .options import model_options

    given = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    recipe = Recipe(**given, remat=args.remat, flip=not args.no_flip, freeze_encoder=args.freeze_encoder)
    result = finetune(args.model, args.data, args.output, recipe=recipe, val_data=args.val_data,
                      dataset=args.dataset, val_dataset=args.val_dataset, shard_params=args.shard_params,
                      checkpoint_dir=args.checkpoints, resume=args.resume, progress=not args.no_progress,
                      hf_output=False if args.no_hf else args.hf_output, distributed=args.distributed,
                      **model_options(args))
    if jax.process_index() != 0:
        return 0
    print(f"updates:    {result['step']}, last loss {result['loss']:.6g}")
    for k, v in (result["val"] or {}).items():
        print(f"val {k + ':':<11}{v:.4f}")
    print(f"wrote       {args.output}" + (f" and {result['hf']} (Hugging Face layout)" if result["hf"] else ""))
    return 0
