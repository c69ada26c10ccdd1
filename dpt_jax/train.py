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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
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
    loss: str = choice("auto", "silog", "ssi", default="auto")  # auto: silog for metric models, ssi for relative
    min_depth: float = bounded(0.0, 1e6, default=1e-3)  # metres: the valid ground truth
    max_depth: float = bounded(0.0, 1e6, default=0.0)  # metres; 0: the model's max_depth (relative: no cap)
    dtype: str = choice("float32", "bfloat16", default="float32")  # matrix products; master weights float32
    remat: bool = False  # recompute the encoder blocks' activations in the backward pass
    seed: int = bounded(0, 2**31 - 1, default=0)
    val_every: int = bounded(0, 10**8, default=0)  # evaluate the validation data every N updates (0: at the end)
    save_every: int = bounded(0, 10**8, default=0)  # Orbax checkpoint every N updates (0: only at the end)

    def __post_init__(self):
        checked_fields(self)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def loss_kind(config: DPTConfig, recipe: Recipe) -> str:
    """"silog" (metres) or "ssi" (relative inverse depth), as the recipe says or the model's output implies."""
    return recipe.loss if recipe.loss != "auto" else ("silog" if config.is_metric else "ssi")


def lr_schedule(base: float, steps: int, power: float):
    """The original's rate per update count: base for updates 0 and 1, then base * (1 - (n - 1) / steps) ** power."""
    def schedule(count):
        done = jnp.maximum(count - 1, 0).astype(jnp.float32)
        return base * jnp.maximum(1.0 - done / steps, 0.0) ** power
    return schedule


def optimizer(recipe: Recipe):
    """AdamW per parameter group: the tree's top-level "encoder" at recipe.lr, the rest at lr * head_lr_factor."""
    import optax

    def adamw(base):
        return optax.adamw(lr_schedule(base, recipe.steps, recipe.power), b1=recipe.beta1, b2=recipe.beta2,
                           eps=1e-8, weight_decay=recipe.weight_decay)

    def labels(params):
        return {k: jax.tree_util.tree_map(lambda _: "encoder" if k == "encoder" else "rest", v)
                for k, v in params.items()}

    tx = optax.multi_transform({"encoder": adamw(recipe.lr), "rest": adamw(recipe.lr * recipe.head_lr_factor)},
                               labels)
    return optax.MultiSteps(tx, every_k_schedule=recipe.accumulate) if recipe.accumulate > 1 else tx


def batch_loss(config: DPTConfig, recipe: Recipe, params, images, depth, valid):
    """The recipe's loss of the model on a batch: images (B, S, S, 3) normalised, depth (B, S, S) metres, valid."""
    pred = forward(config, params, images, recipe.dtype, remat=recipe.remat)  # (B, S, S)
    if loss_kind(config, recipe) == "silog":
        cap = recipe.max_depth or config.max_depth or float("inf")
        return losses.silog_loss(pred, depth, losses.metric_valid(depth, valid, recipe.min_depth, cap))
    valid = valid & (depth > recipe.min_depth)
    if recipe.max_depth:
        valid = valid & (depth <= recipe.max_depth)
    inverse = jnp.where(valid, 1.0 / jnp.where(valid, depth, 1.0), 0.0)  # (B, S, S) the target's disparity
    return losses.trimmed_ssi_loss(pred, inverse, valid)


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


@functools.partial(jax.jit, static_argnums=(0, 2))
def _predict(config: DPTConfig, params, dtype: str, images):
    return forward(config, params, images, dtype)


class Trainer:
    """One model and recipe over every local device: the batch split across them, the state replicated, or with
    `shard_params` split across them too (FSDP: each device holds a slice of every large parameter and of its
    optimizer state; XLA gathers them for the forward and backward pass and reduce-scatters the gradients)."""

    def __init__(self, config: DPTConfig, recipe: Recipe, devices=None, shard_params: bool = False):
        if config.is_temporal:
            raise ConfigError(f"{config.name} is a video model; fine-tuning it on clips (VideoDepthLoss) is not "
                              "built yet")
        require(recipe.size % config.input_multiple == 0,
                f"size {recipe.size} must be a multiple of {config.input_multiple} for {config.name}")
        devices = list(devices or jax.local_devices())
        require(recipe.batch_size % len(devices) == 0,
                f"batch_size {recipe.batch_size} must be a multiple of the {len(devices)} devices")
        self.config, self.recipe, self.shard_params = config, recipe, shard_params
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("batch"))
        self._sharded_step = None

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
        """One micro-batch (images, depth, valid) -> (new state, its loss); `state` is consumed (donated)."""
        batch = jax.device_put(tuple(np.asarray(b) for b in batch), self.batch_sharding)
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
        return _predict(self.config, params, self.recipe.dtype, images)


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


def prepare(config: DPTConfig, sample, size: int, rng: np.random.Generator):
    """One training sample: (image (S, S, 3) normalised, depth (S, S) metres, valid (S, S)), resized to cover
    size x size and cropped at a random place, as the original's Resize + Crop."""
    from .preprocess import processed_size

    picture = sample.picture.load()
    image = picture.astype(np.float32) / (255.0 if picture.dtype == np.uint8 else 1.0)  # (h, w, 3)
    depth, valid = sample.load_truth()
    if depth.shape != image.shape[:2]:
        raise DatasetError(sample.name, f"depth map {depth.shape} and picture {image.shape[:2]} differ in size")
    h, w = processed_size(*image.shape[:2], target=size, keep_aspect_ratio=True,
                          multiple_of=config.resize_multiple, rule="lower_bound")
    image = _cubic(image, (h, w))
    image = (image - np.float32(config.input_mean)) / np.float32(config.input_std)
    depth, valid = _nearest(depth, (h, w)), _nearest(valid, (h, w))
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    crop = np.s_[top:top + size, left:left + size]
    return image[crop].astype(np.float32), depth[crop].astype(np.float32), valid[crop]


def micro_batch(config: DPTConfig, recipe: Recipe, samples, position: int):
    """Micro-batch number `position`: the next batch_size samples of a per-epoch shuffle of `samples`, prepared
    and (with probability 0.5, the whole batch) flipped left-right."""
    rng = np.random.default_rng([recipe.seed, position])
    picked = []
    for i in range(position * recipe.batch_size, (position + 1) * recipe.batch_size):
        epoch, k = divmod(i, len(samples))
        picked.append(samples[np.random.default_rng([recipe.seed, epoch, 1]).permutation(len(samples))[k]])
    images, depth, valid = (np.stack(a) for a in zip(*(prepare(config, s, recipe.size, rng) for s in picked)))
    if recipe.flip and rng.random() < 0.5:
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
    resized back as the model's config says); relative models' disparity aligned by least squares first."""
    from . import metrics
    from .preprocess import network_size, to_network, to_picture

    config, recipe = trainer.config, trainer.recipe
    cap = recipe.max_depth or config.max_depth or float("inf")
    terms = []
    for sample in samples:
        picture = sample.picture.load()
        depth, valid = sample.load_truth()
        shape = picture.shape[:2]
        images = to_network(config, picture[None], network_size(config, shape, target=size))
        pred = np.asarray(to_picture(config, trainer.predict(params, images), shape))[0]  # (h, w)
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

    step = int(jax.device_get(state["step"]))
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


def finetune(model, data, output, *, recipe: Recipe | None = None, val_data=None, checkpoint_dir=None,
             resume: bool = False, log=None, variant: str | None = None, progress: bool = True,
             devices=None, shard_params: bool = False, hf_output=None, dataset: str = "folder",
             val_dataset: str | None = None, **options) -> dict:
    """Fine-tune `model` (anything `dpt_jax.load` takes) on the folder `data` and write it to `output`
    (.safetensors, ready for `dpt-jax predict -m`).

    `devices` (default: every local device) share each batch; `shard_params`: the parameters and optimizer
    state are split across them too (Trainer). `dataset`: the layout of `data`, a name of datasets.DATASETS as
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

    recipe = recipe or Recipe()
    output = Path(output)
    checkpoint_dir = Path(checkpoint_dir or f"{output}.ckpt")
    log = Path(log or f"{output}.log.jsonl")
    loaded = load_checkpoint(model, variant=variant, progress=progress, **options)
    config = loaded.config
    hf_output = hf_folder(config, output, hf_output)
    trainer = Trainer(config, recipe, devices, shard_params)
    samples = open_dataset(dataset, data)
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
    start = int(jax.device_get(state["step"]))
    result = {"loss": None, "step": start // recipe.accumulate, "val": None, "hf": hf_output}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, unit="step", desc="finetune")
    t0 = time.perf_counter()
    try:
        with open(log, "a") as log_file:
            def record(entry):
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()

            make = lambda p: micro_batch(config, recipe, samples, p)  # noqa: E731
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
                    rate = (position + 1 - start) * recipe.batch_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                    bar.update(1)
                at_update = (position + 1) % recipe.accumulate == 0
                last = position + 1 == total
                if val_samples and at_update and (last or (recipe.val_every and update % recipe.val_every == 0)):
                    result["val"] = evaluate(trainer, state["params"], val_samples, recipe.size)
                    record({"update": update, "val": result["val"]})
                if at_update and (last or (recipe.save_every and update % recipe.save_every == 0)):
                    save_state(manager, state, meta)
    finally:
        if bar is not None:
            bar.close()
        manager.close()
    params = jax.device_get(state["params"])
    write_converted(output, config, params)
    if hf_output is not None:
        from .convert import hf

        hf.write(hf_output, config, params)
    return result


#: `dpt-jax finetune` flags -> Recipe fields (a flag left out keeps the recipe's default)
_FLAGS = {"steps": "steps", "batch_size": "batch_size", "accumulate": "accumulate", "lr": "lr", "size": "size",
          "loss": "loss", "dtype": "dtype", "seed": "seed", "val_every": "val_every",
          "save_every": "save_every"}


def run(args) -> int:
    """`dpt-jax finetune`: the recipe from the flags, then `finetune`."""
    from .options import model_options

    given = {field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None}
    recipe = Recipe(**given, remat=args.remat, flip=not args.no_flip)
    result = finetune(args.model, args.data, args.output, recipe=recipe, val_data=args.val_data,
                      dataset=args.dataset, val_dataset=args.val_dataset, shard_params=args.shard_params,
                      checkpoint_dir=args.checkpoints, resume=args.resume, progress=not args.no_progress,
                      hf_output=False if args.no_hf else args.hf_output, **model_options(args))
    print(f"updates:    {result['step']}, last loss {result['loss']:.6g}")
    for k, v in (result["val"] or {}).items():
        print(f"val {k + ':':<11}{v:.4f}")
    print(f"wrote       {args.output}" + (f" and {result['hf']} (Hugging Face layout)" if result["hf"] else ""))
    return 0
