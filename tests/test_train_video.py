"""Fine-tuning a temporal model (Video Depth Anything) on clips: a tiny VDA with random weights, two 20x30 videos
of five frames in the folder layout (images/CLIP/N.png, depth/CLIP/N.npy), clips of 3 frames.

- clips: videos found by folder, frames in number order, every window of 3; short videos and odd sizes named;
- micro-batches: one crop and one flip for all frames of a clip, the frames in order;
- the train step's gradient (read from Adam's first moment) is jax.grad of losses.video_depth_loss on the model's
  forward over the clips, assembled here independently;
- `dpt-jax finetune` on the folder, checkpoints and a resume that equals the uninterrupted run.

Crops are 56: at 28 the deepest temporal module sees a 1x1 map, where its GroupNorm (one channel a group) divides
rounding noise by sqrt(1e-6) and the encoder's gradients differ by 10 % between two compilations of the same
program; at 56 (2x2) two compilations agree within 1e-4."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from dpt_jax import losses, train
from dpt_jax.checkpoint import load_checkpoint, write_converted
from dpt_jax.cli import main
from dpt_jax.datasets import open_dataset
from dpt_jax.dpt import forward
from dpt_jax.errors import DatasetError
from dpt_jax.timing import random_params
from helpers import tiny_vda

RECIPE = train.Recipe(steps=3, batch_size=2, size=56, lr=2e-4, seed=1, frames=3)
FRAMES = 5


def _video(root: Path, clip: str, frames: int, shape=(20, 30), shift: int = 0, motion: int = 1):
    """A video whose depth follows its brightness, sliding right `motion` pixels a frame; the depth also carries
    1e-3 * frame (the frame's number, read back from a prepared batch)."""
    rng = np.random.default_rng(len(clip) + shift)
    for sub in ("images", "depth"):
        (root / sub / clip).mkdir(parents=True, exist_ok=True)
    h, w = shape
    for t in range(frames):
        shade = np.roll(np.linspace(0, 1, w)[None, :] * np.linspace(0.5, 1, h)[:, None], motion * t + shift, axis=1)
        picture = np.clip(shade[..., None] * [255, 190, 140] + rng.normal(0, 6, (h, w, 3)), 0, 255)
        Image.fromarray(picture.astype(np.uint8)).save(root / "images" / clip / f"{t}.png")
        np.save(root / "depth" / clip / f"{t}.npy", (1.0 + 6.0 * shade + 1e-3 * t).astype(np.float32))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    _video(root, "walk", FRAMES)
    _video(root, "drive", FRAMES, shift=9)
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny_vda.safetensors"
    config = tiny_vda()
    write_converted(path, config, random_params(config, seed=4))
    return path


def test_clips_are_windows_of_each_video_in_frame_order(videos, tmp_path):
    samples = open_dataset("folder", videos)
    got = [[s.name for s in clip] for clip in train.clips(samples, 3)]
    assert got == [[f"{v}/{t}" for t in range(i, i + 3)] for v in ("drive", "walk") for i in range(3)]
    assert len(train.clips(samples, 3, stride=3)) == 2  # one whole clip of 3 in each 5-frame video
    _video(tmp_path / "long", "v", 11, shape=(4, 4))  # frame 10 comes after 9 (by number, not by name)
    got = [[s.name for s in clip] for clip in train.clips(open_dataset("folder", tmp_path / "long"), 3, stride=4)]
    assert got == [["v/0", "v/1", "v/2"], ["v/4", "v/5", "v/6"], ["v/8", "v/9", "v/10"]]
    with pytest.raises(DatasetError, match="walk: 5 frames; clips of 6 frames"):
        train.clips([s for s in samples if s.name.startswith("walk")], 6)
    odd = tmp_path / "odd"
    _video(odd, "a", 3)
    _video(odd, "a2", 1, shape=(20, 32))
    shutil.move(odd / "images" / "a2" / "0.png", odd / "images" / "a" / "9.png")
    shutil.move(odd / "depth" / "a2" / "0.npy", odd / "depth" / "a" / "9.npy")
    with pytest.raises(DatasetError, match="9.png: 32x20; the video's first frame is 30x20"):
        train.clips(open_dataset("folder", odd), 3)


def test_a_clip_is_cropped_and_flipped_as_one(tmp_path):
    config = tiny_vda()
    _video(tmp_path, "a", 4, motion=0)  # still videos: a frame's depth is the first's + 1e-3 * frame
    _video(tmp_path, "b", 4, shift=11, motion=0)
    units = train.clips(open_dataset("folder", tmp_path), 3)
    flips, corners = [], set()
    for position in range(8):
        images, depth, valid = train.micro_batch(config, RECIPE, units, position)
        assert images.shape == (6, 56, 56, 3) and depth.shape == valid.shape == (6, 56, 56)
        for clip in depth.reshape(2, 3, 56, 56):  # the same pixels of every frame, the frames in order
            np.testing.assert_allclose(clip[1:] - clip[:-1], 1e-3, atol=2e-6)
            corners.add(float(clip[0, 0, 0]))
        still = train.micro_batch(config, RECIPE.replace(flip=False), units, position)[1]  # the same draws
        flips.append(np.array_equal(depth, still[:, :, ::-1]) and not np.array_equal(depth, still))
        assert flips[-1] or np.array_equal(depth, still)  # the whole batch flipped, or none of it
    assert 0 < sum(flips) < 8 and len(corners) > 4  # flips and crops vary from batch to batch
    # a process's share: the same draws, only its rows
    full = train.micro_batch(config, RECIPE, units, 4)
    part = train.micro_batch(config, RECIPE, units, 4, range(1, 2))
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a[3:], b)


def test_the_step_follows_the_gradient_of_video_depth_loss_on_the_clips(videos, model_file):
    loaded = load_checkpoint(model_file)
    config, params = loaded.config, train.cast_params(loaded.params)
    units = train.clips(open_dataset("folder", videos), 3)
    images, depth, valid = train.micro_batch(config, RECIPE, units, 0)
    trainer = train.Trainer(config, RECIPE)
    state, loss = trainer.step(trainer.init(params), (images, depth, valid))

    def independent(params, images, target, mask):  # the clips as (B, T, S, S)
        pred = forward(config, params, images, frames=3).reshape(2, 3, 56, 56)
        return losses.video_depth_loss(pred, target, mask)[0]

    ok = (depth > RECIPE.min_depth) & valid
    target = np.where(ok, 1.0 / np.where(ok, depth, 1.0), 0.0).reshape(2, 3, 56, 56)  # inverse depth where valid
    args = (params, images, target, ok.reshape(2, 3, 56, 56))
    # compiled with XLA's quick CPU code generation (the same operations, less compile time)
    want, grads = jax.jit(jax.value_and_grad(independent)).lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})(*args)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    moments = optax.tree_utils.tree_get_all_with_path(state["opt_state"], "mu")  # (1 - beta1) x the gradient
    got = {}
    for _, mu in moments:
        got.update({jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(mu)})
    temporal = 0
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        key = jax.tree_util.keystr(path)
        np.testing.assert_allclose(got[key] / 0.1, g, rtol=1e-4, atol=1e-5 * np.abs(g).max(), err_msg=key)
        temporal += "temporal" in key and np.abs(g).max() > 0
    assert temporal >= 4  # the temporal modules learn


def _losses(log):
    return {e["step"]: e["loss"] for e in map(json.loads, Path(log).read_text().splitlines()) if "loss" in e}


def test_finetune_on_clips_checkpoints_and_resumes(videos, model_file, tmp_path):
    flags = ["--steps", "3", "--batch-size", "2", "--size", "56", "--lr", "2e-4", "--seed", "1", "--frames", "3",
             "--save-every", "2", "--no-progress"]
    out = tmp_path / "a.safetensors"
    assert main(["finetune", str(model_file), "--data", str(videos), "--val-data", str(videos), "-o", str(out),
                 *flags]) == 0
    uninterrupted = _losses(f"{out}.log.jsonl")
    assert sorted(uninterrupted) == [1, 2, 3] and all(np.isfinite(v) for v in uninterrupted.values())
    val = [e["val"] for e in map(json.loads, Path(f"{out}.log.jsonl").read_text().splitlines()) if "val" in e]
    assert len(val) == 1 and np.isfinite(val[0]["abs_rel"])
    ckpt = Path(f"{out}.ckpt")
    shutil.rmtree(ckpt / "3")  # as if killed after the checkpoint of update 2
    resumed = tmp_path / "b.safetensors"
    assert main(["finetune", str(model_file), "--data", str(videos), "-o", str(resumed), "--checkpoints", str(ckpt),
                 "--resume", *flags]) == 0
    again = _losses(f"{resumed}.log.jsonl")
    assert sorted(again) == [3] and again[3] == pytest.approx(uninterrupted[3], rel=1e-6)
    a, b = load_checkpoint(out), load_checkpoint(resumed)
    assert a.config == b.config and a.config.is_temporal
    for x, y in zip(*(jax.tree_util.tree_leaves(c.params) for c in (a, b)), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
