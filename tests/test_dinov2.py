"""Depth Anything's DINOv2 encoder, stage by stage against the original code (tests/fixtures/depth_anything).

The minis are tiny Depth Anything V2 models (relative and metric) built by the original code with
random weights; every intermediate was saved for five input sizes (one native, four that resize
the position table). Tolerances are the reference README's: 5e-5 * max|ref| per array, and 1e-5
absolute on the resized position table.

The whole-model check at the end uses a small Depth Anything neck/head assembled here from
dpt_jax.dpt's pieces (Fusion, ConvTransposeNonOverlapping) on the same parameter paths as the
MiDaS neck, to show which differences from MiDaS remain (see DepthAnythingMini).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import traverse_util

from dpt_jax.convert.depth_anything import SKIPPED, encoder_key_table, head_key_table, key_table, skipped_keys
from dpt_jax.convert.keys import _SHAPE_OF, LAYOUTS
from dpt_jax.convert.torch_zip import read_state_dict
from dpt_jax.dinov2 import (
    DA1_VITB, DA1_VITL, DA1_VITS, DA2_VITB, DA2_VITL, DA2_VITS, Dinov2Config, Dinov2Encoder, interpolate_pos_embed,
    scaled_cubic_taps,
)
from dpt_jax.dpt import ConvTransposeNonOverlapping, Fusion
from dpt_jax.resize import resample_axis, resize_bicubic, resize_bilinear
from helpers import FIXTURES, nchw_to_nhwc, rel_err

DA = FIXTURES / "depth_anything"
MINIS = ("mini_da2", "mini_da2_metric")
CASES = ("native", "wide", "up_square", "down_square", "tall")
SOURCES = ("pth", "safetensors")
TOL = 5e-5  # * max|ref|, every intermediate
POS_TOL = 1e-5  # absolute, the resized position table

ENCODER_ARRAYS = ("pos_embed", "tokens0", "feat1", "feat2", "feat3", "feat4", "cls1", "cls2", "cls3", "cls4")
NECK_ARRAYS = tuple(f"{n}{i}" for n in ("project", "reassemble", "rn", "fusion") for i in range(1, 5)) + (
    "head_conv1", "head_preact", "depth")


# ---------------------------------------------------------------------------------------------
# A small Depth Anything model on dpt_jax.dpt's pieces (the integrator's DPT will replace it)


class DepthAnythingMini(nn.Module):
    """DINOv2 -> reassemble (readout ignored) -> MiDaS fusion -> Depth Anything head; targets as convert.midas.

    Differences from MiDaS's DPT, all of them data: the cls token is dropped (no readout
    projection); the head's resize goes to (14h, 14w) instead of x2; the last activation is ReLU
    (relative: applied twice, harmless) or sigmoid * max_depth (metric).
    """

    encoder: Dinov2Config
    reassembly_features: tuple[int, ...]
    fusion_features: int
    head_features: int = 32
    max_depth: float | None = None  # None: relative

    @nn.compact
    def __call__(self, images):  # (B, H, W, 3)
        p = self.encoder.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        tokens = Dinov2Encoder(self.encoder, name="encoder")(images)  # 4 x (B, 1 + h*w, C)
        maps = DepthAnythingReassemble(self.reassembly_features, self.fusion_features, name="reassemble")(tokens, grid)
        fused = Fusion(name="fusion")(maps)  # (B, 8h, 8w, F)
        out_size = (p * grid[0], p * grid[1])
        return DepthAnythingHead(self.fusion_features, self.head_features, out_size, self.max_depth, name="head")(fused)


class DepthAnythingReassemble(nn.Module):
    reassembly_features: tuple[int, ...]
    fusion_features: int

    @nn.compact
    def __call__(self, tokens, grid):
        maps = []
        for i, t in enumerate(tokens, start=1):
            x = t[:, 1:].reshape(t.shape[0], *grid, t.shape[-1])  # cls ignored; (B, h, w, C)
            d = self.reassembly_features[i - 1]
            x = nn.Conv(d, (1, 1), name=f"project_{i}")(x)
            self.sow("intermediates", f"project{i}", x)
            if i == 1:
                x = ConvTransposeNonOverlapping(d, 4, name=f"resample_{i}")(x)  # (B, 4h, 4w, d)
            elif i == 2:
                x = ConvTransposeNonOverlapping(d, 2, name=f"resample_{i}")(x)  # (B, 2h, 2w, d)
            elif i == 4:
                x = nn.Conv(d, (3, 3), strides=2, padding=((1, 1), (1, 1)), name=f"resample_{i}")(x)
            self.sow("intermediates", f"reassemble{i}", x)
            x = nn.Conv(self.fusion_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f"to_fusion_{i}")(x)
            self.sow("intermediates", f"rn{i}", x)
            maps.append(x)
        return maps


class DepthAnythingHead(nn.Module):
    features: int
    hidden: int
    out_size: tuple[int, int]
    max_depth: float | None

    @nn.compact
    def __call__(self, x):  # (B, 8h, 8w, F)
        x = nn.Conv(self.features // 2, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        self.sow("intermediates", "head_conv1", x)
        x = resize_bilinear(x, self.out_size, align_corners=True)  # (B, 14h, 14w, F/2)
        x = nn.relu(nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x))
        x = nn.Conv(1, (1, 1), name="conv3")(x)
        self.sow("intermediates", "head_preact", x)
        if self.max_depth is None:
            return nn.relu(x)[..., 0]  # relative inverse depth (the original applies ReLU twice)
        return nn.sigmoid(x)[..., 0] * self.max_depth  # metric depth


# ---------------------------------------------------------------------------------------------
# Fixtures


def mini_model(name) -> DepthAnythingMini:
    a = json.loads((DA / f"{name}.json").read_text())["architecture"]
    encoder = Dinov2Config(
        embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"], mlp_hidden=a["mlp_hidden"],
        hooks=tuple(a["intermediate_layer_idx"]), native_grid=tuple(a["pos_embed_grid"]), patch_size=a["patch_size"],
        layer_norm_eps=a["layernorm_eps"], interpolate_offset=a["interpolate_offset"],
    )
    head = a["dpt_head"]
    return DepthAnythingMini(encoder, tuple(head["out_channels"]), head["features"], max_depth=a.get("max_depth"))


def params_from_state(state, table) -> dict:
    """Nested Flax params from a state dict through a key table (the integrator's converter does this for real)."""
    flat = {e.target: np.ascontiguousarray(LAYOUTS[e.layout](state[e.source].read())) for e in table}
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def loaded():
    """{(mini, source): (model, params)} for both minis from both checkpoint formats."""
    out = {}
    for name in MINIS:
        model = mini_model(name)
        for source in SOURCES:
            state = read_state_dict(DA / f"{name}.{source}")
            out[name, source] = model, params_from_state(state, key_table(model.encoder)), state
    return out


@pytest.fixture(scope="module")
def references():
    return {name: np.load(DA / f"{name}.npz") for name in MINIS}


_RUNS: dict = {}


def run(model, params, images) -> dict[str, np.ndarray]:
    """Output and every sown intermediate, in the fixtures' layout (maps NCHW)."""
    key = (model, images.shape)
    if key not in _RUNS:
        _RUNS[key] = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))
    depth, state = _RUNS[key](params, images)
    out = {"depth": np.asarray(depth)}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        x = np.asarray(value[0])
        out[path[-1]] = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
    return out


@pytest.fixture(scope="module")
def outputs(loaded, references):
    """Lazily computed runs keyed by (mini, source, case)."""
    cache = {}

    def get(name, source, case):
        if (name, source, case) not in cache:
            model, params, _ = loaded[name, source]
            cache[name, source, case] = run(model, params, nchw_to_nhwc(references[name][f"{case}__input"]))
        return cache[name, source, case]

    return get


# ---------------------------------------------------------------------------------------------
# Position table


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("case", CASES)
def test_pos_embed_matches_original(name, case, loaded, references):
    model, params, _ = loaded[name, "pth"]
    ref = references[name][f"{case}__pos_embed"]
    grid = tuple(s // 14 for s in references[name][f"{case}__input"].shape[2:])
    got = np.asarray(interpolate_pos_embed(params["encoder"]["pos_embed"], model.encoder.native_grid, grid))
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= POS_TOL, f"{name} {case}: pos_embed off by {err:.2e}"
    if case == "native":
        np.testing.assert_array_equal(got, ref)  # the stored table itself


@pytest.mark.parametrize("case", [c for c in CASES if c != "native"])
def test_size_based_table_resize_is_caught(case, loaded, references):
    """Resizing the table to the grid size (torch's bicubic without DINOv2's 0.1 offset) misses by far."""
    model, params, _ = loaded["mini_da2", "pth"]
    ref = references["mini_da2"][f"{case}__pos_embed"]
    h, w = (s // 14 for s in references["mini_da2"][f"{case}__input"].shape[2:])
    table = params["encoder"]["pos_embed"]
    patches = table[0, 1:].reshape(*model.encoder.native_grid, -1)
    size_based = resize_bicubic(patches, (h, w), convention="torch", axes=(0, 1)).reshape(1, h * w, -1)
    wrong = np.concatenate([table[:, :1], np.asarray(size_based)], axis=1)
    assert np.abs(wrong - ref).max() > 1000 * POS_TOL
    no_offset = np.asarray(interpolate_pos_embed(table, model.encoder.native_grid, (h, w), offset=1e-9))
    assert np.abs(no_offset - ref).max() > 1000 * POS_TOL


def test_table_is_resized_unless_square_with_the_same_count():
    """The original's shortcut is `npatch == N and W == H`: a 1x49 grid (49 patches, like 7x7) is still resized."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1, 50, 4)).astype(np.float32)
    assert interpolate_pos_embed(table, (7, 7), (7, 7)) is table
    resized = np.asarray(interpolate_pos_embed(table, (7, 7), (1, 49)))
    assert resized.shape == (1, 50, 4)
    np.testing.assert_array_equal(resized[:, 0], table[:, 0])  # cls entry is never resized
    assert np.abs(resized - table).max() > 0.1
    # A grid equal to the native one along one axis is still resampled there (scale 7 / 7.1, not identity).
    rows_same = np.asarray(interpolate_pos_embed(table, (7, 7), (7, 5)))[0, 1:].reshape(7, 5, 4)
    cols_only = np.asarray(resample_axis(table[0, 1:].reshape(7, 7, 4), 1, *scaled_cubic_taps(7, 5.1 / 7)))
    assert np.abs(rows_same - cols_only).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Encoder stages


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES)
def test_encoder_stages(name, source, case, loaded, references, outputs):
    model = loaded[name, source][0]
    got = outputs(name, source, case)
    ref = references[name]
    arrays = ENCODER_ARRAYS + tuple(f"block{i}_raw" for i in model.encoder.hooks)
    errors = {a: rel_err(got[a], ref[f"{case}__{a}"]) for a in arrays}
    bad = {a: e for a, e in errors.items() if e > TOL}
    assert not bad, f"{name} ({source}) {case}: {bad}"
    assert np.abs(got["pos_embed"] - ref[f"{case}__pos_embed"]).max() <= POS_TOL


def test_input_not_multiple_of_14_is_refused(loaded):
    model, params, _ = loaded["mini_da2", "pth"]
    with pytest.raises(ValueError, match="multiples of 14.*100x98"):
        Dinov2Encoder(model.encoder).apply({"params": params["encoder"]}, np.zeros((1, 100, 98, 3), np.float32))


# ---------------------------------------------------------------------------------------------
# Whole mini model (neck and head on dpt_jax.dpt's pieces)


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES)
def test_neck_and_head_stages(name, source, case, references, outputs):
    got = outputs(name, source, case)
    ref = references[name]
    arrays = [a for a in NECK_ARRAYS if f"{case}__{a}" in ref.files]
    assert len(arrays) >= len(NECK_ARRAYS) - 2  # the metric copy drops only fusion1 and head_conv1 (size)
    errors = {a: rel_err(got[a], ref[f"{case}__{a}"]) for a in arrays}
    bad = {a: e for a, e in errors.items() if e > TOL}
    assert not bad, f"{name} ({source}) {case}: {bad}"


# ---------------------------------------------------------------------------------------------
# Key tables


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("source", SOURCES)
def test_mini_checkpoint_keys_are_all_used_or_skipped(name, source, loaded):
    model, _, state = loaded[name, source]
    table = key_table(model.encoder)
    sources = [e.source for e in table]
    assert len(sources) == len(set(sources))
    assert sorted(sources + skipped_keys(state)) == sorted(state)
    assert len(skipped_keys(state)) == 5


MANIFESTS = sorted(p.stem for p in (DA / "manifests").glob("da*.json"))
PRESETS = {"da2_vits": DA2_VITS, "da2_vitb": DA2_VITB, "da2_vitl": DA2_VITL,
           "da1_vits": DA1_VITS, "da1_vitb": DA1_VITB, "da1_vitl": DA1_VITL}


def test_all_nine_manifests_are_here():
    assert len(MANIFESTS) == 9


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_key_table_covers_release_manifest(manifest):
    m = json.loads((DA / "manifests" / f"{manifest}.json").read_text())
    arch = m["architecture"]
    encoder = PRESETS[manifest.replace("_metric", "")]
    assert (encoder.embed_dim, encoder.depth, encoder.num_heads, encoder.mlp_hidden, encoder.hooks) == (
        arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_hidden"], tuple(arch["intermediate_layer_idx"]))
    assert encoder.native_grid == tuple(arch["pos_embed_grid"]) and encoder.patch_size == arch["patch_size"]
    shapes = {e["key"]: tuple(e["shape"]) for e in m["state_dict"]}
    head = arch["dpt_head"]
    model = DepthAnythingMini(encoder, tuple(head["out_channels"]), head["features"], max_depth=arch.get("max_depth"))
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 518, 518, 3), jnp.float32))
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract["params"], sep="/").items()}

    for prefix, table in (("pretrained.", encoder_key_table(encoder)), ("depth_head.", head_key_table())):
        keys = [k for k in shapes if k.startswith(prefix)]
        skipped = skipped_keys(keys)
        assert sorted([e.source for e in table] + skipped) == sorted(keys), manifest
        targets = {k for k in want if (k.startswith("encoder/") == (prefix == "pretrained."))}
        assert {e.target for e in table} == targets  # every model parameter has exactly one source
        for e in table:
            got = _SHAPE_OF[e.layout](shapes[e.source])
            assert got == want[e.target], (e.source, shapes[e.source], e.target, want[e.target])
    assert sorted(skipped_keys(shapes)) == sorted(m["unused_parameters_in_forward"])
    assert set(SKIPPED) and len(shapes) == m["state_dict_num_keys"]
