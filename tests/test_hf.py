"""Hugging Face transformers checkpoints in (convert/hf.py) and out (save_pretrained), and models by name.

Fixtures (tests/fixtures/hf/<name>/): transformers' own config.json, outputs.npz (its
DPTForDepthEstimation / DepthAnythingForDepthEstimation depth on the reference inputs), tensors.json
(every tensor of its model.safetensors: dtype, shape, sha256 of the bytes) and, for mini_beit and
mini_swin2_pw, the model.safetensors itself. The other three folders are rebuilt here by the export
from the original fixtures; their tensors are checked against transformers' listing first, byte for
byte, and they are read with transformers' own config.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

import dpt_jax
from dpt_jax import cli, errors, hub
from dpt_jax.checkpoint import read_checkpoint
from dpt_jax.convert import hf
from dpt_jax.convert.files import read_state_dict
from dpt_jax.errors import CheckpointError, ConversionError
from dpt_jax.registry import FAMILIES, get_config
from helpers import FIXTURES, nchw_to_nhwc, rel_err

HF = FIXTURES / "hf"
DA = FIXTURES / "depth_anything"
DOCUMENTED = json.loads((HF / "hf_vs_original.json").read_text())["fixtures"]

# name -> (original fixture, its npz, cases, tolerance vs the original, SwinV2 windows for the original file)
MIDAS = {
    "mini_beit": (FIXTURES / "mini_beit.safetensors", FIXTURES / "mini_beit.npz", ("native", "wide", "tall_odd"),
                  1e-4, None),
    "mini_swin2": (FIXTURES / "mini_swin2.safetensors", FIXTURES / "mini_swin2.npz", ("native",), 2e-3, (0, 0, 0, 0)),
    "mini_swin2_pw": (FIXTURES / "mini_swin2_pw.safetensors", FIXTURES / "mini_swin2_pw.npz", ("native",), 2e-3,
                      (4, 4, 4, 2)),
}
DEPTH_ANYTHING = {
    "mini_da2": (DA / "mini_da2.safetensors", DA / "mini_da2.npz", ("native", "wide", "up_square", "down_square",
                                                                    "tall"), 5e-5, None),
    "mini_da2_metric": (DA / "mini_da2_metric.safetensors", DA / "mini_da2_metric.npz",
                        ("native", "wide", "up_square", "down_square", "tall"), 5e-5, None),
}
ALL = {**MIDAS, **DEPTH_ANYTHING}
UNUSED_UNIT = "neck.fusion_stage.layers.0.residual_layer1."  # the deepest block's first unit: never called



def listing(name) -> dict:
    return json.loads((HF / name / "tensors.json").read_text())


def sha(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def flat(params) -> dict:
    return traverse_util.flatten_dict(dict(params), sep="/")


def original_checkpoint(name):
    src, _, _, _, windows = ALL[name]
    return read_checkpoint(src, **({"pretrained_window_sizes": windows} if windows else {}))


def transformers_tensors(name) -> dict:
    """transformers' model.safetensors of `name`, rebuilt from the original fixture by renaming and splitting
    (convert/hf.py's table, no family code), and checked byte for byte against transformers' listing."""
    renamer = hf.Renamer.of(get_config({"mini_swin2_pw": "mini_swin2"}.get(name, name)).family.hf)
    out = {}
    for key, ref in read_state_dict(ALL[name][0]).items():
        names = renamer.to_hf(key)
        if names is None or key.endswith(("relative_position_index", "relative_coords_table")):
            continue  # buffers and classifier weights transformers 5 does not keep
        array = ref.read()
        rows = array.shape[0] // len(names)
        for i, n in enumerate(names):
            out[n] = np.ascontiguousarray(array[i * rows:(i + 1) * rows] if len(names) == 3 else array)
    theirs = listing(name)["tensors"]
    assert {k: sha(v) for k, v in out.items()} == {k: v["sha256"] for k, v in theirs.items()}
    return out


def hf_folder(name, tmp_path_factory) -> Path:
    """transformers' folder of `name`: the fixture's own, or its tensors rebuilt, with transformers' config.json."""
    if (HF / name / "model.safetensors").exists():
        return HF / name
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp(name)
    save_file(transformers_tensors(name), folder / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(HF / name / "config.json", folder / "config.json")
    return folder


# ---------------------------------------------------------------------------------------------
# Import: transformers' files give the original's parameters and numbers


@pytest.mark.parametrize("name", list(MIDAS))
def test_import_gives_the_original_parameters_bit_for_bit(name, tmp_path_factory):
    imported = read_checkpoint(hf_folder(name, tmp_path_factory))
    original = original_checkpoint(name)
    assert imported.config == original.config.replace(name=imported.config.name)
    a, b = flat(imported.params), flat(original.params)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


@pytest.fixture(scope="module", params=list(ALL))
def imported_run(request, tmp_path_factory):
    name = request.param
    _, npz, cases, tol, _ = ALL[name]
    model = dpt_jax.load(hf_folder(name, tmp_path_factory))
    reference = np.load(npz)
    depths = {c: np.asarray(model.apply(nchw_to_nhwc(reference[f"{c}__input"]))) for c in cases}
    return name, reference, depths


def _check_against_original(imported_run):
    name, reference, depths = imported_run
    assert depths is not None, "the dinov2 family is not registered"
    tol = ALL[name][3]
    errors = {c: rel_err(d, reference[f"{c}__depth"]) for c, d in depths.items()}
    print(f"{name}: vs original {errors}")
    assert {c: e for c, e in errors.items() if e >= tol} == {}


def _check_against_transformers(imported_run):
    """Where transformers deviates from the original, we do not: its documented difference shows up."""
    name, reference, depths = imported_run
    assert depths is not None, "the dinov2 family is not registered"
    theirs = np.load(HF / name / "outputs.npz")
    for case, ours in depths.items():
        documented = DOCUMENTED[name]["cases"][case]
        hf_depth = theirs[f"{case}__predicted_depth"]
        if hf_depth.shape != ours.shape:  # transformers' fusion on odd grids: another output size
            assert list(hf_depth.shape) == documented["shape_hf"] and list(ours.shape) == documented["shape_original"]
            continue
        original = reference[f"{case}__depth"]  # the documented measure: max|HF - x| / max|original|
        measured = float(np.abs(ours.astype(np.float64) - hf_depth).max() / np.abs(original).max())
        print(f"{name}/{case}: ours vs transformers {measured:.3g}, "
              f"documented {documented['max_abs_over_max_ref']:.3g}")
        if documented["max_abs_over_max_ref"] > 1e-3:  # a real deviation: ours is off theirs by that much
            assert abs(measured - documented["max_abs_over_max_ref"]) < 0.05 * documented["max_abs_over_max_ref"]
        else:  # rounding: ours agrees with theirs within the original's tolerance
            assert measured < ALL[name][3]


@pytest.mark.parametrize("imported_run", list(MIDAS), indirect=True)
def test_imported_model_matches_the_original(imported_run):
    _check_against_original(imported_run)


@pytest.mark.parametrize("imported_run", list(MIDAS), indirect=True)
def test_imported_model_keeps_the_original_where_transformers_deviates(imported_run):
    _check_against_transformers(imported_run)


@pytest.mark.parametrize("imported_run", list(DEPTH_ANYTHING), indirect=True)
def test_imported_depth_anything_matches_the_original(imported_run):
    _check_against_original(imported_run)


@pytest.mark.parametrize("imported_run", list(DEPTH_ANYTHING), indirect=True)
def test_imported_depth_anything_keeps_the_original_where_transformers_deviates(imported_run):
    _check_against_transformers(imported_run)


# ---------------------------------------------------------------------------------------------
# Depth Anything at the key level (no encoder family needed)


@pytest.mark.parametrize("name", list(ALL))
def test_renames_are_transformers_own(name):
    """Original tensors renamed and split give transformers' file byte for byte (asserted inside)."""
    assert len(transformers_tensors(name)) == len(listing(name)["tensors"])


@pytest.mark.parametrize("name", list(DEPTH_ANYTHING))
def test_depth_anything_renames_invert(name):
    """transformers' Depth Anything tensors renamed back are the original file, key for key, byte for byte."""
    original = read_state_dict(ALL[name][0])
    theirs = listing(name)["tensors"]
    renamer = hf.Renamer.of(FAMILIES["dinov2"].hf)
    ours = transformers_tensors(name)
    assert sorted(original) == sorted({renamer.from_hf(k)[0] for k in ours})  # all 183 keys, mask_token included

    class Ref:  # an HF tensor known by its listing, read from the bytes that hash to it
        def __init__(self, key):
            self.key, self.shape, self.dtype = key, tuple(theirs[key]["shape"]), np.dtype(theirs[key]["dtype"])

        def read(self):
            assert sha(ours[self.key]) == theirs[self.key]["sha256"]
            return ours[self.key]

    back = hf.to_original({k: Ref(k) for k in theirs}, renamer)
    assert sorted(back) == sorted(original)
    for key, ref in back.items():
        assert tuple(ref.shape) == original[key].shape, key
        assert np.array_equal(ref.read(), original[key].read()), key
    assert sum(isinstance(r, hf.ConcatRef) for r in back.values()) == 2 * 8  # qkv weight + bias per block


@pytest.mark.parametrize("manifest", sorted(p.name for p in (DA / "manifests").glob("da*.json")))
def test_depth_anything_release_keys_all_map_and_invert(manifest):
    m = json.loads((DA / "manifests" / manifest).read_text())
    renamer = hf.Renamer.of(FAMILIES["dinov2"].hf)
    keys = [e["key"] for e in m["state_dict"]]
    depth = m["architecture"]["depth"]
    hf_keys = []
    for key in keys:
        names = renamer.to_hf(key)
        assert names is not None, key
        hf_keys += names
        for i, n in enumerate(names):
            assert renamer.from_hf(n) == (key, i if len(names) == 3 else None)
    assert len(hf_keys) == len(set(hf_keys)) == len(keys) + 4 * depth  # qkv weight and bias: 1 -> 3 each


def test_depth_anything_config_gives_hooks_and_metric_depth():
    family, relative = hf.parse_config(HF / "mini_da2" / "config.json", FAMILIES.values())
    same, metric = hf.parse_config(HF / "mini_da2_metric" / "config.json", FAMILIES.values())
    assert family is same is FAMILIES["dinov2"]
    assert relative.hooks == metric.hooks == (1, 2, 4, 7)  # out_indices [2, 3, 5, 8]
    # facts for the family's detect_config: the blocks feeding the neck pick the variant (V1, V2 or a mini)
    assert relative.options == {"hooks": (1, 2, 4, 7), "metric": False}
    assert metric.options == {"hooks": (1, 2, 4, 7), "metric": True, "max_depth": 20.0}
    assert (relative.metric, metric.metric, metric.max_depth) == (False, True, 20.0)


@pytest.mark.parametrize("name", list(DEPTH_ANYTHING))
def test_depth_anything_export_is_transformers_layout(name, tmp_path):
    _check_export(name, tmp_path)


@pytest.mark.parametrize("name", list(DEPTH_ANYTHING))
def test_depth_anything_without_its_family_is_a_clear_error(name, tmp_path):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(HF / name / "config.json", folder)
    shutil.copy(HF / "mini_beit" / "model.safetensors", folder)  # weights of another model
    with pytest.raises(ConversionError, match="does not fit|not a checkpoint"):
        read_checkpoint(folder)


# ---------------------------------------------------------------------------------------------
# Export: the transformers layout, read back bit for bit


def flat_json(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("id2label", "label2id"):
            out.update(flat_json(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# Where our config.json differs from transformers', on purpose.
INTENDED = {
    "mini_beit": {"backbone_config.layer_norm_eps": (1e-6, 1e-12)},  # the original's eps, not BeitConfig's default
}


def _check_export(name, tmp_path):
    # MiDaS: from the original file. Depth Anything: from transformers' folder (an original DA file cannot
    # tell its hooks or metric depth; config.json can).
    original = original_checkpoint(name) if name in MIDAS else read_checkpoint(hf_folder(name, FakeFactory(tmp_path)))
    out = tmp_path / "export"
    hf.write(out, original.config, original.params)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ours = flat_json(json.loads((out / "config.json").read_text()))
    theirs = flat_json(json.loads((HF / name / "config.json").read_text()))
    differences = {k: (ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    assert differences == {**INTENDED.get(name, {}), "exported_by": ("dpt-jax", None)}
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = listing(name)["tensors"]
    assert sorted(tensors) == sorted(expected)
    assert {k: (str(v.dtype), list(v.shape)) for k, v in tensors.items()} == \
        {k: (v["dtype"], v["shape"]) for k, v in expected.items()}
    differing = sorted(k for k, v in tensors.items() if sha(v) != expected[k]["sha256"])
    # Only what the forward never uses differs (written as zeros: dpt-jax does not keep it): the deepest
    # fusion block's first residual unit, and Depth Anything's mask token
    assert all(k.startswith(UNUSED_UNIT) or k == "backbone.embeddings.mask_token" for k in differing), differing
    assert all(not tensors[k].any() for k in differing)
    back = read_checkpoint(out)
    assert back.config == original.config.replace(name=back.config.name)
    a, b = flat(back.params), flat(original.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class FakeFactory:
    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        (self.root / name).mkdir()
        return self.root / name


@pytest.mark.parametrize("name", list(MIDAS))
def test_export_is_transformers_layout_and_reads_back_bit_for_bit(name, tmp_path):
    _check_export(name, tmp_path)


def test_save_pretrained_refuses_a_foreign_folder_and_replaces_a_previous_export(tmp_path):
    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and not a previous dpt-jax export"):
        model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    model.save_pretrained(out, overwrite=True)  # its two files written; what was there is not deleted
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    clean = tmp_path / "clean"
    model.save_pretrained(clean)
    before = (clean / "model.safetensors").stat().st_ino
    model.save_pretrained(clean)  # a previous export: replaced without asking
    assert (clean / "model.safetensors").stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "out"]  # no temporary folders left


def test_failed_export_leaves_the_previous_one_and_no_temporary_folder(tmp_path, monkeypatch):
    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    out = tmp_path / "out"
    model.save_pretrained(out)
    before = (out / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dpt_jax.convert.hf.write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.save_pretrained(out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_convert_to_hf_info_and_predict(tmp_path, capsys):
    out = tmp_path / "hf"
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "--to", "hf", "-o", str(out)]) == 0
    assert (out / "config.json").is_file()
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "--to", "hf", "-o", str(out)]) == 0  # re-export
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "--to", "hf", "-o", str(foreign)]) == 1
    assert "not a previous dpt-jax export" in capsys.readouterr().err
    assert cli.main(["convert", str(HF / "mini_swin2_pw"), "-o", str(tmp_path / "c.safetensors")]) == 0
    assert "pretrained window sizes: (4, 4, 4, 2)" in capsys.readouterr().out
    assert cli.main(["info", str(HF / "mini_beit")]) == 0
    assert "parameters:" in capsys.readouterr().out
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(tmp_path / "p.png")
    assert cli.main(["predict", str(tmp_path / "p.png"), "-m", str(HF / "mini_beit"), "-o", str(tmp_path / "d"),
                     "--format", "npy", "--no-progress"]) == 0
    assert np.load(tmp_path / "d" / "p-depth.npy").shape == (40, 50)


# ---------------------------------------------------------------------------------------------
# Refusals: every problem at once, named by the file and by HF names


def copy_folder(name, tmp_path) -> Path:
    folder = tmp_path / name
    shutil.copytree(HF / name, folder, ignore=shutil.ignore_patterns("outputs.npz", "tensors.json"))
    return folder


def rewrite_weights(folder, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_key_problems_are_listed_at_once_by_their_hf_names(tmp_path):
    folder = copy_folder("mini_beit", tmp_path)

    def damage(t):
        t["backbone.encoder.layer.3.lambda_one"] = t.pop("backbone.encoder.layer.3.lambda_1")
        del t["backbone.encoder.layer.2.attention.attention.key.weight"]
        t["neck.convs.1.weight"] = t["neck.convs.1.weight"][:, :5]

    rewrite_weights(folder, damage)
    with pytest.raises(ConversionError) as e:
        read_checkpoint(folder)
    message = str(e.value)
    assert "backbone.encoder.layer.3.lambda_1 (original pretrained.model.blocks.3.gamma_1)" in message  # missing
    assert "backbone.encoder.layer.2.attention.attention.query.weight + backbone.encoder.layer.2.attention." \
           "attention.key.weight + backbone.encoder.layer.2.attention.attention.value.weight" in message  # missing
    assert "unexpected:\n    backbone.encoder.layer.3.lambda_one" in message
    assert "backbone.encoder.layer.2.attention.attention.query.weight\n" in message  # its other parts: unexpected
    assert "neck.convs.1.weight (original scratch.layer2_rn.weight): shape (16, 5, 3, 3)" in message


def test_buffers_older_transformers_saved_are_skipped_like_the_originals(tmp_path):
    folder = copy_folder("mini_beit", tmp_path)
    index = "backbone.encoder.layer.0.attention.attention.relative_position_bias.relative_position_index"
    rewrite_weights(folder, lambda t: t.update({index: np.zeros((65, 65), np.int64)}))
    checkpoint = read_checkpoint(folder)
    assert "pretrained.model.blocks.0.attn.relative_position_index" in checkpoint.skipped
    a, b = flat(checkpoint.params), flat(read_checkpoint(HF / "mini_beit").params)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change, match", [
    ({"is_hybrid": True}, "DPT-Hybrid \\(ViT-hybrid backbone\\) is not supported"),
    ({"backbone_config": None}, "DPT-Large / DPT-Base \\(plain ViT backbone"),
    ({"model_type": "zoedepth"}, "ZoeDepth \\(model_type 'zoedepth'\\) is not supported"),
    ({"model_type": "bert"}, "field model_type: 'bert' is not a model dpt-jax implements"),
    ({"architectures": ["DPTForSemanticSegmentation"]}, "field architectures"),
    ({"backbone_config.out_indices": "2,4,6,8"}, "field backbone_config.out_indices: must be a list"),
    ({"backbone_config.out_indices": [2, 4, 6, 9]}, "field backbone_config.out_indices"),
    ({"backbone_config.num_attention_heads": 4}, "field backbone_config.num_attention_heads is 4, but the weights"),
    ({"backbone_config.model_type": "convnext"}, "'dpt' model with a 'convnext' backbone"),
])
def test_unsupported_or_bad_configs_name_the_file_and_the_field(tmp_path, change, match):
    folder = copy_folder("mini_beit", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match) as e:
        dpt_jax.load(folder)
    assert str(folder / "config.json") in str(e.value)


def test_oversized_or_broken_config_is_refused(tmp_path):
    folder = copy_folder("mini_beit", tmp_path)
    (folder / "config.json").write_text("{" * 10)
    with pytest.raises(CheckpointError, match="config.json: is not valid JSON"):
        read_checkpoint(folder)
    (folder / "config.json").write_text(" " * (hf.MAX_CONFIG_BYTES + 1))
    with pytest.raises(CheckpointError, match="at most 1048576"):
        read_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError):
        read_checkpoint(folder)
    (folder / "config.json").write_text((HF / "mini_beit" / "config.json").read_text())
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights: neither model.safetensors nor"):
        read_checkpoint(folder)


def test_sharded_weights_load_like_one_file(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_folder("mini_beit", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: tensors[k] for k in names}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: s for s, names in shards.items() for k in names}}
    (folder / hf.INDEX_NAME).write_text(json.dumps(index))
    a, b = flat(read_checkpoint(folder).params), flat(read_checkpoint(HF / "mini_beit").params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert flat(read_checkpoint(folder / hf.INDEX_NAME).params).keys() == a.keys()  # the index file's path works too

    index["weight_map"][keys[0]] = "../elsewhere.safetensors"
    (folder / hf.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not plain file names"):
        read_checkpoint(folder)
    index["weight_map"][keys[0]] = "model-00002-of-00002.safetensors"  # the wrong shard
    (folder / hf.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not match its shards"):
        read_checkpoint(folder)


# ---------------------------------------------------------------------------------------------
# Names: Hugging Face Hub repo ids through huggingface_hub's cache, never the network


def hub_cache(root: Path, repo_id: str, source: Path) -> Path:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, snapshot / name)
    return snapshot


NO_NETWORK = """
import socket, sys
def refuse(*a, **k):
    raise AssertionError("network access")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def run_offline(code: str, cache: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "DPT_JAX_COMPILATION_CACHE": "off",
           "JAX_PLATFORMS": "cpu"}
    env.pop("HF_TOKEN", None)
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", NO_NETWORK + code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)


def test_repo_id_loads_from_the_hub_cache_offline_without_touching_the_network(tmp_path):
    snapshot = hub_cache(tmp_path / "hub", "Intel/dpt-mini-beit", HF / "mini_beit")
    code = """
import numpy as np, dpt_jax
from dpt_jax import cli, hub
print("FOLDER", hub.resolve("Intel/dpt-mini-beit"))
model = dpt_jax.load("Intel/dpt-mini-beit")
print("PARAMS", model.num_params)
sys.exit(cli.main(["info", "Intel/dpt-mini-beit"]))
"""
    result = run_offline(code, tmp_path / "hub")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"FOLDER {snapshot}" in result.stdout
    assert f"PARAMS {read_checkpoint(HF / 'mini_beit').num_params}" in result.stdout
    assert f"source:     {snapshot}" in result.stdout


def test_repo_id_offline_and_not_cached_says_where_and_how(tmp_path):
    code = """
import dpt_jax
dpt_jax.load("depth-anything/Depth-Anything-V2-Small-hf")
"""
    result = run_offline(code, tmp_path / "hub")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "DownloadError" in last and "HF_HUB_OFFLINE is set" in last
    assert str(tmp_path / "hub" / "models--depth-anything--Depth-Anything-V2-Small-hf" / "snapshots") in last
    assert "pass the path of a local folder holding config.json and model.safetensors" in last
    assert "network access" not in result.stderr


def test_known_hf_names_map_to_repos():
    from dpt_jax.registry import canonical_name

    assert hub.hf_repo("da2_vits_hf") == "depth-anything/Depth-Anything-V2-Small-hf"
    # every model with a transformers-layout repo is reachable by "<name>_hf", whichever name it is given by
    assert hub.hf_repo("da2_metric_hypersim_vitl_hf") == hub.hf_repo("da2_metric_indoor_vitl_hf") == \
        "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
    assert hub.hf_repo("swin2_tiny_256_hf") == "Intel/dpt-swinv2-tiny-256"
    # 18 MiDaS / Depth Anything, 3 Prompt Depth Anything, 2 Distill-Any-Depth (Small, Large)
    assert sum(hub.hf_repo(f"{name}_hf") is not None for name in hub.REGISTRY) == 23
    assert hub.hf_repo("da2_vits") is None and hub.lookup("da2_vits").repo == "depth-anything/Depth-Anything-V2-Small"
    assert canonical_name("da2_metric_outdoor_vits") == "da2_metric_vkitti_vits"  # one vocabulary: both names work
    with pytest.raises(errors.UnknownModelError, match="known models: .*da2_vits.*repo id such as depth-anything/"):
        hub.resolve("no_such_model")


# ---------------------------------------------------------------------------------------------
# One checkpoint read: the download's check is the load's reading


def test_load_by_name_reads_the_downloaded_file_once(server, cache, monkeypatch):
    import dpt_jax.checkpoint
    from dpt_jax.family import Release

    da = FIXTURES / "depth_anything" / "mini_da2.pth"
    hub.register(Release("mini_da2", "mini_da2.pth", da.stat().st_size, "Apache-2.0",
                         url=server.serve("/mini_da2.pth", da.read_bytes())))
    calls = []
    real = dpt_jax.checkpoint.read_state_dict
    monkeypatch.setattr(dpt_jax.checkpoint, "read_state_dict", lambda *a, **k: calls.append(a) or real(*a, **k))
    try:
        model = dpt_jax.load("mini_da2")
        assert len(calls) == 1  # the download's check is the load's reading
        assert model.config.name == "mini_da2"  # the entry's variant (its keys cannot tell)
        assert model.num_params == read_checkpoint(da, variant="mini_da2").num_params
        dpt_jax.load("mini_da2")  # from the cache, stamped: read once, by the load
        assert len(calls) == 3  # (read_checkpoint above read it once more)
    finally:
        hub.unregister("mini_da2")
