"""Fine-tuning on a Depth Anything mini (random weights) and a tiny generated folder: it learns, accumulation
and rematerialisation change nothing, a resumed run equals an uninterrupted one, the CLI writes a loadable model.

The mini is the metric reference mini cut to its first four blocks (hooks 0-3): the mechanics are the same, and
each compiled gradient costs a third less."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dpt_jax import registry, train
from dpt_jax.checkpoint import convert_state_dict, load_checkpoint, write_converted
from dpt_jax.cli import main
from dpt_jax.convert import hf
from dpt_jax.datasets import open_dataset
from dpt_jax.errors import ConfigError, DatasetError

REFERENCE_MINI = Path(__file__).parent / "fixtures" / "depth_anything" / "mini_da2_metric.safetensors"
RECIPE = train.Recipe(steps=4, batch_size=2, size=28, lr=2e-4, seed=3)


@pytest.fixture(scope="module")
def mini_file(tmp_path_factory):
    """The four-block mini as a converted file (its config inside)."""
    full = load_checkpoint(REFERENCE_MINI, variant="mini_da2_metric")
    encoder = dataclasses.replace(full.config.encoder, depth=4, hooks=(0, 1, 2, 3))
    params = dict(full.params)
    params["encoder"] = {k: v for k, v in params["encoder"].items()
                         if not (k.startswith("blocks_") and int(k.split("_")[1]) >= 4)}
    path = tmp_path_factory.mktemp("mini") / "mini4.safetensors"
    write_converted(path, full.config.replace(name="mini4", encoder=encoder), params)
    return path


@pytest.fixture(scope="module")
def mini(mini_file):
    return load_checkpoint(mini_file)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three 20x30 pictures whose depth follows their brightness; one depth as a 16-bit PNG with a mask."""
    root = tmp_path_factory.mktemp("scenes")
    for sub in ("images", "depth", "mask"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate("abc"):
        shade = np.linspace(0, 1, 30)[None, :] * np.linspace(0.5, 1, 20)[:, None]  # (20, 30)
        shade = np.roll(shade, 7 * i, axis=1)
        picture = np.clip(shade[..., None] * [255, 200, 150] + rng.normal(0, 5, (20, 30, 3)), 0, 255)
        Image.fromarray(picture.astype(np.uint8)).save(root / "images" / f"{name}.png")
        depth = (1.0 + 6.0 * shade).astype(np.float32)  # metres
        if name == "c":
            Image.fromarray(np.round(depth * 256).astype(np.uint16)).save(root / "depth" / "c.png")
            mask = np.ones((20, 30), np.uint8) * 255
            mask[:5] = 0
            Image.fromarray(mask).save(root / "mask" / "c.png")
        else:
            np.save(root / "depth" / f"{name}.npy", depth)
    return root


def test_learning_rates_as_the_original():
    schedule = train.lr_schedule(5e-6, 10, 0.9)
    want = [5e-6, 5e-6] + [5e-6 * (1 - (n - 1) / 10) ** 0.9 for n in range(2, 11)]  # set after each step
    np.testing.assert_allclose([float(schedule(n)) for n in range(11)], want, rtol=1e-6)


def test_a_frozen_encoder_is_not_updated():
    import optax

    params = {"encoder": {"w": np.ones(3, np.float32)}, "head": {"w": np.ones(3, np.float32)}}
    grads = jax.tree_util.tree_map(lambda a: np.full_like(a, 0.5), params)
    for frozen in (False, True):
        tx = train.optimizer(RECIPE.replace(freeze_encoder=frozen))
        updates, _ = tx.update(grads, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        assert np.array_equal(new["encoder"]["w"], params["encoder"]["w"]) == frozen
        assert not np.array_equal(new["head"]["w"], params["head"]["w"])


def _split(batch):
    return [tuple(a[i:i + 1] for a in batch) for i in range(2)]


def test_accumulating_two_micro_batches_is_one_update_on_their_mean_gradient(mini, folder):
    import optax

    recipe = RECIPE.replace(batch_size=1, accumulate=2)
    halves = _split(train.micro_batch(mini.config, RECIPE, open_dataset("folder", folder), 0))
    trainer = train.Trainer(mini.config, recipe)
    state = trainer.init(mini.params)
    for half in halves:
        state, _ = trainer.step(state, half)
    single = recipe.replace(accumulate=1)
    params = train.cast_params(mini.params)
    grads = [train.loss_and_grads(mini.config, single, params, *h)[1] for h in halves]
    tx = train.optimizer(single)

    @jax.jit
    def one_update(a, b, params):  # the reference: one plain update on the mean of the two gradients
        mean = jax.tree_util.tree_map(lambda x, y: (x + y) / 2, a, b)
        updates, state = tx.update(mean, tx.init(params), params)
        return optax.apply_updates(params, updates), state, mean

    want, ref_state, mean = one_update(*grads, params)
    # Adam's first moment after one update is 0.1 x the gradient it was given: the mean of the two, exactly
    got_mu = optax.tree_utils.tree_get_all_with_path(state["opt_state"], "mu")
    ref_mu = optax.tree_utils.tree_get_all_with_path(ref_state, "mu")
    assert len(got_mu) == len(ref_mu) == 2  # encoder and the rest
    for (_, g), (_, r) in zip(got_mu, ref_mu):
        for x, y in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(r)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6 * np.abs(y).max())
    # and the parameters moved as that one update moves them. Adam's first step is lr * g / (|g| + 1e-8): where
    # the two halves' gradients cancel to within 1e-7 of each other, float rounding of the mean decides the step,
    # so those elements (checked through the first moment above) are left out; a wrong mix flips whole updates.
    moved = compared = total = 0
    leaves = (jax.tree_util.tree_leaves(t) for t in (state["params"], want, params, mean))
    for got, ref, before, g in zip(*leaves):
        step_got, step_ref = np.asarray(got) - before, np.asarray(ref) - before
        clear = np.abs(np.asarray(g)) > 1e-7
        # atol: a step is a difference of parameters, each rounded to float32 (a few ulps of |params| ~ 1)
        np.testing.assert_allclose(step_got[clear], step_ref[clear], rtol=1e-6, atol=1e-3 * np.abs(step_ref).max())
        moved += np.abs(step_ref).max() > 0
        compared, total = compared + clear.sum(), total + clear.size
    assert moved > 10 and compared > 0.8 * total


def test_remat_gives_the_same_gradients(mini, folder):
    single = RECIPE.replace(batch_size=1)
    half = _split(train.micro_batch(mini.config, RECIPE, open_dataset("folder", folder), 0))[0]
    params = train.cast_params(mini.params)
    loss, grads = train.loss_and_grads(mini.config, single, params, *half)
    loss_r, grads_r = train.loss_and_grads(mini.config, single.replace(remat=True), params, *half)
    jaxpr = str(jax.make_jaxpr(jax.grad(train.batch_loss, argnums=2), static_argnums=(0, 1))(
        mini.config, single.replace(remat=True), params, *half))
    assert "checkpoint" in jaxpr or "remat" in jaxpr  # the blocks really are rematerialised
    assert float(loss) == float(loss_r)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_r)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6 * float(jnp.abs(a).max()))


def _losses(log):
    return {e["step"]: e["loss"] for e in map(json.loads, Path(log).read_text().splitlines()) if "loss" in e}


def test_resumed_run_equals_uninterrupted_and_cli_writes_a_loadable_model(mini, mini_file, folder, tmp_path):
    recipe = RECIPE.replace(save_every=2)
    out = tmp_path / "a.safetensors"
    result = train.finetune(mini_file, folder, out, recipe=recipe, val_data=folder, progress=False)
    assert result["step"] == 4 and set(result["val"]) >= {"abs_rel", "delta1", "rmse"}
    assert all(np.isfinite(v) for v in result["val"].values())
    uninterrupted = _losses(f"{out}.log.jsonl")
    assert sorted(uninterrupted) == [1, 2, 3, 4]
    ckpt = Path(f"{out}.ckpt")
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "4"]
    with pytest.raises(ConfigError, match="resume"):  # never a silent restart over an earlier run
        train.finetune(mini_file, folder, tmp_path / "x.safetensors", recipe=recipe, checkpoint_dir=ckpt,
                       progress=False)
    shutil.rmtree(ckpt / "4")  # as if killed after the checkpoint of update 2
    resumed = tmp_path / "b.safetensors"
    code = main(["finetune", str(mini_file), "--data", str(folder), "-o", str(resumed),
                 "--steps", "4", "--batch-size", "2", "--size", "28", "--lr", "2e-4", "--seed", "3",
                 "--save-every", "2", "--checkpoints", str(ckpt), "--resume", "--no-progress"])
    assert code == 0
    again = _losses(f"{resumed}.log.jsonl")
    assert sorted(again) == [3, 4]
    np.testing.assert_allclose([again[3], again[4]], [uninterrupted[3], uninterrupted[4]], rtol=1e-6)
    a, b = load_checkpoint(out), load_checkpoint(resumed)  # converted files, as predict -m reads them
    assert a.config == b.config == mini.config
    for x, y, z in zip(*(jax.tree_util.tree_leaves(c.params) for c in (a, b, mini))):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(x, z) for x, z in zip(*(jax.tree_util.tree_leaves(c.params) for c in (a, mini))))
    # the Hugging Face layout beside each: transformers' names and config.json, read back to the same parameters
    assert result["hf"] == tmp_path / "a-hf" and (tmp_path / "b-hf" / "config.json").is_file()
    source = hf.read(result["hf"], registry.FAMILIES.values())
    assert source.model.hooks == mini.config.encoder.hooks
    back = convert_state_dict(source.state, mini.config, source.path, shown=source.shown).params
    for x, y in zip(*(jax.tree_util.tree_leaves(p) for p in (a.params, back)), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_data_is_named(mini, mini_file, tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="depth"):
        train.finetune(mini_file, tmp_path, tmp_path / "o.safetensors", recipe=RECIPE, progress=False)
    taken = tmp_path / "o-hf"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="o-hf: exists and is not an earlier dpt-jax export"):
        train.finetune(mini_file, tmp_path, tmp_path / "o.safetensors", recipe=RECIPE, progress=False)
    with pytest.raises(ConfigError, match="multiple of 14"):
        train.Trainer(mini.config, RECIPE.replace(size=30))


def test_eval_dataset_layouts_train_as_eval_names_them(mini_file, folder, tmp_path):
    """--dataset takes eval's layouts: the same three pictures as DIODE files train exactly as the folder does."""
    diode = tmp_path / "diode" / "val" / "indoors"
    diode.mkdir(parents=True)
    for sample in open_dataset("folder", folder):
        depth, valid = sample.load_truth()
        Image.fromarray(sample.picture.load()).save(diode / f"{sample.name}.png")
        np.save(diode / f"{sample.name}_depth.npy", depth[..., None])  # (H, W, 1) as DIODE's
        np.save(diode / f"{sample.name}_depth_mask.npy", valid.astype(np.float32))
    runs = {}
    for name, data in (("diode", tmp_path / "diode"), ("folder", folder)):
        out = tmp_path / f"{name}.safetensors"
        assert main(["finetune", str(mini_file), "--data", str(data), "--dataset", name, "-o", str(out), "--no-hf",
                     "--val-data", str(folder), "--val-dataset", "folder", "--steps", "4", "--batch-size", "2",
                     "--size", "28", "--lr", "2e-4", "--seed", "3", "--no-progress"]) == 0
        runs[name] = _losses(f"{out}.log.jsonl")
    assert runs["diode"] == runs["folder"] and len(runs["diode"]) == 4
