"""Prompt Depth Anything against the original code, stage by stage and end to end
(tests/fixtures/prompt_depth_anything), and its prompt handling (API, CLI, errors).

mini_pda is a tiny PromptDA built by the original code with random weights (the zero-initialised
prompt convs made non-zero); every intermediate was saved for two cases (`sq`: 98x98, batch 2,
one prompt with zeros; `wide`: 70x126, the position table resized). It is loaded as a user would,
through dpt_jax.load, from the release container (.ckpt, a 9-character key prefix) and from
.safetensors. Tolerance as the fixture README recommends: 5e-5 * max|ref| per array.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import cli, preprocess
from dpt_jax.errors import PromptError
from dpt_jax.prompt import prompt_range
from dpt_jax.prompt_input import read_prompt
from helpers import FIXTURES, nchw_to_nhwc, rel_err

PDA = FIXTURES / "prompt_depth_anything"
SOURCES = ("ckpt", "safetensors")
CASES = ("sq", "wide")
TOL = 5e-5  # * max|ref|, every array

ARRAYS = (("pos_embed", "tokens0") + tuple(f"{n}{i}" for n in ("feat", "cls") for i in range(1, 5))
          + ("project1", "project2", "project4") + tuple(f"{n}{i}" for n in ("reassemble", "rn") for i in range(1, 5))
          + tuple(f"fusion{i}_{s}" for i in range(1, 5)
                  for s in ("rcu2_out", "prompt_in", "prompt_conv1", "prompt_conv2", "prompt_branch"))
          + tuple(f"fusion{i}" for i in range(1, 5))
          + ("prompt_norm", "head_conv1", "head_preact", "head_out", "depth"))


@pytest.fixture(scope="module")
def models():
    return {source: dpt_jax.load(PDA / f"mini_pda.{source}") for source in SOURCES}


@pytest.fixture(scope="module")
def ref():
    return np.load(PDA / "mini_pda.npz")


@pytest.fixture(scope="module")
def e2e():
    return np.load(PDA / "pda_e2e.npz")


_PROGRAMS: dict = {}


def run_stages(model, images, prompt, params=None):
    """Depth and every sown intermediate under the fixture's names (fusion block i's as fusion{i}_<name>).

    One jitted program per (config, shapes), shared by every test and both checkpoint formats."""
    import jax
    from flax import traverse_util

    from dpt_jax.dpt import DPT

    key = (model.config, images.shape, prompt.shape)
    if key not in _PROGRAMS:
        module = DPT(model.config)
        _PROGRAMS[key] = jax.jit(lambda p, x, q: module.apply({"params": p}, x, prompt=q, mutable=["intermediates"]))
    depth, state = _PROGRAMS[key](model.params if params is None else params, images, prompt)
    out = {"depth": np.asarray(depth)}
    for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
        x = np.asarray(value[0])
        name = path[-1]
        if len(path) >= 3 and path[1].startswith("block_"):  # fusion/block_i/[prompt/]name
            name = f"fusion{path[1][len('block_'):]}_{name}"
        out[name] = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
    out["depth"] = out["depth"][:, None]
    out["head_out"] = out["head_out"][:, None]
    return out


@pytest.fixture(scope="module")
def stages(models, ref):
    cache = {}

    def get(source, case):
        if (source, case) not in cache:
            cache[source, case] = run_stages(models[source], nchw_to_nhwc(ref[f"{case}__input"]),
                                             nchw_to_nhwc(ref[f"{case}__prompt"]))
        return cache[source, case]

    return get


# ---------------------------------------------------------------------------------------------
# Against the original, stage by stage


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES)
def test_every_stage_matches_original(source, case, stages, ref):
    got = stages(source, case)
    worst = {name: rel_err(got[name], ref[f"{case}__{name.replace('rcu2_out', 'rcu2')}"]) for name in ARRAYS}
    bad = {k: f"{v:.2e}" for k, v in worst.items() if not v <= TOL}
    assert not bad, f"{source} {case}: {bad}"


def test_prompt_range_is_the_per_sample_min_and_max(ref):
    """Zeros take part in the min (sample 1 of `sq` has 65 of them): no invalid-pixel masking, as the original."""
    prompt = nchw_to_nhwc(ref["sq__prompt"])
    assert (prompt[1] == 0).sum() == 65
    norm, lo, hi = (np.asarray(a) for a in prompt_range(prompt))
    np.testing.assert_array_equal(lo.reshape(-1), ref["sq__prompt_min"].reshape(-1))
    np.testing.assert_array_equal(hi.reshape(-1), ref["sq__prompt_max"].reshape(-1))
    assert lo.reshape(-1)[1] == 0
    assert rel_err(norm.transpose(0, 3, 1, 2), ref["sq__prompt_norm"]) <= 1e-6


def test_prompt_branch_matters(models, ref):
    """The fixture catches a model that drops the prompt branch: its depth moves by far more than the tolerance."""
    import jax

    model = models["safetensors"]
    params = jax.tree_util.tree_map(lambda a: a, model.params)  # the same device arrays: the same program runs
    for i in range(1, 5):
        params["fusion"][f"block_{i}"]["prompt"]["conv3"] = jax.tree_util.tree_map(
            lambda a: a * 0, params["fusion"][f"block_{i}"]["prompt"]["conv3"])
    depth = run_stages(model, nchw_to_nhwc(ref["sq__input"]), nchw_to_nhwc(ref["sq__prompt"]), params)["depth"]
    assert rel_err(depth, ref["sq__depth"]) > 100 * TOL


def test_input_normalisation_matches_original(models, ref):
    """(image - mean) / std in float32, no resize at a multiple of 14: the original's in-model normalisation."""
    config = models["ckpt"].config
    image = nchw_to_nhwc(ref["wide__image"])
    got = np.asarray(preprocess.to_network(config, image, image.shape[1:3]))
    assert rel_err(got, nchw_to_nhwc(ref["wide__input"])) <= 1e-6


# ---------------------------------------------------------------------------------------------
# End to end through the original's load_image / load_depth / predict


def test_load_image_resize_and_depth_match_original(models, e2e, tmp_path):
    """150x200 with max_size 112 -> 84x112 by INTER_AREA (sides floored to 14); the prompt from a 16-bit PNG."""
    model = models["ckpt"]
    rgb = e2e["syn__rgb_uint8"]
    size = preprocess.network_size(model.config, rgb.shape[:2], target=112)
    assert size == (84, 112)
    x = np.asarray(preprocess.to_network(model.config, rgb[None], size))
    mean, std = (np.float32(model.config.input_mean), np.float32(model.config.input_std))
    expected = (nchw_to_nhwc(e2e["syn__image"]) - mean) / std
    assert rel_err(x, expected) <= 1e-5
    png = tmp_path / "lidar.png"
    Image.fromarray(e2e["syn__prompt_mm_uint16"]).save(png)
    prompt = read_prompt(png)
    np.testing.assert_array_equal(prompt, e2e["syn__prompt"][0, 0])
    depth = run_stages(model, x, prompt[None, :, :, None])["depth"]
    assert rel_err(depth, e2e["syn__depth"]) <= TOL


def test_predict_without_resize_matches_original(models, e2e, tmp_path):
    """A 56x84 picture (multiples of 14, under 1008) runs at its own size: predict's depth is the original's."""
    png = tmp_path / "lidar.png"
    Image.fromarray(e2e["noresize__prompt_mm_uint16"]).save(png)
    depth = models["safetensors"].predict(e2e["noresize__rgb_uint8"], prompt_depth=png)
    assert depth.shape == (56, 84)
    assert rel_err(depth[None, None], e2e["noresize__depth"]) <= TOL
    prompt = e2e["noresize__prompt"][0, 0]
    assert prompt.min() < depth.min() and depth.max() < prompt.max()  # a sigmoid inside the prompt's range


def test_real_photo_with_its_arkit_prompt_matches_original(models, e2e):
    """The repository's example photo (at 168x224) with its 192x256 ARKit depth: a prompt larger than the picture."""
    x = (nchw_to_nhwc(e2e["example__image"]) - np.float32(models["ckpt"].config.input_mean)) / np.float32(
        models["ckpt"].config.input_std)
    depth = run_stages(models["ckpt"], x, nchw_to_nhwc(e2e["example__prompt"]))["depth"]
    assert rel_err(depth, e2e["example__depth"]) <= TOL


# ---------------------------------------------------------------------------------------------
# Prompts that cannot be used, and the command line


def test_bad_prompts_are_clear_errors(models, e2e, tmp_path):
    model = models["safetensors"]
    rgb = e2e["noresize__rgb_uint8"]
    prompt = e2e["noresize__prompt"][0, 0]
    with pytest.raises(PromptError, match="needs the picture's metric depth prompt"):
        model.predict(rgb)
    with pytest.raises(PromptError, match="no valid pixel"):
        model.predict(rgb, prompt_depth=np.zeros_like(prompt))
    with pytest.raises(PromptError, match="aspect ratios"):
        model.predict(rgb, prompt_depth=prompt.T)  # a rotated map
    with pytest.raises(PromptError, match="everywhere"):
        model.predict(rgb, prompt_depth=np.full_like(prompt, 2.0))
    with pytest.raises(PromptError, match="not finite"):
        model.predict(rgb, prompt_depth=np.where(prompt > 1, np.nan, prompt))
    with pytest.raises(PromptError, match="one depth prompt per picture"):
        model.predict([rgb, rgb], prompt_depth=[prompt])
    rgb_png = tmp_path / "color.png"
    Image.fromarray(rgb).save(rgb_png)
    with pytest.raises(PromptError, match=f"{rgb_png}: a PNG prompt must be one channel"):
        model.predict(rgb, prompt_depth=rgb_png)
    other = dpt_jax.load(FIXTURES / "depth_anything" / "mini_da2.safetensors", variant="mini_da2")
    with pytest.raises(PromptError, match="takes no depth prompt"):
        other.predict(rgb, prompt_depth=prompt)


def test_cli_predict_with_a_prompt_writes_metres(e2e, tmp_path, capsys):
    picture, lidar, out = tmp_path / "rgb.png", tmp_path / "lidar.png", tmp_path / "out"
    Image.fromarray(e2e["noresize__rgb_uint8"]).save(picture)
    Image.fromarray(e2e["noresize__prompt_mm_uint16"]).save(lidar)
    model = str(PDA / "mini_pda.safetensors")
    assert cli.main(["predict", str(picture), "--prompt-depth", str(lidar), "-m", model, "-o", str(out),
                     "-f", "npy,ply", "-q"]) == 0
    depth = np.load(out / "rgb-depth.npy")
    assert rel_err(depth[None, None], e2e["noresize__depth"]) <= TOL
    header = (out / "rgb-points.ply").read_bytes().split(b"end_header")[0].decode()
    assert "metres" in header
    assert cli.main(["predict", str(picture), "-m", model, "-o", str(tmp_path / "none"), "-q"]) == 1
    assert "--prompt-depth" in capsys.readouterr().err


def test_transformers_layout_round_trip(models, ref, tmp_path):
    """save_pretrained writes transformers' PromptDepthAnythingForDepthEstimation names and config.json (as its
    converter maps the original keys); reading the folder back gives the original's parameters bit for bit."""
    import json

    from dpt_jax.convert.files import read_state_dict

    model = models["ckpt"]
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "prompt_depth_anything" and config["depth_estimation_type"] == "metric"
    assert config["architectures"] == ["PromptDepthAnythingForDepthEstimation"]
    names = set(read_state_dict(tmp_path / "hf" / "model.safetensors"))
    assert {f"neck.fusion_stage.layers.{4 - k}.prompt_depth_layer.convolution{c}.{p}"
            for k in range(1, 5) for c in (1, 2, 3) for p in ("weight", "bias")} <= names
    assert not any("resConfUnit" in n or n.startswith(("pretrained.", "depth_head.", "_")) for n in names)
    back = dpt_jax.load(tmp_path / "hf")
    assert back.config == model.config
    import jax

    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), back.params, model.params)
    assert all(jax.tree_util.tree_leaves(same))
    config["max_depth"] = 20
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="max_depth must be 1"):
        dpt_jax.load(tmp_path / "hf")


def test_transformers_runs_the_folder_dpt_jax_writes_as_the_original(models, ref, tmp_path):
    """transformers' PromptDepthAnythingForDepthEstimation, run on the folder save_pretrained writes
    (make_transformers_fixture.py: every weight loaded, none left over), gives the original's depth at the
    native 98x98, and so does dpt-jax reading that folder back; dpt-jax still writes the bytes it read."""
    import hashlib

    hf = np.load(PDA / "mini_pda_transformers.npz")
    models["ckpt"].save_pretrained(tmp_path / "hf")
    written = hashlib.sha256((tmp_path / "hf" / "model.safetensors").read_bytes()).hexdigest()
    assert written == str(hf["safetensors_sha256"])
    assert rel_err(hf["sq__depth"][:, None], ref["sq__depth"]) < TOL
    assert rel_err(hf["wide__depth"][:, None], ref["wide__depth"]) > 0.05  # its position-table rule (README: 13 %)
    back = dpt_jax.load(tmp_path / "hf")
    got = run_stages(back, nchw_to_nhwc(ref["sq__input"]), nchw_to_nhwc(ref["sq__prompt"]))["depth"]
    assert rel_err(got, hf["sq__depth"][:, None]) < TOL


def test_prompt_models_refuse_what_does_not_apply(models, monkeypatch, tmp_path):
    """max_depth (the range is the prompt's), exports (images only); "<name>_hf" loads that model (the variant)."""
    from dpt_jax import export, hub
    from dpt_jax.checkpoint import load_checkpoint
    from dpt_jax.errors import ConversionError

    with pytest.raises(ConversionError, match="takes its depth range from the prompt"):
        dpt_jax.load(PDA / "mini_pda.ckpt", max_depth=10)
    with pytest.raises(ValueError, match="exports take images only"):
        export.make_spec(models["ckpt"].config, size=(56, 84))
    models["ckpt"].save_pretrained(tmp_path / "hf")
    monkeypatch.setattr(hub, "resolve", lambda name, progress=True: tmp_path / "hf")
    with pytest.raises(ConversionError, match="does not hold a pda_vits_transparent model"):
        load_checkpoint("pda_vits_transparent_hf")  # the mini is not that model: refused as it
