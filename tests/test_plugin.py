"""A new encoder family plugs in at run time, touching no file of dpt-jax.

The toy family below is everything a family is (family.py): a few lines of Flax, its key table,
its detection and its Hugging Face layout. Registered with `dpt_jax.register_family`, it goes
through convert, load by file and by Hugging Face folder, predict, save_pretrained and export
like the released families. A new output format is likewise one registry entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import dpt_jax
from dpt_jax import cli, output, registry
from dpt_jax.config import DPTConfig, bounded, checked_fields
from dpt_jax.convert import hf, keys, midas
from dpt_jax.convert.safetensors_io import write_safetensors
from dpt_jax.dpt import param_shapes
from dpt_jax.errors import ConversionError
from dpt_jax.family import EncoderFamily, HFLayout
from dpt_jax.layers import Conv, Dense


@dataclass(frozen=True)
class ToyConfig:
    embed_dim: int = bounded(1, 1024)
    patch_size: int = bounded(1, 64, default=8)

    def __post_init__(self):
        checked_fields(self)


class ToyEncoder(nn.Module):
    """Patch embedding, a cls token, then four residual tanh-Dense steps: one token sequence per hook."""

    config: ToyConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        c, p = self.config, self.config.patch_size
        x = Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype_mm, name="patch")(images)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C)
        cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, c.embed_dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.embed_dim)), x], axis=1)  # (B, 1 + h*w, C)
        outputs = []
        for i in range(4):
            x = x + Dense(c.embed_dim, dtype=self.dtype_mm, name=f"step_{i}")(jnp.tanh(x))
            outputs.append(x)
        return outputs


def toy_dpt(name: str, embed_dim: int) -> DPTConfig:
    return DPTConfig(name=name, encoder=ToyConfig(embed_dim), reassembly_features=(8, 16, 16, 16),
                     reassemble_factors=(4, 2, 1, 0.5), readout="ignore", native_size=(64, 64),
                     fusion_features=16, head_features=8)


def key_table(config):
    t = [keys.Entry("toy.cls", "encoder/cls", "copy")] + keys.conv("toy.patch", "encoder/patch")
    for i in range(4):
        t += keys.linear(f"toy.steps.{i}", f"encoder/step_{i}")
    return t + midas.neck_table(config)  # the MiDaS names of the DPT neck


def detect_config(state, path, **options):
    if "toy.cls" not in state:
        raise ConversionError(path, "not a toy checkpoint")
    config = toy_dpt("custom_toy", state["toy.cls"].shape[-1])
    return config.replace(reassembly_features=tuple(state[f"pretrained.act_postprocess{i}.3.weight"].shape[0]
                                                    for i in range(1, 5)), **midas.neck_widths(state, path))


def parse_hf(top, backbone):
    return hf.HFModel(top.path, {}, None)


def hf_config_json(config):
    return {"model_type": "toy_dpt", "architectures": ["ToyForDepthEstimation"],
            "backbone_config": {"model_type": "toy", "hidden_size": config.encoder.embed_dim}}


HF_RULES = (hf.Rename("toy.cls", "backbone.cls"), hf.same_names("toy.patch", "backbone.patch"),
            hf.same_names("toy.steps.{i}", "backbone.steps.{i}"), *midas.hf_neck_rules())

TOY = EncoderFamily(
    name="toy", title="Toy DPT", config_class=ToyConfig, encoder=ToyEncoder, outputs_tokens=True,
    presets=(toy_dpt("toy_small", 32),), input_multiple=lambda c: c.patch_size,
    recognises=lambda state: "toy.cls" in state, detect_config=detect_config, key_table=key_table,
    skipped=lambda config: midas.unused_fusion_units(config, "scratch.refinenet{i}"),
    encoder_flops=lambda *a: None,
    hf=HFLayout(model_type="toy_dpt", backbone_type="toy", architecture="ToyForDepthEstimation", rules=HF_RULES,
                parse=parse_hf, config_json=hf_config_json),
)


@pytest.fixture(scope="module")
def toy():
    registry.register_family(TOY)
    try:
        yield TOY
    finally:
        registry.unregister_family(TOY.name)


@pytest.fixture(scope="module")
def original(toy, tmp_path_factory):
    """An "original" toy checkpoint (the toy's own key names) with random, non-zero weights."""
    config = toy.presets[0]
    rng = np.random.default_rng(0)
    params = traverse_util.unflatten_dict({k: rng.normal(0, 0.5, s).astype(np.float32)
                                           for k, s in param_shapes(config).items()}, sep="/")
    path = tmp_path_factory.mktemp("toy") / "toy_small.safetensors"
    write_safetensors(path, hf.original_state(config, params), {"format": "pt"})
    return path, params


def picture():
    return np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)


def test_a_family_registered_at_run_time_goes_through_every_path(toy, original, tmp_path):
    path, params = original
    model = dpt_jax.load(path)
    assert model.config == toy.presets[0] and model.config.family is toy  # detected, then taken as the preset
    flat = traverse_util.flatten_dict(params, sep="/")
    assert all(np.array_equal(np.asarray(v), flat[k]) for k, v in traverse_util.flatten_dict(
        model.params, sep="/").items())

    depth = model.predict(picture())
    assert depth.shape == (50, 70) and np.isfinite(depth).all() and depth.std() > 0

    # convert: the CLI's way, then load the converted file
    converted = tmp_path / "toy.safetensors"
    assert cli.main(["convert", str(path), "-o", str(converted)]) == 0
    np.testing.assert_array_equal(dpt_jax.load(converted).predict(picture()), depth)

    # a Hugging Face folder written by save_pretrained, and read back through the family's layout
    folder = tmp_path / "toy-hf"
    model.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "toy_dpt"
    np.testing.assert_array_equal(dpt_jax.load(folder).predict(picture()), depth)

    # export: a StableHLO program that computes what dpt-jax does
    from dpt_jax import export

    spec = export.export(model, tmp_path / "toy.stablehlo", size=(64, 96), batch=1)
    assert export.verify(model, tmp_path / "toy.stablehlo", spec) < 1e-5


def test_an_unregistered_family_is_unknown(original):
    path, _ = original
    registry.unregister_family(TOY.name)
    try:
        with pytest.raises(ConversionError, match="none of them recognises"):
            dpt_jax.load(path)
    finally:
        registry.register_family(TOY)


def test_a_new_output_format_is_one_registry_entry(tmp_path):
    fmt = output.register_format(output.Format("raw", "-depth.raw", "raw float32 bytes",
                                               lambda f, d, p, m: f.write(np.asarray(d, "<f4").tobytes())))
    try:
        picture_path = tmp_path / "p.png"
        from PIL import Image

        Image.fromarray(picture()).save(picture_path)
        from helpers import FIXTURES

        assert cli.main(["predict", str(picture_path), "-m", str(FIXTURES / "mini_beit.pt"), "-f", "raw,npy",
                         "-o", str(tmp_path / "out"), "-q"]) == 0
        raw = np.frombuffer((tmp_path / "out" / "p-depth.raw").read_bytes(), "<f4")
        np.testing.assert_array_equal(raw.reshape(50, 70), np.load(tmp_path / "out" / "p-depth.npy"))
    finally:
        output.FORMATS.pop(fmt.name)


def test_a_format_with_frames_is_a_video_output_too(tmp_path):
    """Registering a format with `frames` makes it a --frames choice of videos, written by the video path."""
    from test_video import make_video

    from dpt_jax import video
    from helpers import FIXTURES

    class RawFrames:  # each frame's raw depth appended to one file
        takes = "depth"

        def __init__(self, path, size, replace):
            self.path, self.file = path, open(path, "wb")

        def write(self, depth):
            self.file.write(np.asarray(depth, "<f4").tobytes())

        def commit(self):
            self.file.close()

        discard = commit

    fmt = output.register_format(output.Format("raw", "-depth.raw", "raw float32 bytes", None,
                                               frames=RawFrames, frames_ending="-depth.raw"))
    try:
        assert "raw" in cli.build_parser().parse_args(["predict", "x.mp4", "--frames", "raw"]).frames
        model = dpt_jax.load(FIXTURES / "mini_beit.pt")
        clip = make_video(tmp_path / "clip.mp4", frames=3)
        video.predict_video(model, clip, None, frames_format="npy", frames_path=tmp_path / "a.npy")
        video.predict_video(model, clip, None, frames_format="raw", frames_path=tmp_path / "a.raw")
        stack = np.load(tmp_path / "a.npy")
        raw = np.frombuffer((tmp_path / "a.raw").read_bytes(), "<f4").reshape(stack.shape)
        np.testing.assert_array_equal(raw, stack)
    finally:
        output.FORMATS.pop(fmt.name)
