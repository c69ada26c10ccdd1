"""The converter: manifests of the six released checkpoints, converted files, and refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import dpt_jax
from dpt_jax import checkpoint, cli
from dpt_jax.convert import keys
from dpt_jax.convert.files import read_state_dict
from dpt_jax.convert.safetensors_io import read_safetensors_metadata
from dpt_jax.dpt import param_shapes
from dpt_jax.errors import CheckpointError, ConversionError
from dpt_jax.registry import PRESETS, detect_config
from helpers import FIXTURES, MANIFESTS, nchw_to_nhwc


class ShapeOnly:
    """A state-dict entry that has a shape and no data (reading it is a test failure)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def read(self):
        raise AssertionError("the manifest checks must not read tensor data")


def check(state, config):
    return keys.check_state_dict(state, config.family.key_table(config), config.family.skipped(config),
                                 param_shapes(config))


def skipped(state, config):
    return keys.skipped_keys(state, config.family.skipped(config))


def manifest_state(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    return manifest, {e["key"]: ShapeOnly(e["shape"]) for e in manifest["state_dict"]}


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if (MANIFESTS / f"{n}.json").is_file()))
def test_manifest_detects_preset_and_fits_model(name):  # the MiDaS six; Depth Anything's nine: test_dinov2.py
    manifest, state = manifest_state(name)
    config = detect_config(state, name)
    assert config == PRESETS[name]
    assert check(state, config) == []
    # What is skipped is exactly the unused parameters plus the buffers the manifest lists.
    buffers = {e["key"] for e in manifest["state_dict"] if e["kind"] == "buffer"}
    assert set(skipped(state, config)) == set(manifest["unused_parameters_in_forward"]) | buffers
    # The table covers every used parameter, and the model's parameter count is the original's minus the unused.
    table = config.family.key_table(config)
    assert {e.source for e in table} == set(state) - set(skipped(state, config))
    unused = sum(int(np.prod(state[k].shape)) for k in manifest["unused_parameters_in_forward"])
    count = sum(int(np.prod(s)) for s in param_shapes(config).values())
    assert count == manifest["parameter_count"] - unused


def test_manifest_problems_are_listed_together():
    _, state = manifest_state("dpt_beit_base_384")
    config = PRESETS["dpt_beit_base_384"]
    del state["pretrained.model.blocks.3.mlp.fc1.bias"]
    del state["scratch.output_conv.4.weight"]
    state["pretrained.model.blocks.0.extra"] = ShapeOnly((3,))
    state["scratch.layer2_rn.weight"] = ShapeOnly((256, 191, 3, 3))
    problems = "\n".join(check(state, config))
    assert "2 missing" in problems and "blocks.3.mlp.fc1.bias" in problems and "output_conv.4.weight" in problems
    assert "1 unexpected" in problems and "blocks.0.extra" in problems
    assert "1 mis-shaped" in problems and "layer2_rn.weight" in problems


def test_unknown_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="not a checkpoint of a known DPT model.*Hugging Face"):
        detect_config({"backbone.embeddings.cls_token": ShapeOnly((1, 1, 8))}, "x.pt")


@pytest.fixture
def copy_fixture(tmp_path):
    def make(name):
        dst = tmp_path / name
        dst.write_bytes((FIXTURES / name).read_bytes())
        return dst
    return make


def test_converted_round_trip_is_bit_exact(tmp_path):
    reference = np.load(FIXTURES / "mini_beit.npz")
    x = nchw_to_nhwc(reference["tall_odd__input"])
    original = dpt_jax.load(FIXTURES / "mini_beit.pt")
    out = tmp_path / "mini_beit.safetensors"
    original.save(out)
    assert checkpoint.is_converted(out) and not checkpoint.is_converted(FIXTURES / "mini_beit.safetensors")
    loaded = dpt_jax.load(out)
    assert loaded.config == original.config
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(original.apply(x)))


def test_cli_convert_reports_variant_and_skips(tmp_path, capsys):
    out = tmp_path / "beit.safetensors"
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "custom_beit (MiDaS v3.1 DPT-BEiT)" in text
    count = sum(int(np.prod(s)) for s in param_shapes(dpt_jax.load(out).config).values())
    assert f"{count:,}" in text
    assert "skipped:    16 keys" in text  # 8 relative_position_index buffers + fc_norm, head, refinenet4.resConfUnit1
    assert [p.name for p in tmp_path.iterdir()] == ["beit.safetensors"]


def test_wrong_keys_are_listed_with_the_file_name(tmp_path):
    state = {k: v.read() for k, v in read_state_dict(FIXTURES / "mini_beit.safetensors").items()}
    del state["scratch.refinenet2.out_conv.bias"]
    state["pretrained.model.blocks.0.attn.mystery"] = np.zeros(3, np.float32)
    state["scratch.layer1_rn.weight"] = np.zeros((16, 15, 3, 3), np.float32)
    bad = tmp_path / "bad_keys.safetensors"
    checkpoint.write_safetensors(bad, state, {})
    with pytest.raises(ConversionError) as err:
        dpt_jax.load(bad)
    text = str(err.value)
    assert "bad_keys.safetensors" in text
    assert "refinenet2.out_conv.bias" in text and "attn.mystery" in text and "layer1_rn.weight" in text


def test_converted_file_with_wrong_shape_is_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    dpt_jax.load(FIXTURES / "mini_beit.pt").save(good)
    state = {k: v.read() for k, v in read_state_dict(good).items()}
    state["head/conv3/kernel"] = np.zeros((1, 1, 32, 2), np.float32)
    bad = tmp_path / "bad_shape.safetensors"
    checkpoint.write_safetensors(bad, state, read_safetensors_metadata(good))
    with pytest.raises(ConversionError, match=r"bad_shape.safetensors.*\n.*mis-shaped.*\n.*head/conv3/kernel"):
        dpt_jax.load(bad)


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    data = (FIXTURES / "mini_beit.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        dpt_jax.load(bad)
    assert cli.main(["convert", str(bad), "-o", str(tmp_path / "out.safetensors")]) == 1
    assert "truncated.pt" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt.*no such file"):
        dpt_jax.load(tmp_path / "nope.pt")


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the data was written to the temporary file
    arrays = {"a": np.ones((64, 64), np.float32), "b": np.arange(10)}
    with pytest.raises(OSError, match="No space"):
        checkpoint.write_safetensors(tmp_path / "out.safetensors", arrays, {})
    assert os.listdir(tmp_path) == []


def test_conversion_reads_only_the_tensors_the_model_uses():
    state = read_state_dict(FIXTURES / "mini_beit.pt")
    read = []

    class Counting:
        def __init__(self, ref):
            self.ref, self.shape = ref, ref.shape

        def read(self):
            read.append(self.ref.key)
            return self.ref.read()

    config = detect_config(state)
    checkpoint.convert_state_dict({k: Counting(v) for k, v in state.items()}, config)
    assert set(read) == {e.source for e in config.family.key_table(config)}
    assert not [k for k in read if "relative_position_index" in k or "head." in k or "fc_norm" in k]


def test_cli_convert_records_overridden_pretrained_windows(tmp_path, capsys):
    out = tmp_path / "pw.safetensors"
    src = str(FIXTURES / "mini_swin2_pw.pt")
    assert cli.main(["convert", src, "-o", str(out), "--pretrained-window-sizes", "4,4,4,2"]) == 0
    assert "pretrained window sizes: (4, 4, 4, 2)" in capsys.readouterr().out
    model = dpt_jax.load(out)  # no override needed any more: it is in the file's config
    assert model.config.encoder.pretrained_window_sizes == (4, 4, 4, 2)
    reference = np.load(FIXTURES / "mini_swin2_pw.npz")
    depth = model.apply(nchw_to_nhwc(reference["native__input"]))
    err = np.abs(np.asarray(depth) - reference["native__depth"]).max() / np.abs(reference["native__depth"]).max()
    assert err < 2e-3
    # Without the override, a SwinV2 checkpoint of no released architecture is refused (its windows
    # cannot be guessed), and the wrong windows would be visibly wrong.
    with pytest.raises(CheckpointError, match="mini_swin2_pw.pt.*pretrained window sizes are not stored"):
        dpt_jax.load(src)
    zeros = dpt_jax.load(src, pretrained_window_sizes=(0, 0, 0, 0))
    wrong = zeros.apply(nchw_to_nhwc(reference["native__input"]))
    ref = reference["native__depth"]
    assert np.abs(np.asarray(wrong) - ref).max() / np.abs(ref).max() > 10 * 2e-3


def test_cli_rejects_malformed_window_sizes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", str(FIXTURES / "mini_swin2_pw.pt"), "-o", str(tmp_path / "x.safetensors"),
                  "--pretrained-window-sizes", "4,x"])
    assert exit_.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
