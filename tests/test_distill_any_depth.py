"""Distill-Any-Depth: Depth Anything V2's network with other weights, in two file layouts.

Their Small and Base files are saved from their copy of DepthAnythingV2 (Depth Anything V2's
keys, `pretrained.*` / `depth_head.*`); their Large files from their own `dam.DepthAnything`,
which keeps the DINOv2 under `backbone.` with all blocks in one chunk (`backbone.blocks.0.<i>.*`)
and the same DPT head. No released file is reachable here, so the test builds files of both
layouts from the Depth Anything V2 reference mini (whose network is the same) and checks that
they convert and run exactly as that mini, and that the full-size Large key set fits dad_vitl.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import dpt_jax
from dpt_jax import preprocess, registry
from dpt_jax.convert import keys
from dpt_jax.convert.files import read_state_dict
from dpt_jax.convert.safetensors_io import write_safetensors
from dpt_jax.dpt import param_shapes
from helpers import FIXTURES, run_with_intermediates

DA = FIXTURES / "depth_anything"


def large_layout(key: str) -> str:
    """A Depth Anything V2 key as Distill-Any-Depth Large's dam.DepthAnything names it."""
    if m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.*)", key):
        return f"backbone.blocks.0.{m.group(1)}.{m.group(2)}"
    return "backbone." + key[len("pretrained."):] if key.startswith("pretrained.") else key


class ShapeOnly:
    def __init__(self, shape):
        self.shape = tuple(shape)


@pytest.fixture(scope="module")
def mini():
    return dpt_jax.load(DA / "mini_da2.safetensors", variant="mini_da2")


@pytest.mark.parametrize("layout", ["small_base", "large"])
def test_files_in_their_layouts_convert_and_run(layout, mini, tmp_path):
    state = {k: v.read() for k, v in read_state_dict(DA / "mini_da2.safetensors").items()}
    if layout == "large":
        state = {large_layout(k): v for k, v in state.items()}
        assert "backbone.blocks.0.7.ls2.gamma" in state and not any(k.startswith("pretrained.") for k in state)
    path = tmp_path / "model.safetensors"  # their file name, which tells no variant
    write_safetensors(path, state, {"format": "pt"})
    with pytest.raises(dpt_jax.errors.ConversionError, match="Choose its variant"):
        dpt_jax.load(path)
    model = dpt_jax.load(path, variant="mini_da2")
    x = np.asarray(preprocess.to_network(mini.config, np.random.default_rng(0).random((1, 42, 56, 3)), (42, 56)))
    assert model.config == mini.config  # one compiled program runs both (helpers.run_with_intermediates)
    np.testing.assert_array_equal(run_with_intermediates(model, x)["depth"], run_with_intermediates(mini, x)["depth"])


def test_full_size_large_keys_fit_dad_vitl():
    m = json.loads((DA / "manifests" / "da2_vitl.json").read_text())
    state = registry.source_keys({large_layout(e["key"]): ShapeOnly(e["shape"]) for e in m["state_dict"]})
    config = registry.detect_config(state, "large/model.safetensors", variant="dad_vitl")
    assert config is registry.PRESETS["dad_vitl"]
    family = config.family
    assert keys.check_state_dict(state, family.key_table(config), family.skipped(config), param_shapes(config)) == []


def test_presets_run_their_original_preprocessing():
    """infer.py / app.py: Resize(700, 700, keep_aspect_ratio=False, lower_bound, multiple 14, cubic) -> 700x700."""
    for name in ("dad_vits", "dad_vitb", "dad_vitl", "dad_da2_teacher_vitl"):
        config = registry.PRESETS[name]
        assert preprocess.network_size(config, (480, 640)) == (700, 700)
        assert config.encoder == registry.PRESETS[f"da2_{name[-4:]}"].encoder and not config.is_metric
