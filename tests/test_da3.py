"""Depth Anything 3 monocular and metric against the original code (tests/fixtures/depth_anything_3).

mini_da3_mono and mini_da3_metric are DA3MONO-LARGE / DA3METRIC-LARGE at toy sizes, built and
saved by the original `DepthAnything3` (model.safetensors + config.json, its release layout) with
random weights; every stage was recorded at two input sizes (native 98x98, and 70x126, which
resizes the position table). They load as a user's file would (dpt_jax.load: the dinov2 family
recognises the DA3 key names, the config.json beside the file names the variant). Bound: 5e-5 x
max|ref| per stage (the fixture README's), 1e-4 end to end. The end-to-end case runs two synthetic
pictures through the original API (upper-bound resize to 504, two OpenCV resizes, sky mask).
"""

from __future__ import annotations

import json
import math
import re
import shutil

import jax
import numpy as np
import pytest

import dpt_jax
from dpt_jax import registry
from dpt_jax.convert import keys
from dpt_jax.convert.dinov2 import SHARED_RAY_NORM
from dpt_jax.dpt import DPT, fill_sky, param_shapes
from dpt_jax.errors import ConversionError
from dpt_jax.focal import DEFAULT_FOV, focal_pixels, metric_scale
from dpt_jax.preprocess import network_size, to_network, upper_bound_sizes
from helpers import FIXTURES, rel_err

DA3 = FIXTURES / "depth_anything_3"
MINIS = ("mini_da3_mono", "mini_da3_metric")
TOL = 5e-5
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
SIZES = {"native": (98, 98), "wide": (70, 126)}


@pytest.fixture(scope="module")
def loaded():
    return {name: dpt_jax.load(DA3 / name / "model.safetensors") for name in MINIS}


@pytest.fixture(scope="module")
def references():
    return {name: np.load(DA3 / f"{name}.npz") for name in MINIS} | {"e2e": np.load(DA3 / "mini_da3_e2e.npz")}


def normalized(u8):
    return ((u8.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)


_RUNS: dict = {}


def compiled(fn, *args):
    """jit(fn) compiled for these shapes with XLA's quick CPU code generation: the same operations, half the
    compile time of these small many-layer programs (the numbers are checked against the bounds all the same)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _stages(config, params, images, key, full_paths: bool, views: int = 1, cameras=None) -> dict:
    """Outputs and sown intermediates of one compiled program per key (maps as NCHW like the fixtures), named by
    their last path part, or by the whole "/"-joined path (`full_paths`: two fusion chains sow the same names).
    `views`, `cameras`: a scene's pictures together, with its known cameras (DPT's arguments)."""
    from flax import traverse_util

    if key not in _RUNS:
        module = DPT(config)
        _RUNS[key] = compiled(lambda p, x, c: module.apply({"params": p}, x, outputs=True, views=views, cameras=c,
                                                           mutable=["intermediates"]), params, images, cameras)
    outputs, state = _RUNS[key](params, images, cameras)
    out = {f"out.{k}": np.asarray(v) for k, v in outputs.items()}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        x = np.asarray(value[0])
        out["/".join(path) if full_paths else path[-1]] = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
    return out


def run(model, images):
    """Mono and metric: one network (the focal rule is outside it), one program per shape."""
    config = model.config.replace(name="mini_da3", focal_metric_divisor=0.0)
    return _stages(config, model.params, images, images.shape, full_paths=False)


#: our sown name -> the fixture's stage name
STAGES = {"tokens0": "bb.tokens0", **{f"feat{k}": f"bb.feat{k}" for k in range(1, 5)},
          **{f"{n}{k}": f"head.{n}{k}" for n in ("project", "reassemble", "rn", "fusion") for k in range(1, 5)},
          "head_conv1": "head.output_conv1", "head_preact": "head.main_logits", "sky_preact": "head.sky_logits",
          "out.depth": "out.depth", "out.sky": "out.sky"}


@pytest.mark.parametrize("name", MINIS)
@pytest.mark.parametrize("case", ["native"])  # the resized position table: the any-view case (70x126)
def test_every_stage_matches_the_original(name, case, loaded, references):
    ref = references[name]
    h, w = SIZES[case]
    ours = run(loaded[name], normalized(ref[f"input_u8_S1_{h}x{w}"]))
    compared = 0
    for mine, theirs in STAGES.items():
        key = f"{case}__{theirs}"
        if key not in ref.files:
            continue
        got = ours[mine].reshape(ref[key].shape)
        assert rel_err(got, ref[key]) < TOL, (name, case, theirs, rel_err(got, ref[key]))
        compared += 1
    # the fixture stores every stage of mono, fewer of metric (only its outputs at the wide size)
    assert compared >= {"mini_da3_mono": 20, "mini_da3_metric": 10 if case == "native" else 2}[name]


def test_input_formula_and_sky_fill(references):
    """The network input is ImageNet-normalised /255; the sky pixels hold the 0.99 quantile of the others."""
    ref = references["mini_da3_mono"]
    assert np.array_equal(normalized(ref["input_u8_S1_98x98"])[0], ref["input_S1_98x98"][0, 0].transpose(1, 2, 0))
    for case in SIZES:
        raw, sky = ref[f"{case}__head.out.depth"][0], ref[f"{case}__out.sky"][0]
        mask = ref[f"{case}__sky.non_sky_mask"][0, 0]
        assert np.array_equal(mask, sky[0] < 0.3) and 10 < mask.sum() < mask.size - 10
        filled = np.asarray(fill_sky(raw, sky))
        assert np.isclose(ref[f"{case}__sky.non_sky_max"], np.quantile(raw[0][mask], 0.99), rtol=1e-6)
        assert rel_err(filled, ref[f"{case}__out.depth"][0]) < 1e-6
        assert np.all(filled[0][~mask] == filled[0][~mask][0]) and not np.array_equal(filled, raw)
    few = np.zeros((1, 4, 4), np.float32)
    assert np.array_equal(fill_sky(few + 1.0, few + 1.0), few + 1.0)  # 16 sky pixels, 0 others: left alone


def test_release_layout_and_variants(loaded):
    """DA3's key names; config.json beside model.safetensors names the variant; mono and metric differ only there."""
    mono, metric = loaded["mini_da3_mono"], loaded["mini_da3_metric"]
    assert mono.config.name == "mini_da3_mono" and not mono.config.is_metric and mono.config.predicts_depth
    assert metric.config.name == "mini_da3_metric" and metric.config.is_metric
    assert mono.config.replace(name="x", focal_metric_divisor=300.0) == metric.config.replace(name="x")
    assert mono.num_params == json.loads((DA3 / "mini_da3_mono.json").read_text())["architecture"]["num_parameters"]
    assert mono.config.encoder.final_norm_eps == 1e-5 and mono.config.encoder.layer_norm_eps == 1e-6


def test_the_release_folder_loads_as_its_model():
    """A Hub repository's folder (model.safetensors, config.json {"model_name": ...}): the model it names."""
    model = dpt_jax.load(DA3 / "mini_da3_metric")
    assert model.config.name == "mini_da3_metric" and model.source.endswith("model.safetensors")


def test_without_config_json_the_variant_is_a_choice(tmp_path):
    shutil.copy(DA3 / "mini_da3_metric" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ConversionError) as e:
        dpt_jax.load(tmp_path / "model.safetensors")
    assert "mini_da3_mono" in str(e.value) and "mini_da3_metric" in str(e.value)
    assert dpt_jax.load(tmp_path / "model.safetensors", variant="mini_da3_metric").config.is_metric
    with pytest.raises(ConversionError, match="Depth Anything 3"):
        dpt_jax.load(tmp_path / "model.safetensors", variant="mini_da2")


@pytest.mark.parametrize("model_name, what", [("da3nested-giant-large", "nested")])
def test_unimplemented_releases_are_refused_clearly(model_name, what):
    m = json.loads((DA3 / "manifests_full_size.json").read_text())[model_name]
    state = {key: ShapeOnly(shape) for key, shape in m["keys"]}
    with pytest.raises(ConversionError, match=what):
        registry.detect_config(state, "model.safetensors")


class ShapeOnly:
    def __init__(self, shape):
        self.shape = tuple(shape)


@pytest.mark.parametrize("model_name, preset", [("da3mono-large", "da3_mono_large")])  # metric: the same keys
def test_full_size_release_keys_are_all_used(model_name, preset):
    """The released files' keys and shapes (manifests of the original's state dict) load into the preset exactly."""
    m = json.loads((DA3 / "manifests_full_size.json").read_text())[model_name]
    state = {key: ShapeOnly(shape) for key, shape in m["keys"]}
    assert m["config.json"] == {"model_name": model_name}
    config = registry.detect_config(state, "model.safetensors", variant=preset)
    assert config is registry.PRESETS[preset]
    table = config.family.key_table(config)
    assert keys.check_state_dict(state, table, config.family.skipped(config), param_shapes(config)) == []
    assert sorted(e.source for e in table) == sorted(state)
    assert sum(math.prod(s) for s in param_shapes(config).values()) == m["num_parameters"] == 334_171_394


def test_upper_bound_sizes():
    assert upper_bound_sizes(80, 640, 504, 14) == ((63, 504), (70, 504))  # 63: a tie, rounded up
    assert upper_bound_sizes(260, 60, 504, 14) == ((504, 116), (504, 112))
    assert upper_bound_sizes(60, 640, 504, 14) == ((47, 504), (42, 504))
    assert upper_bound_sizes(504, 300, 504, 14) == ((504, 300), (504, 294))  # longer side 504 already: one resize
    with pytest.raises(ValueError, match="too thin"):
        upper_bound_sizes(4, 2000, 504, 14)


@pytest.mark.parametrize("picture", ["landscape_640x80", "portrait_60x260"])
def test_preprocessing_as_the_original_api(picture, loaded, references):
    """The API's two OpenCV resizes of the uint8 picture: its size, and levels within one on a few pixels."""
    ref, model = references["e2e"], loaded["mini_da3_mono"]
    raw, resized = ref[f"{picture}.raw_rgb_uint8"], ref[f"{picture}.resized_uint8"]
    size = network_size(model.config, raw.shape[:2])
    assert size == resized.shape[:2]
    ours = np.asarray(to_network(model.config, raw[None], size))[0]
    levels = np.round((ours * STD + MEAN) * 255)
    diff = np.abs(levels - resized)
    # INTER_AREA is OpenCV's to the level; its cubic upscaling sums in another order (vectorised): where a value
    # lies within ~1e-3 of a half level, it can round the other way (3 values of the portrait's upscaled
    # picture, 5 of 169,344 after its area step)
    assert diff.max() <= 1 and (diff > 0).sum() <= (0 if picture == "landscape_640x80" else 5)
    assert np.array_equal(ref["landscape_640x80.input"][0].transpose(1, 2, 0),
                          normalized(ref["landscape_640x80.resized_uint8"]))


def test_end_to_end_through_predict(loaded, references):
    """The API's resized picture through predict (no resize left to do): its depth and its sky mask."""
    ref, model = references["e2e"], loaded["mini_da3_mono"]
    depth, sky = model.predict(ref["landscape_640x80.resized_uint8"], output=("array", "sky"))
    assert rel_err(depth, ref["mini_da3_mono.landscape_640x80.depth"][0]) < 1e-4
    assert sky.dtype == bool and np.array_equal(sky, ref["mini_da3_mono.landscape_640x80.sky"][0])
    with pytest.raises(ValueError, match="no sky output"):
        registry_model_without_sky().predict(ref["landscape_640x80.resized_uint8"], output="sky")


def registry_model_without_sky():
    return dpt_jax.DepthModel(registry.get_config("mini_da2"), {})


def test_metric_rule(loaded, references):
    """metres = mean(fx, fy) at the network input / 300 x output (the CLI test runs it through predict)."""
    ref, model = references["e2e"], loaded["mini_da3_metric"]
    k_raw, k_net = ref["landscape_640x80.K_raw"], ref["landscape_640x80.K_processed"]
    raw, resized = ref["landscape_640x80.raw_rgb_uint8"], ref["landscape_640x80.resized_uint8"]
    scale = ref["mini_da3_metric.landscape_640x80.metric_scale_focal_over_300"]
    assert np.isclose((k_net[0, 0] + k_net[1, 1]) / 2 / 300, scale, rtol=1e-6)
    # the API rescales K at each of its two resizes; the product is the whole change of each side
    fx, fy = float(k_raw[0, 0]), float(k_raw[1, 1])
    assert fx != fy
    assert math.isclose(metric_scale(model.config, raw.shape[:2], resized.shape[:2], (fx, fy)), scale, rel_tol=1e-6)
    assert focal_pixels((80, 640))[1].endswith("(default: none known)")
    assert focal_pixels((80, 640))[0] == focal_pixels((80, 640), fov=DEFAULT_FOV)[0] == 320 / math.tan(math.pi / 6)


def test_exif_focal_length(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (64, 48))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # a phone's 26 mm equivalent
    img.save(tmp_path / "phone.jpg", exif=exif)
    img.save(tmp_path / "plain.jpg")
    px, how = focal_pixels((48, 64), path=tmp_path / "phone.jpg")
    assert math.isclose(px, 26 * 80 / math.hypot(36, 24)) and "EXIF" in how
    assert focal_pixels((48, 64), path=tmp_path / "plain.jpg")[0] == pytest.approx(32 / math.tan(math.pi / 6))
    assert focal_pixels((48, 64), fov=90, path=tmp_path / "phone.jpg")[0] == pytest.approx(32)


def test_converted_file_round_trip_and_no_transformers_layout(loaded, tmp_path):
    """save() keeps the DA3 fields (final-norm eps, exp head, sky branch, focal rule); transformers has no layout."""
    model = loaded["mini_da3_metric"]
    model.save(tmp_path / "m.safetensors")
    again = dpt_jax.load(tmp_path / "m.safetensors")
    assert again.config == model.config
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, again.params, model.params))
    with pytest.raises(ValueError, match="transformers has no layout"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------
# Any-view (DA3-SMALL/BASE/LARGE's wiring, mini_da3_anyview), one picture


@pytest.fixture(scope="module")
def any_view():
    return dpt_jax.load(DA3 / "mini_da3_anyview" / "model.safetensors"), np.load(DA3 / "mini_da3_anyview.npz")


def run_paths(model, images):
    """Outputs and intermediates keyed by their full path."""
    return _stages(model.config, model.params, images, ("paths", model.config.name, images.shape), full_paths=True)


ANY_VIEW_STAGES = {
    "encoder/tokens0": "bb.tokens0", "encoder/cam_token": "bb.cam_token",
    **{f"encoder/block{i}_raw": f"bb.block{i}" for i in (5, 7, 9, 11)},  # the hooked blocks (global ones)
    **{f"encoder/feat{k}": f"bb.feat{k}" for k in range(1, 5)},
    **{f"encoder/cls{k}": f"bb.camtok{k}" for k in range(1, 5)},
    **{f"head/reassemble/{n}{k}": f"head.{m}{k}" for n, m in (("project", "project_pe"), ("reassemble", "reassemble"),
                                                               ("rn", "rn")) for k in range(1, 5)},
    **{f"head/{chain}/fusion{k}": f"head.{chain}{k}" for chain in ("fusion", "fusion_aux") for k in range(1, 5)},
    "head/head_conv1": "head.output_conv1", "head/head_preact": "head.main_logits",
    "head/ray_preact": "head.aux_logits", "out.depth": "out.depth", "out.confidence": "out.depth_conf",
    "out.ray": "head.out.ray", "out.ray_confidence": "head.out.ray_conf", "out.pose": "cam_dec.pose_enc",
    "out.extrinsics": "out.extrinsics", "out.intrinsics": "out.intrinsics",
}


def test_any_view_every_stage_matches_the_original(any_view):
    """Camera token, QK-norm, RoPE, global blocks, cat_token, DualDPT (depth, confidence, rays), camera decoder.

    70x126 (the position table resized, a non-square UV embedding); the native size adds nothing
    the monocular case does not check, and each any-view program costs seconds to compile.
    """
    model, ref = any_view
    case = "v1_wide"
    h, w = SIZES[case[3:]]
    ours = run_paths(model, normalized(ref[f"input_u8_S1_{h}x{w}"]))
    compared = 0
    for mine, theirs in ANY_VIEW_STAGES.items():
        key = f"{case}__{theirs}"
        if key not in ref.files:
            continue
        got = ours[mine].reshape(ref[key].shape)
        tol = 1e-5 if theirs.startswith(("out.extrinsics", "out.intrinsics", "cam_dec")) else TOL
        assert rel_err(got, ref[key]) < tol, (case, theirs, rel_err(got, ref[key]))
        compared += 1
    assert compared >= 30


def test_rope_tables_and_positions(any_view):
    from dpt_jax.dinov2 import _rope_for_grid, rope_tables

    model, ref = any_view
    cos, sin = ref["v1_native__bb.rope_cos"], ref["v1_native__bb.rope_sin"]
    ours = rope_tables(np.arange(cos.shape[0]), cos.shape[1], 100.0)
    assert np.allclose(ours[0], cos, atol=1e-6) and np.allclose(ours[1], sin, atol=1e-6)
    local, flat = _rope_for_grid(model.config.encoder, (7, 7))
    pos, nodiff = ref["v1_native__bb.rope_pos"][0, 0], ref["v1_native__bb.rope_pos_nodiff"][0, 0]
    assert np.allclose(local[0], cos[pos[:, 0]], atol=1e-6) and np.allclose(local[2], cos[pos[:, 1]], atol=1e-6)
    assert np.allclose(flat[1], sin[nodiff[:, 0]], atol=1e-6) and np.allclose(flat[3], sin[nodiff[:, 1]], atol=1e-6)


@pytest.mark.parametrize("model_name, preset", [("da3-giant", "da3_giant")])  # small, base, large: the same code
def test_full_size_any_view_keys(model_name, preset):
    """Every key of the released any-view state dicts is loaded or skipped with a reason; the counts add up."""
    m = json.loads((DA3 / "manifests_full_size.json").read_text())[model_name]
    state = {key: ShapeOnly(shape) for key, shape in m["keys"]}
    config = registry.detect_config(state, "model.safetensors", variant=preset)
    assert config is registry.PRESETS[preset]
    table, skips = config.family.key_table(config), config.family.skipped(config)
    assert keys.check_state_dict(state, table, skips, param_shapes(config)) == []
    skipped = keys.skipped_keys(state, skips)
    assert sorted([e.source for e in table] + skipped) == sorted(state)
    aliases = [k for k in skipped if re.fullmatch(SHARED_RAY_NORM, k)]
    assert len(aliases) == 6 and {"model.head.scratch.output_conv2_aux.0.2.weight",
                                  "model.head.scratch.output_conv2_aux.0.2.bias"} <= {e.source for e in table}
    unused = sum(math.prod(state[k].shape) for k in skipped if k not in aliases)  # shared: counted once
    assert sum(math.prod(s) for s in param_shapes(config).values()) == m["num_parameters"] - unused
    assert any(e.source.startswith("model.cam_enc.trunk.3.") for e in table)  # the camera encoder is loaded
    if preset == "da3_giant":  # SwiGLU's w12 / w3; the Gaussian-splatting head (out of scope) is what is skipped
        assert {"model.backbone.pretrained.blocks.39.mlp.w12.weight", "model.backbone.pretrained.blocks.39.mlp.w3.bias"
                } <= {e.source for e in table}
        assert config.encoder.mlp_hidden == 4096 and config.encoder.ffn == "swiglu"
        assert {k.split(".")[1] for k in skipped if k not in aliases} == {"head", "gs_head"}


def test_cli_writes_metres_and_the_sky_mask(tmp_path, references, capsys):
    """-f npy,sky with --focal: metres as the rule says, the focal length printed, the sky mask as a PNG."""
    from PIL import Image

    from dpt_jax import cli

    ref = references["e2e"]
    Image.fromarray(ref["landscape_640x80.resized_uint8"]).save(tmp_path / "land.png")
    focal = 432.0
    args = ["predict", str(tmp_path / "land.png"), "-m", str(DA3 / "mini_da3_metric" / "model.safetensors"),
            "-o", str(tmp_path / "out"), "-f", "npy,sky,color", "--focal", str(focal), "--no-progress"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "focal length 432.0 px (432 px given)" in err
    metres = np.load(tmp_path / "out" / "land-depth.npy")
    assert rel_err(metres, ref["mini_da3_metric.landscape_640x80.depth"][0] * focal / 300) < 1e-4
    sky = np.asarray(Image.open(tmp_path / "out" / "land-sky.png"))
    assert sky.dtype == np.uint8 and set(np.unique(sky)) == {0, 255}
    assert np.array_equal(sky == 255, ref["mini_da3_metric.landscape_640x80.sky"][0])
    assert (tmp_path / "out" / "land-depth.png").is_file()
    # the sky of a model without one, and a focal length for a model that needs none, are refused by name
    assert cli.main(["predict", str(tmp_path / "land.png"), "-m", str(DA3 / "mini_da3_mono" / "model.safetensors"),
                     "-o", str(tmp_path / "o2"), "--fov", "50"]) == 1
    assert "mini_da3_mono is neither" in capsys.readouterr().err


def test_releases_and_licences():
    from dpt_jax import hub

    want = {"da3_mono_large": ("depth-anything/DA3MONO-LARGE", "Apache-2.0"),
            "da3_metric_large": ("depth-anything/DA3METRIC-LARGE", "Apache-2.0"),
            "da3_small": ("depth-anything/DA3-SMALL", "Apache-2.0"),
            "da3_base": ("depth-anything/DA3-BASE", "Apache-2.0"),
            "da3_large": ("depth-anything/DA3-LARGE-1.1", "CC-BY-NC-4.0 (non-commercial use only)"),
            "da3_giant": ("depth-anything/DA3-GIANT-1.1", "CC-BY-NC-4.0 (non-commercial use only)")}
    for name, (repo, licence) in want.items():
        release = hub.lookup(name)
        assert (release.repo, release.file, release.licence) == (repo, "model.safetensors", licence)
        assert registry.PRESETS[name].name == name


# ---------------------------------------------------------------------------------------------
# Several views of a scene


def test_reference_view_rule(any_view):
    """saddle_balanced on the fixture's recorded tokens picks the original's reference view."""
    from dpt_jax.dinov2 import saddle_balanced

    _, ref = any_view
    tokens = ref["v3_wide__bb.ref_strategy_input_cls"]  # (1, 3, C): token 0 before block alt_start - 1
    assert int(saddle_balanced(tokens)[0]) == int(ref["v3_wide__bb.ref_b_idx"][0]) == 2


def read_ply(path):
    """(header lines, records) of a binary PLY as geometry.write_ply writes it (x, y, z float; r, g, b uchar)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    return data[:end].decode().splitlines(), np.frombuffer(data[end:], fields)


def test_three_views_end_to_end_through_the_cli(tmp_path, references, capsys):
    """api.py inference on three pictures of a scene, as `predict --views`: each view's depth, the cameras (the
    reference view chosen among three), and the merged point cloud of the original's glb export."""
    from PIL import Image

    from dpt_jax import cli

    e2e, p = references["e2e"], "mini_da3_anyview.views3."
    names = []
    for i in range(3):
        Image.fromarray(e2e[f"views3.raw_rgb_uint8_{i}"]).save(tmp_path / f"v{i}.png")
        names.append(str(tmp_path / f"v{i}.png"))
    model = str(DA3 / "mini_da3_anyview" / "model.safetensors")
    assert cli.main(["predict", *names, "-m", model, "--views", "-f", "npy,ply", "-o", str(tmp_path / "out")]) == 0
    depth = np.stack([np.load(tmp_path / "out" / f"v{i}-depth.npy") for i in range(3)])
    assert depth.shape == (3, 42, 504) and rel_err(depth, e2e[p + "depth"]) < 1e-4
    cameras = json.loads((tmp_path / "out" / "v0-cameras.json").read_text())["views"]
    extrinsics = np.array([c["world_to_camera"] for c in cameras])
    assert rel_err(extrinsics, e2e[p + "extrinsics"]) < 1e-5
    assert rel_err(np.array([c["intrinsics"] for c in cameras]), e2e[p + "intrinsics"]) < 1e-5
    header, cloud = read_ply(tmp_path / "out" / "v0-points.ply")
    assert not (tmp_path / "out" / "v1-points.ply").exists()
    threshold = float(next(h for h in header if h.startswith("comment confidence threshold")).split()[-1])
    assert math.isclose(threshold, e2e[p + "glb_conf_thresh"], rel_tol=1e-5)
    assert len(cloud) == e2e[p + "glb_num_points"]
    first = np.stack([cloud["x"], cloud["y"], cloud["z"]], axis=1).astype(np.float64)  # the first view's frame
    r, t = extrinsics[0, :, :3], extrinsics[0, :, 3]
    world = (first - t) @ r  # R^T (p - t): the original's world frame, before its glTF alignment
    assert rel_err(world[::97], e2e[p + "glb_points_every97"]) < 1e-4
    colours = np.stack([cloud["red"], cloud["green"], cloud["blue"]], axis=1)
    assert np.array_equal(colours[::97], e2e[p + "glb_colors_every97"])
    assert cli.main(["predict", names[0], "-m", model, "--views", "-o", str(tmp_path / "x")]) == 1  # one picture
    assert "at least two" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# DA3-GIANT's wiring (mini_da3_giant: SwiGLU, an odd alt_start, a hooked local block), three views


def reordered(x, ref):
    """Our (S, ...) views in the original's order inside the encoder after it chose `ref`: [ref, the others]."""
    return x[[ref] + [i for i in range(len(x)) if i != ref]]


def test_giant_every_stage_matches_the_original():
    """Three views (the reference view chosen by saddle_balanced: view 2): blocks, outputs, head, cameras."""
    model = dpt_jax.load(DA3 / "mini_da3_giant")
    ref = np.load(DA3 / "mini_da3_giant.npz")
    assert model.config.name == "mini_da3_giant" and model.config.encoder.ffn == "swiglu"
    assert model.config.encoder.mlp_hidden == 88  # (int(128 * 2 / 3) + 7) // 8 * 8, the original's SwiGLUFFNFused
    case, s = "v3_wide", 3
    x = normalized(ref[f"input_u8_S{s}_56x84"])
    ours = _stages(model.config, model.params, x, ("giant", x.shape), full_paths=True, views=s)
    chosen = int(ours["encoder/reference_view"][0])
    assert chosen == int(ref[f"{case}__bb.ref_b_idx"][0]) == 2
    stages = {**ANY_VIEW_STAGES, **{f"encoder/block{i}_raw": f"bb.block{i}" for i in (3, 5, 6, 7)}}
    compared = 0
    for mine, theirs in stages.items():
        key = f"{case}__{theirs}"
        if key not in ref.files:
            continue
        got = ours[mine]
        if theirs.startswith(("bb.block", "bb.cam_token")):  # the original's reordered views
            got = reordered(got, chosen)
        got = got.reshape(ref[key].shape)
        tol = 1e-5 if theirs.startswith(("out.extrinsics", "out.intrinsics", "cam_dec")) else TOL
        assert rel_err(got, ref[key]) < tol, (case, theirs, rel_err(got, ref[key]))
        compared += 1
    assert compared >= 30


def test_giant_three_views_end_to_end():
    """api.py inference on the three 60x640 pictures: depth, confidence and cameras."""
    from dpt_jax import views

    e2e, ref = np.load(DA3 / "mini_da3_e2e.npz"), np.load(DA3 / "mini_da3_giant.npz")
    pictures = [e2e[f"views3.raw_rgb_uint8_{i}"] for i in range(3)]
    scene = views.predict_views(dpt_jax.load(DA3 / "mini_da3_giant"), pictures)
    assert rel_err(scene.depth, ref["views3.depth"]) < 1e-4 and rel_err(scene.confidence, ref["views3.conf"]) < 1e-4
    assert rel_err(scene.extrinsics, ref["views3.extrinsics"]) < 1e-5
    assert rel_err(scene.intrinsics, ref["views3.intrinsics"]) < 1e-5


# ---------------------------------------------------------------------------------------------
# Known cameras: the camera encoder (mini_da3_anyview), api.py's pose normalisation and alignment

CAMERA_ENCODER_STAGES = {"camera_encoder/pose_encoding": "cam_enc.pose_encoding",
                         "camera_encoder/pose_branch": "cam_enc.pose_branch",
                         "camera_encoder/normed_tokens": "cam_enc.token_norm",
                         **{f"camera_encoder/trunk{i}": f"cam_enc.trunk{i}" for i in range(4)},
                         "encoder/cam_token": "cam_enc.cam_token"}


def test_known_cameras_every_stage_matches_the_original(any_view):
    """Three 84x56 views with given poses: the encoding, the camera encoder, its tokens in the encoder (no
    reference view chosen), every block, the head and the cameras."""
    model, ref = any_view
    case = "v3_tall_posed"
    x = normalized(ref["input_u8_S3_84x56"])
    cameras = (ref[f"{case}__input_extrinsics"][0], ref[f"{case}__input_intrinsics"][0])
    ours = _stages(model.config, model.params, x, ("posed", x.shape), full_paths=True, views=3, cameras=cameras)
    assert "encoder/reference_view" not in ours
    stages = {**ANY_VIEW_STAGES, **CAMERA_ENCODER_STAGES}
    compared = 0
    for mine, theirs in stages.items():
        key = f"{case}__{theirs}"
        if key not in ref.files or mine not in ours:
            continue
        got = ours[mine].reshape(ref[key].shape)
        tol = 1e-5 if theirs.startswith(("out.extrinsics", "out.intrinsics", "cam_dec", "cam_enc.pose_enc")) else TOL
        assert rel_err(got, ref[key]) < tol, (case, theirs, rel_err(got, ref[key]))
        compared += 1
    assert compared >= 30


def test_known_cameras_end_to_end_through_the_cli(tmp_path, references, capsys):
    """api.py inference(..., extrinsics=, intrinsics=) as `predict --views --cameras FILE`: the depth in the given
    poses' scale, the given cameras back (intrinsics at the network's size); then align_to_input_scale=False."""
    from PIL import Image

    from dpt_jax import cli, views

    e2e, p = references["e2e"], "mini_da3_anyview.views3_posed."
    names = []
    for i in range(3):
        Image.fromarray(e2e[f"views3.raw_rgb_uint8_{i}"]).save(tmp_path / f"v{i}.png")
        names.append(str(tmp_path / f"v{i}.png"))
    given, k = e2e["views3.input_extrinsics"], e2e["views3.input_intrinsics"]
    record = {"views": [{"picture": f"v{i}.png", "world_to_camera": given[i][:3].tolist(),  # 3x4 is enough
                         "intrinsics": k[i].tolist()} for i in range(3)]}
    (tmp_path / "cams.json").write_text(json.dumps(record))
    model = str(DA3 / "mini_da3_anyview" / "model.safetensors")
    assert cli.main(["predict", *names, "-m", model, "--views", "--cameras", str(tmp_path / "cams.json"),
                     "-f", "npy", "-o", str(tmp_path / "out")]) == 0
    depth = np.stack([np.load(tmp_path / "out" / f"v{i}-depth.npy") for i in range(3)])
    assert rel_err(depth, e2e[p + "depth"]) < 1e-4
    cameras = json.loads((tmp_path / "out" / "v0-cameras.json").read_text())["views"]
    assert rel_err(np.array([c["world_to_camera"] for c in cameras]), e2e[p + "extrinsics"]) < 1e-6
    assert rel_err(np.array([c["intrinsics"] for c in cameras]), e2e[p + "intrinsics"]) < 1e-6
    # the network's scale instead: the given poses mapped into the predicted frame, the depth unscaled
    m = dpt_jax.load(model)
    scene = views.predict_views(m, names, extrinsics=given, intrinsics=k, align_to_input_scale=False)
    q = "mini_da3_anyview.views3_posed_noscale."
    assert rel_err(scene.extrinsics, e2e[q + "extrinsics"][:, :3]) < 1e-5
    assert rel_err(scene.depth, e2e[p + "depth"] * e2e[q + "depth_over_posed_depth"]) < 1e-4
    # the file is checked against the views before any model loads, errors naming it
    bad = {"wrong count": {"views": record["views"][:2]},
           "not a rotation": {"views": [dict(v, world_to_camera=(2 * given[0]).tolist()) for v in record["views"]]},
           "own output": {"views": [dict(v, network_size=[42, 504]) for v in record["views"]]},
           "other order": {"views": record["views"][::-1]}}
    for what, data in bad.items():
        (tmp_path / "bad.json").write_text(json.dumps(data))
        assert cli.main(["predict", *names, "-m", "nonexistent", "--views", "--cameras", str(tmp_path / "bad.json"),
                         "-o", str(tmp_path / "x")]) == 1, what
        assert "bad.json" in capsys.readouterr().err, what
    np.savez(tmp_path / "c.npz", extrinsics=given, intrinsics=k[:2])
    with pytest.raises(ValueError, match=r"c\.npz: 2 intrinsics for 3 views"):
        views.load_cameras(tmp_path / "c.npz", names)
    assert cli.main(["predict", *names, "-m", model, "--cameras", str(tmp_path / "cams.json")]) == 1
    assert "add --views" in capsys.readouterr().err


def test_pose_alignment_as_the_original():
    """api.py's Umeyama alignment (evo), plain (3 views) and with RANSAC (12 views, two cameras far off)."""
    from dpt_jax.views import _aligned_poses, align_poses

    ref = np.load(DA3 / "pose_align.npz")
    for case in ("n3", "n12"):
        r, t, s = align_poses(ref[f"{case}.ext_ref"], ref[f"{case}.ext_est"])
        assert np.allclose(r, ref[f"{case}.r"], atol=1e-5) and np.allclose(t, ref[f"{case}.t"], atol=1e-4)
        assert math.isclose(s, float(ref[f"{case}.s"]), rel_tol=1e-5)
        assert rel_err(_aligned_poses(ref[f"{case}.ext_est"], r, t, s), ref[f"{case}.aligned"]) < 1e-5
    with pytest.raises(ValueError, match="degenerate"):
        align_poses(ref["n3.ext_ref"][:1], ref["n3.ext_est"][:1])  # one camera centre
