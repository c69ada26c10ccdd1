"""Depth Anything (V2 relative and metric, V1) against the original code, stage by stage
(tests/fixtures/depth_anything).

The minis are tiny Depth Anything V2 models (relative and metric) built by the original code with
random weights; every intermediate was saved for five input sizes (one native, four that resize
the position table). They are loaded as a user would, through dpt_jax.load (hence
checkpoint.read_checkpoint, the registry's detect_config and the dinov2 family's key table), from
the .pth and from the .safetensors file, and run by the same DPT module as the MiDaS models.
Tolerances are the reference README's: 5e-5 * max|ref| per array, and 1e-5 absolute on the
resized position table. The photo case (mini_da2_e2e.npz) runs two real photos through the
original's image2tensor / infer_image; its `input_every4th` arrays are the original's network
input at every 4th row and column (to keep the fixture small).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import dpt_jax
from dpt_jax import cli, output, preprocess, registry
from dpt_jax.convert import keys
from dpt_jax.convert.dinov2 import RELEASE_FILES
from dpt_jax.dinov2 import (
    DA1_VITB,
    DA1_VITL,
    DA1_VITS,
    DA2_VITB,
    DA2_VITL,
    DA2_VITS,
    Dinov2Encoder,
    interpolate_pos_embed,
    scaled_cubic_taps,
)
from dpt_jax.dpt import param_shapes
from dpt_jax.errors import CheckpointError, ConversionError
from dpt_jax.resize import resample_axis, resize_bicubic
from helpers import FIXTURES, nchw_to_nhwc, rel_err, run_with_intermediates

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
# Fixtures


@pytest.fixture(scope="module")
def loaded():
    """{(mini, source): DepthModel} for both minis from both checkpoint formats, through dpt_jax.load."""
    return {(name, source): dpt_jax.load(DA / f"{name}.{source}", variant=name)
            for name in MINIS for source in SOURCES}


@pytest.fixture(scope="module")
def references():
    return {name: np.load(DA / f"{name}.npz") for name in MINIS}


@pytest.fixture(scope="module")
def outputs(loaded, references):
    """Lazily computed runs keyed by (mini, source, case)."""
    cache = {}

    def get(name, source, case):
        if (name, source, case) not in cache:
            cache[name, source, case] = run_with_intermediates(loaded[name, source],
                                                               nchw_to_nhwc(references[name][f"{case}__input"]))
        return cache[name, source, case]

    return get


def pos_table(model):
    return np.asarray(model.params["encoder"]["pos_embed"])


# ---------------------------------------------------------------------------------------------
# Position table


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("case", CASES)
def test_pos_embed_matches_original(name, case, loaded, references):
    model = loaded[name, "pth"]
    ref = references[name][f"{case}__pos_embed"]
    grid = tuple(s // 14 for s in references[name][f"{case}__input"].shape[2:])
    got = np.asarray(interpolate_pos_embed(pos_table(model), model.config.encoder.native_grid, grid))
    assert got.shape == ref.shape
    err = np.abs(got - ref).max()
    assert err <= POS_TOL, f"{name} {case}: pos_embed off by {err:.2e}"
    if case == "native":
        np.testing.assert_array_equal(got, ref)  # the stored table itself


@pytest.mark.parametrize("case", [c for c in CASES if c != "native"])
def test_size_based_table_resize_is_caught(case, loaded, references):
    """Resizing the table to the grid size (torch's bicubic without DINOv2's 0.1 offset) misses by far."""
    model = loaded["mini_da2", "pth"]
    ref = references["mini_da2"][f"{case}__pos_embed"]
    h, w = (s // 14 for s in references["mini_da2"][f"{case}__input"].shape[2:])
    table = pos_table(model)
    patches = table[0, 1:].reshape(*model.config.encoder.native_grid, -1)
    size_based = resize_bicubic(patches, (h, w), convention="torch", axes=(0, 1)).reshape(1, h * w, -1)
    wrong = np.concatenate([table[:, :1], np.asarray(size_based)], axis=1)
    assert np.abs(wrong - ref).max() > 1000 * POS_TOL
    no_offset = np.asarray(interpolate_pos_embed(table, model.config.encoder.native_grid, (h, w), offset=1e-9))
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
    model = loaded[name, source]
    got = outputs(name, source, case)
    ref = references[name]
    arrays = ENCODER_ARRAYS + tuple(f"block{i}_raw" for i in model.config.encoder.hooks)
    errors = {a: rel_err(got[a], ref[f"{case}__{a}"]) for a in arrays}
    bad = {a: e for a, e in errors.items() if e > TOL}
    assert not bad, f"{name} ({source}) {case}: {bad}"
    assert np.abs(got["pos_embed"] - ref[f"{case}__pos_embed"]).max() <= POS_TOL


def test_input_not_multiple_of_14_is_refused(loaded):
    model = loaded["mini_da2", "pth"]
    with pytest.raises(ValueError, match="multiples of 14.*100x98"):
        Dinov2Encoder(model.config.encoder).apply({"params": model.params["encoder"]},
                                                  np.zeros((1, 100, 98, 3), np.float32))
    with pytest.raises(ValueError, match="multiples of 14.*100x98"):
        model.apply(np.zeros((1, 100, 98, 3), np.float32))


# ---------------------------------------------------------------------------------------------
# Whole mini model: the DPT neck and head of dpt_jax.dpt, as the MiDaS models use them


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



def test_worst_intermediate_per_case(loaded, references, outputs, capsys):
    """Every array of every case of both minis, from both files, within TOL; prints the worst per case."""
    worst = {}
    for name in MINIS:
        ref = references[name]
        for case in CASES:
            for source in SOURCES:
                got = outputs(name, source, case)
                hooks = tuple(f"block{i}_raw" for i in loaded[name, source].config.encoder.hooks)
                arrays = [a for a in ENCODER_ARRAYS + hooks + NECK_ARRAYS if f"{case}__{a}" in ref.files]
                e, a = max((rel_err(got[a], ref[f"{case}__{a}"]), a) for a in arrays)
                worst[name, case] = max(worst.get((name, case), (0, "")), (e, a))
    with capsys.disabled():
        for (name, case), (e, a) in worst.items():
            print(f"\n{name} {case}: worst {e:.2e} ({a})", end="")
    assert max(e for e, _ in worst.values()) <= TOL


# ---------------------------------------------------------------------------------------------
# Photos end to end: the original's image2tensor and infer_image


PHOTOS = ("astronaut_portrait_500x333", "chelsea_300x451")


@pytest.fixture(scope="module")
def photos():
    return np.load(DA / "mini_da2_e2e.npz")


@pytest.mark.parametrize("photo", PHOTOS)
def test_preprocessing_matches_image2tensor(photo, loaded, photos):
    config = loaded["mini_da2", "pth"].config
    rgb = photos[f"{photo}__raw_bgr_uint8"][..., ::-1]  # cv2.imread gives BGR
    want_shape = tuple(photos[f"{photo}__input_shape"])
    size = preprocess.processed_size(*rgb.shape[:2], target=config.native_size, keep_aspect_ratio=True,
                                     multiple_of=config.resize_multiple, rule=config.resize_rule)
    assert (1, 3, *size) == want_shape  # lower bound 518, aspect kept, multiples of 14
    x = np.asarray(preprocess.normalize_and_resize(rgb[None].copy(), size, config.input_mean, config.input_std))
    got = x.transpose(0, 3, 1, 2)[:, :, ::4, ::4]
    assert rel_err(got, photos[f"{photo}__input_every4th"]) <= TOL


@pytest.mark.parametrize("name", MINIS)
def test_photo_depth_through_predict(name, loaded, photos, capsys):
    """model.predict on the raw photos = the original infer_image(raw, 518), at the photos' sizes."""
    model = loaded[name, "safetensors"]
    depths = model.predict([photos[f"{p}__raw_bgr_uint8"][..., ::-1].copy() for p in PHOTOS])
    for photo, depth in zip(PHOTOS, depths):
        ref = photos[f"{photo}__{name}__depth"]
        err = rel_err(depth, ref)
        with capsys.disabled():
            print(f"\n{name} {photo}: e2e depth {err:.2e}", end="")
        assert err <= TOL, f"{name} {photo}: {err:.2e}"


def test_processed_size_lower_bound_rule():
    size = lambda h, w: preprocess.processed_size(h, w, target=518, keep_aspect_ratio=True,  # noqa: E731
                                                  multiple_of=14, rule="lower_bound")
    assert size(500, 333) == (784, 518) and size(300, 451) == (518, 784)
    assert size(518, 518) == (518, 518) and size(2000, 2000) == (518, 518)
    # 480 x 640: scale 518/480 -> width 690.67 -> 49.33 * 14 -> 49 * 14 = 686 (nearest, not below 518)
    assert size(480, 640) == (518, 686)
    # A side rounding to below the target goes up instead: 1037 x 1000 -> scale 0.518 -> 537.17 / 518
    assert all(s >= 518 and s % 14 == 0 for s in size(1037, 1000))


def test_output_resize_conventions_differ():
    """V2 resizes back with align_corners=True, V1 with False, MiDaS bicubic: all three are different."""
    d = np.random.default_rng(0).random((1, 28, 42)).astype(np.float32)
    outs = [np.asarray(preprocess.resize_depth(d, (50, 70), m)) for m in
            ("bicubic", "bilinear_align_corners", "bilinear")]
    assert all(np.abs(a - b).max() > 1e-3 for i, a in enumerate(outs) for b in outs[i + 1:])
    np.testing.assert_allclose(outs[1][0, 0, 0], d[0, 0, 0], rtol=1e-6)  # corners kept with align_corners


# ---------------------------------------------------------------------------------------------
# Key tables and the nine release manifests, through the registry


class ShapeOnly:
    def __init__(self, shape):
        self.shape = tuple(shape)

    def read(self):
        raise AssertionError("the manifest checks must not read tensor data")


MANIFESTS = sorted(p.stem for p in (DA / "manifests").glob("da*.json"))
ENCODERS = {"da2_vits": DA2_VITS, "da2_vitb": DA2_VITB, "da2_vitl": DA2_VITL,
            "da1_vits": DA1_VITS, "da1_vitb": DA1_VITB, "da1_vitl": DA1_VITL}


def test_all_nine_manifests_are_here():
    assert len(MANIFESTS) == 9


def release_files(manifest):
    return [f.split(" ")[0] for f in manifest["release_files"]]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_release_manifest_detected_and_covered(manifest):
    """Each official file name -> its preset; every key used or skipped; shapes fit; parameters = manifest - unused."""
    m = json.loads((DA / "manifests" / f"{manifest}.json").read_text())
    arch = m["architecture"]
    state = {e["key"]: ShapeOnly(e["shape"]) for e in m["state_dict"]}
    assert len(state) == m["state_dict_num_keys"]
    files = release_files(m)
    assert len(files) == (2 if "metric" in manifest else 1)
    for file in files:
        config = registry.detect_config(state, file)
        assert config is registry.PRESETS[RELEASE_FILES[file]]
        e = config.encoder
        assert e == ENCODERS[manifest.replace("_metric", "")]
        assert (e.embed_dim, e.depth, e.num_heads, e.mlp_hidden, e.hooks) == (
            arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_hidden"],
            tuple(arch["intermediate_layer_idx"]))
        assert e.native_grid == tuple(arch["pos_embed_grid"]) and e.patch_size == arch["patch_size"]
        head = arch["dpt_head"]
        assert (config.fusion_features, config.reassembly_features) == (head["features"], tuple(head["out_channels"]))
        assert config.is_metric == (m["variant"] == "metric")
        if config.is_metric:
            assert config.max_depth == (20.0 if "hypersim" in file else 80.0)
        family = config.family
        table, skips = family.key_table(config), family.skipped(config)
        assert keys.check_state_dict(state, table, skips, param_shapes(config)) == []
        skipped = keys.skipped_keys(state, skips)
        assert sorted(skipped) == sorted(m["unused_parameters_in_forward"])
        assert sorted([t.source for t in table] + skipped) == sorted(state)
        unused = sum(int(np.prod(state[k].shape)) for k in skipped)
        assert sum(int(np.prod(s)) for s in param_shapes(config).values()) == m["parameter_count"] - unused


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("source", SOURCES)
def test_mini_checkpoint_keys_are_all_used_or_skipped(name, source, loaded):
    from dpt_jax.convert.files import read_state_dict

    state = read_state_dict(DA / f"{name}.{source}")
    model = loaded[name, source]
    table = model.config.family.key_table(model.config)
    sources = [e.source for e in table]
    assert len(sources) == len(set(sources))
    skipped = keys.skipped_keys(state, model.config.family.skipped(model.config))
    assert sorted(sources + skipped) == sorted(state)
    assert len(skipped) == 5  # mask_token + refinenet4.resConfUnit1 (2 convs x weight, bias)
    assert model.num_params == 181_905 - 32 - 2 * (16 * 16 * 9 + 16)


# ---------------------------------------------------------------------------------------------
# The variant: a choice, recorded in converted files


def manifest_state(manifest):
    m = json.loads((DA / "manifests" / f"{manifest}.json").read_text())
    return {e["key"]: ShapeOnly(e["shape"]) for e in m["state_dict"]}


def test_ambiguous_file_is_refused_with_the_choices():
    state = manifest_state("da2_vits")
    with pytest.raises(CheckpointError) as e:
        registry.detect_config(state, "downloads/model.pth")
    text = str(e.value)
    assert "downloads/model.pth" in text and "variant" in text
    for choice in ("da2_vits", "da2_metric_hypersim_vits", "da2_metric_vkitti_vits", "da1_vits"):
        assert choice in text
    assert "da2_vitb" not in text  # only the variants that fit the keys


def test_explicit_variant_wins_and_must_fit():
    state = manifest_state("da2_vitb")
    assert registry.detect_config(state, "x.pth", variant="da1_vitb").encoder.hooks == (8, 9, 10, 11)
    assert registry.detect_config(state, "depth_anything_v2_vitb.pth", variant="da2_metric_vkitti_vitb").max_depth == 80
    with pytest.raises(ConversionError, match="does not hold a da2_vits model.*embed_dim 768"):
        registry.detect_config(state, "x.pth", variant="da2_vits")
    with pytest.raises(ConversionError, match="unknown variant 'da3_vitb'"):
        registry.detect_config(state, "x.pth", variant="da3_vitb")
    with pytest.raises(ConversionError, match="variant dpt_beit_base_384 is a MiDaS v3.1 DPT-BEiT model"):
        registry.detect_config(state, "x.pth", variant="beit_base_384")
    assert registry.detect_config(state, "x.pth", variant="da2_metric_hypersim_vitb", max_depth=10).max_depth == 10
    with pytest.raises(ConversionError, match="max_depth applies to metric models"):
        registry.detect_config(state, "x.pth", variant="da2_vitb", max_depth=10)


def test_midas_variant_must_match_the_keys():
    midas = json.loads((FIXTURES / "manifests" / "dpt_beit_base_384.json").read_text())
    state = {e["key"]: ShapeOnly(e["shape"]) for e in midas["state_dict"]}
    assert registry.detect_config(state, "f.pt", variant="dpt_beit_base_384").name == "dpt_beit_base_384"
    assert registry.detect_config(state, "f.pt", variant="beit_base_384").name == "dpt_beit_base_384"
    with pytest.raises(ConversionError,
                       match="its keys say it is dpt_beit_base_384, not the variant dpt_beit_large_384"):
        registry.detect_config(state, "f.pt", variant="dpt_beit_large_384")
    with pytest.raises(ConversionError, match="variant da2_vits is a Depth Anything \\(DINOv2\\) model"):
        registry.detect_config(state, "f.pt", variant="da2_vits")
    with pytest.raises(ConversionError, match="max_depth applies to metric models; dpt_beit_base_384 is relative"):
        registry.detect_config(state, "f.pt", max_depth=20)


def test_load_without_variant_is_a_clear_error():
    with pytest.raises(CheckpointError, match=r"mini_da2\.pth.*Choose its variant(.|\n)*mini_da2_metric"):
        dpt_jax.load(DA / "mini_da2.pth")


def test_converted_file_records_the_variant(tmp_path, loaded, references):
    src = loaded["mini_da2_metric", "pth"]
    path = tmp_path / "m.safetensors"
    src.save(path)
    model = dpt_jax.load(path)  # no variant needed any more: it is in the file
    assert model.config == src.config and model.config.is_metric and model.config.max_depth == 20
    x = nchw_to_nhwc(references["mini_da2_metric"]["native__input"])
    np.testing.assert_array_equal(np.asarray(model.apply(x)), np.asarray(src.apply(x)))
    with pytest.raises(CheckpointError, match="holds mini_da2_metric .*not the variant mini_da2 given"):
        dpt_jax.load(path, variant="mini_da2")
    deeper = dpt_jax.load(path, max_depth=40)
    np.testing.assert_allclose(np.asarray(deeper.apply(x)), 2 * np.asarray(src.apply(x)), rtol=1e-6)


def test_cli_convert_and_info_report_the_variant(tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert cli.main(["convert", str(DA / "mini_da2_metric.pth"), "-o", str(out), "--variant", "mini_da2_metric",
                     "--max-depth", "80"]) == 0
    text = capsys.readouterr().out
    assert "mini_da2_metric (Depth Anything (DINOv2))" in text and "metric depth in metres (max 80 m)" in text
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "output:     metric depth in metres (max 80 m)" in text
    assert cli.main(["info", str(DA / "mini_da2.pth")]) == 1
    assert "--variant" in capsys.readouterr().err
    assert cli.main(["info", str(DA / "mini_da2.pth"), "--variant", "mini_da2"]) == 0
    assert "relative inverse depth" in capsys.readouterr().out


def test_metric_png16_is_absolute(tmp_path):
    """Metric 16-bit PNGs hold metres x 256 (not normalised per picture); relative ones are normalised."""
    from PIL import Image

    depth = np.array([[1.0, 2.5], [10.0, 79.9]], np.float32)
    output.write_depth(tmp_path / "m.png", depth, "png16", metric=True)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m.png")), np.round(depth * 256).astype(np.uint16))
    output.write_depth(tmp_path / "r.png", depth, "png16")
    assert np.asarray(Image.open(tmp_path / "r.png")).max() == 65535


# ---------------------------------------------------------------------------------------------
# bfloat16


@pytest.mark.parametrize("name", MINIS[:1])  # the metric mini runs the same bfloat16 program but for its head
def test_bfloat16_runs_and_is_close(name, references, capsys):
    """bfloat16 matmuls (float32 accumulation) against float32 on the mini: a sanity bound, not the original's."""
    f32 = dpt_jax.load(DA / f"{name}.safetensors", variant=name)
    bf16 = dpt_jax.load(DA / f"{name}.safetensors", variant=name, dtype="bfloat16")
    x = nchw_to_nhwc(references[name]["native__input"])
    a, b = np.asarray(f32.apply(x), np.float64), np.asarray(bf16.apply(x), np.float64)
    span = a.max() - a.min()
    mean, worst = np.abs(a - b).mean() / span, np.abs(a - b).max() / span
    with capsys.disabled():
        print(f"\n{name} bfloat16 vs float32: mean {mean:.2%}, max {worst:.2%} of the depth range", end="")
    assert np.isfinite(b).all() and mean < 0.02


def test_cli_predict_writes_metres_for_a_metric_model(tmp_path, loaded, photos):
    from PIL import Image

    rgb = photos["chelsea_300x451__raw_bgr_uint8"][..., ::-1].copy()
    Image.fromarray(rgb).save(tmp_path / "cat.png")
    src = str(DA / "mini_da2_metric.pth")
    for fmt in ("npy", "png16"):
        assert cli.main(["predict", str(tmp_path / "cat.png"), "-m", src, "--variant", "mini_da2_metric",
                         "-o", str(tmp_path / fmt), "--format", fmt, "--no-progress"]) == 0
    metres = np.load(tmp_path / "npy" / "cat-depth.npy")
    assert rel_err(metres, photos["chelsea_300x451__mini_da2_metric__depth"]) <= TOL
    png = np.asarray(Image.open(tmp_path / "png16" / "cat-depth-16.png"))
    np.testing.assert_array_equal(png, np.round(metres.astype(np.float64) * 256).astype(np.uint16))
    assert cli.main(["predict", str(tmp_path / "cat.png"), "-m", src, "-o", str(tmp_path / "x")]) == 1  # no variant
