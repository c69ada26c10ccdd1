"""Fine-tuning learns: a tiny Depth Anything mini with random weights, fine-tuned on views of the example scene
rendered with exact depth (examples/training_scenes.py), at least halves its AbsRel on held-out views."""

import importlib.util
from pathlib import Path

from dpt_jax import train
from dpt_jax.checkpoint import write_converted
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
    write_converted(tmp_path / "tiny.safetensors", config, random_params(config, seed=0))
    recipe = train.Recipe(steps=150, batch_size=4, size=42, lr=1e-3, seed=0)
    before = train.evaluate(train.Trainer(config, recipe), train.cast_params(random_params(config, seed=0)),
                            open_dataset("folder", tmp_path / "val"), recipe.size)
    result = train.finetune(tmp_path / "tiny.safetensors", tmp_path / "train", tmp_path / "out.safetensors",
                            recipe=recipe, val_data=tmp_path / "val", progress=False)
    assert result["step"] == 150
    assert result["val"]["abs_rel"] <= 0.5 * before["abs_rel"], (before["abs_rel"], result["val"]["abs_rel"])
