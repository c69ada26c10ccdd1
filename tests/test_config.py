"""Configs are validated field by field: presets, and above all the config stored in a converted file (untrusted)."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest

import dpt_jax
from dpt_jax.config import DPTConfig
from dpt_jax.convert.files import read_state_dict
from dpt_jax.convert.safetensors_io import read_safetensors_metadata, write_safetensors
from dpt_jax.dpt import param_shapes
from dpt_jax.errors import CheckpointError, ConfigError
from dpt_jax.registry import FAMILIES, MINI_CONFIGS, PRESETS, config_from_json
from helpers import FIXTURES


def test_every_preset_and_mini_round_trips_through_json():
    for config in list(PRESETS.values()) + list(MINI_CONFIGS.values()):
        assert config_from_json(config.to_json()) == config


def test_every_family_names_its_config_class():
    for name, family in FAMILIES.items():
        assert family.name == name and family.config_class.family is family
        for preset in family.presets:
            assert preset.family is family


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp("converted") / "mini_beit.safetensors"
    dpt_jax.load(FIXTURES / "mini_beit.pt").save(path)
    return path


def tampered(converted, tmp_path, edit):
    """A copy of the converted file whose metadata config was changed by edit(dict)."""
    meta = read_safetensors_metadata(converted)
    config = json.loads(meta["config"])
    edit(config)
    state = {k: v.read() for k, v in read_state_dict(converted).items()}
    out = tmp_path / "tampered.safetensors"
    write_safetensors(out, state, {**meta, "config": json.dumps(config)})
    return out


def _set(*path_and_value):
    *path, value = path_and_value

    def edit(d):
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return edit


def _delete(key):
    return lambda d: d.pop(key)


# (edit, what the error must name): each was a traceback, a hang, an allocation or silent acceptance.
TAMPERED = {
    "huge native size": (_set("native_size", [40000, 40000]), "native_size"),
    "huge depth": (_set("encoder", "depth", 10**9), "depth"),
    "huge width": (_set("encoder", "embed_dim", 10**9), "embed_dim"),
    "string for bool": (_set("keep_aspect_ratio", "no"), "keep_aspect_ratio"),
    "negative window": (_set("encoder", "native_grid", [-8, 8]), "native_grid"),
    "float for int": (_set("fusion_features", 64.5), "fusion_features"),
    "bool for int": (_set("head_features", True), "head_features"),
    "wrong length": (_set("reassembly_features", [32, 64, 128]), "reassembly_features"),
    "bad choice": (_set("readout", "cls"), "readout"),
    "bad factor": (_set("reassemble_factors", [3, 2, 1, 0.5]), "reassemble_factors"),
    "nan": (_set("encoder", "layer_norm_eps", float("nan")), "layer_norm_eps"),
    "missing field": (_delete("native_size"), "native_size"),
    "unknown field": (_set("surprise", 1), "surprise"),
    "unknown family": (_set("encoder", "family", "vit_hybrid"), "family"),
    "hooks past depth": (_set("encoder", "hooks", [0, 1, 2, 40]), "hooks"),
    "heads do not divide": (_set("encoder", "num_heads", 5), "num_heads"),
    "nested list bomb": (_set("native_size", [[[[[1]]]]]), "native_size"),
    "not an object": (lambda d: d.update(encoder=[1, 2]), "encoder"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_config_is_refused_naming_the_file_and_the_field(converted, tmp_path, case):
    edit, field = TAMPERED[case]
    bad = tampered(converted, tmp_path, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        dpt_jax.load(bad)
    message = str(err.value)
    assert "tampered.safetensors" in message and field in message, message
    assert time.perf_counter() - start < 10  # nothing is traced at a declared size
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big is allocated


def test_unreadable_config_json_is_refused(converted, tmp_path):
    meta = read_safetensors_metadata(converted)
    state = {k: v.read() for k, v in read_state_dict(converted).items()}
    bad = tmp_path / "bad_json.safetensors"
    write_safetensors(bad, state, {**meta, "config": "{" * 100000})
    with pytest.raises(CheckpointError, match="bad_json.safetensors.*not valid JSON"):
        dpt_jax.load(bad)


def test_parameter_shapes_need_no_allocation_at_the_native_size():
    # A config that declares an enormous native size is valid as a model (any input size works),
    # and computing its parameter shapes must not allocate an input of that size.
    config = MINI_CONFIGS["mini_beit"].replace(native_size=(4096, 4096))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shapes = param_shapes(config)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert shapes == param_shapes(MINI_CONFIGS["mini_beit"])


def test_constructing_a_bad_config_fails_at_once():
    good = MINI_CONFIGS["mini_beit"]
    with pytest.raises(ConfigError, match="fusion_residual"):
        good.replace(fusion_residual=(True, True, True, True))
    with pytest.raises(ConfigError, match="max_depth"):
        good.replace(depth_activation="sigmoid")
    assert good.replace(depth_activation="sigmoid", max_depth=20.0).is_metric
    assert isinstance(good, DPTConfig) and not good.is_metric
    np.testing.assert_equal(good.input_multiple, 16)
