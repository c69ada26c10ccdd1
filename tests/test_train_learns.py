"""Fine-tuning learns: a tiny Depth Anything mini with random weights, fine-tuned on views of the example scene
rendered with exact depth (examples/training_scenes.py), at least halves its AbsRel on held-out views.

The train step is the one finetune runs (train.train_step on Trainer's state and micro-batches), compiled with
XLA's quick CPU code generation (the same operations, a third of the compile time)."""

import importlib.util
from pathlib import Path

from dpt_jax import train
from dpt_jax.datasets import open_dataset
from dpt_jax.timing import random_params
from helpers import tiny_da2_metric

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_finetuning_halves_the_held_out_abs_rel(tmp_path):
    spec = importlib.util.spec_from_file_location("training_scenes", EXAMPLES / "training_scenes.py")
    scenes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scenes)
    scenes.write_views(tmp_path / "train", 24, 56, 42, seed=0)
    scenes.write_views(tmp_path / "val", 4, 56, 42, seed=1)  # other cameras
    config = tiny_da2_metric()
    recipe = train.Recipe(steps=150, batch_size=4, size=42, lr=1e-3, seed=0)
    trainer = train.Trainer(config, recipe)
    samples, val = open_dataset("folder", tmp_path / "train"), open_dataset("folder", tmp_path / "val")
    state = trainer.init(random_params(config, seed=0))
    before = train.evaluate(trainer, state["params"], val, recipe.size)["abs_rel"]
    make = lambda p: train.micro_batch(config, recipe, samples, p)  # noqa: E731
    step = train.train_step.lower(config, train.step_recipe(recipe), state, *make(0)).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    for batch in train.batches_ahead(make, 0, recipe.steps):
        state, loss = step(state, *batch)
    after = train.evaluate(trainer, state["params"], val, recipe.size)["abs_rel"]
    assert int(state["step"]) == 150
    assert after <= 0.5 * before, (before, after)
