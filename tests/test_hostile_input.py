"""Hostile or odd inputs, second round: each a refusal with a clear message, before anything large is allocated."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import dpt_jax
from dpt_jax.config import DPTConfig
from dpt_jax.convert import keys
from dpt_jax.convert.safetensors_io import MAX_TENSORS, read_safetensors
from dpt_jax.errors import CheckpointError, ConfigError, ImageError
from dpt_jax.pictures import open_source
from dpt_jax.registry import MINI_CONFIGS
from helpers import FIXTURES

HF = FIXTURES / "hf"


def test_a_header_of_too_many_tensors_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    entries = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(MAX_TENSORS + 1)}
    blob = json.dumps(entries).encode()
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)

    def no_parse(*args, **kwargs):
        raise AssertionError("the header was parsed")

    monkeypatch.setattr(json, "loads", no_parse)
    with pytest.raises(CheckpointError, match=f"declares {MAX_TENSORS + 1} tensors; at most {MAX_TENSORS}"):
        read_safetensors(path)


def test_a_header_over_16_mib_is_refused(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", (16 << 20) + 1) + b"{" + b" " * 100)
    with pytest.raises(CheckpointError, match="implausibly large"):
        read_safetensors(path)


def copy_hf(tmp_path, name="mini_beit"):
    folder = tmp_path / name
    shutil.copytree(HF / name, folder)
    return folder


@pytest.mark.parametrize("value", ["DPTForDepthEstimation", {"DPTForDepthEstimation": 1}, ["DPTForDepthEstimationX"],
                                   [1]])
def test_architectures_must_be_a_list_naming_the_class_exactly(tmp_path, value):
    folder = copy_hf(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="field architectures") as e:
        dpt_jax.load(folder)
    assert str(folder / "config.json") in str(e.value)


@pytest.mark.parametrize("weight_map", [{"a": ["x.safetensors"]}, {"a": {"b": 1}}, {"a": 3}])
def test_an_index_whose_values_are_not_file_names_is_a_clear_error(tmp_path, weight_map):
    folder = copy_hf(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="weight_map must map tensor names to shard file names"):
        dpt_jax.load(folder)


def test_an_oversized_config_says_so_not_invalid_json(tmp_path):
    folder = copy_hf(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "dpt", "pad": "x" * (1 << 20)}))
    with pytest.raises(CheckpointError) as e:
        dpt_jax.load(folder)
    assert "at most 1048576 are accepted" in str(e.value) and "not valid JSON" not in str(e.value)


def test_a_swinv2_of_64_stages_is_a_config_error():
    encoder = type(MINI_CONFIGS["mini_swin2"].encoder)
    with pytest.raises(ConfigError, match="at most 8 stages"):
        encoder(embed_dim=32, depths=(1,) * 64, num_heads=(1,) * 64, window_size=4,
                pretrained_window_sizes=(0,) * 64, native_size=(64, 64))


def test_config_names_with_control_characters_are_refused():
    with pytest.raises(ConfigError, match="name must be printable"):
        MINI_CONFIGS["mini_beit"].replace(name="evil\nmodel: trusted")
    assert isinstance(MINI_CONFIGS["mini_beit"].replace(name="ok name"), DPTConfig)


def test_problem_lists_are_capped():
    problems = keys.problem_list(missing=[f"key{i}" for i in range(10_000)], unexpected=["x" * 10_000])
    assert len(problems[0].splitlines()) == keys.MAX_LISTED + 2 and "... and 9,950 more" in problems[0]
    assert len(problems[1]) < 300 and "(10000 characters)" in problems[1]


def test_only_documented_picture_formats_are_decoded(tmp_path):
    from PIL import Image

    picture = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(picture).save(tmp_path / "p.png")
    assert open_source(tmp_path / "p.png").size == (8, 8)
    Image.fromarray(picture).save(tmp_path / "p.pcx")  # a format Pillow reads, not one dpt-jax documents
    with pytest.raises(ImageError, match="not an image file of a picture format dpt-jax reads"):
        open_source(tmp_path / "p.pcx")


# -- one output rule for every command: never replace without --overwrite, never write over an input,
#    never delete what the run did not create

def test_convert_and_export_keep_existing_files_without_overwrite(tmp_path, capsys):
    from dpt_jax import cli

    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "-o", str(out)]) == 1
    assert "exists; not replaced" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "-o", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"mine"
    program = tmp_path / "m.stablehlo"
    program.write_bytes(b"mine")
    assert cli.main(["export", str(out), "-o", str(program), "--size", "64x64", "--no-verify"]) == 1
    assert program.read_bytes() == b"mine"


def test_no_command_writes_over_its_input(tmp_path, capsys):
    from dpt_jax import cli

    src = tmp_path / "m.safetensors"
    shutil.copy(FIXTURES / "mini_beit.safetensors", src)
    before = src.read_bytes()
    assert cli.main(["export", str(src), "-o", str(src), "--size", "64x64", "--overwrite"]) == 1
    assert "would write over the input" in capsys.readouterr().err and src.read_bytes() == before
    folder = copy_hf(tmp_path)
    weights = (folder / "model.safetensors").read_bytes()
    assert cli.main(["convert", str(folder), "-o", str(folder / "model.safetensors"), "--overwrite"]) == 1
    assert (folder / "model.safetensors").read_bytes() == weights
    # --to hf into a folder holding the source checkpoint: refused, the source stays
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copy(FIXTURES / "mini_beit.pt", holder / "mini_beit.pt")
    assert cli.main(["convert", str(holder / "mini_beit.pt"), "--to", "hf", "-o", str(holder), "--overwrite"]) == 1
    assert (holder / "mini_beit.pt").exists()


def test_convert_to_hf_with_overwrite_replaces_only_its_own_files(tmp_path):
    from dpt_jax import cli

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "config.json").write_text("{}")
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "--to", "hf", "-o", str(folder), "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "keep me"
    assert json.loads((folder / "config.json").read_text())["exported_by"] == "dpt-jax"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left beside it


def test_a_video_without_pyav_names_the_extra_to_install(tmp_path, monkeypatch):
    import sys

    from dpt_jax import video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded")
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(RuntimeError, match=r"pip install 'dpt-jax\[video\]'"):
        video.predict_video(None, clip, tmp_path / "out.mp4")


def test_weights_linked_from_outside_their_folder_are_refused_and_never_quoted(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2 and more")
    folder = copy_hf(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(secret)
    with pytest.raises(CheckpointError, match="link to a file outside") as e:
        dpt_jax.load(folder)
    assert "hunter2" not in str(e.value) and "TOKEN" not in str(e.value)
    with pytest.raises(CheckpointError) as e:  # named directly: read, and still not quoted
        dpt_jax.load(secret)
    assert "TOKEN" not in str(e.value)


def test_outputs_stay_inside_the_output_folder_and_are_never_inputs(tmp_path, monkeypatch):
    from dpt_jax.inputs import expand_inputs

    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    for p in (photos / "x.png", photos / "a" / "y.png", photos / "depth" / "x-depth.png"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    found, notes = expand_inputs([str(photos)], recursive=True, outdir=photos / "depth")
    assert sorted(str(i.rel) for i in found) == ["a/y.png", "x.png"] and "left out" in notes[-1]
    monkeypatch.chdir(photos / "a")
    found, _ = expand_inputs(["../*/../x.png"])
    assert [str(i.rel) for i in found] == ["x.png"]  # no ".." climbs out of the output folder


def test_alignment_files_with_absurd_values_are_clear_errors(tmp_path):
    from dpt_jax import geometry
    from dpt_jax.errors import AlignError

    picture = np.full((8, 10, 3), 128, np.uint8)
    inverse = np.linspace(1, 2, 80, dtype=np.float32).reshape(8, 10)
    for rows, match in [("inf,2,3\n", "not a pixel"), ("1," * 600 + "\n", "longer than 1000 characters")]:
        known = tmp_path / "k.csv"
        known.write_text(rows)
        with pytest.raises(AlignError, match=match):
            geometry.load_known_depths(known, (8, 10))
    known = tmp_path / "far.csv"
    known.write_text("".join(f"{x},{y},1e300\n" for x, y in [(0, 0), (5, 3), (9, 7)]))
    with pytest.raises(AlignError, match="no valid point"):
        geometry.save_point_cloud(tmp_path / "p.ply", inverse, picture, known=known)
    assert not (tmp_path / "p.ply").exists()


def test_options_that_apply_to_no_input_say_so():
    from types import SimpleNamespace

    from dpt_jax.predict_files import unused_options

    args = SimpleNamespace(normalize="running", smoothing=None, side_by_side=True, frames=None, format=["npy", "ply"],
                           size=(64, 64), bucket=False, input_size=None, streaming=True)
    assert unused_options(args, [False, False]) == [
        "--normalize, --side-by-side, --streaming apply to videos; this run has none"]
    assert unused_options(args, [True])[0].startswith("-f/--format applies to pictures")  # --size: videos too
    assert len(unused_options(args, [True, False])) == 1  # a mixed run: the picture options apply to its pictures


def test_an_empty_folder_names_itself_and_the_suffixes_taken(tmp_path, capsys):
    from dpt_jax import cli

    (tmp_path / "notes.txt").write_text("no pictures here")
    assert cli.main(["predict", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"no input pictures or videos found in {tmp_path}" in err and ".jpg" in err and "--recursive" in err


def test_metric_pictures_from_the_api_hold_what_the_png16_file_holds(tmp_path):
    from PIL import Image

    from dpt_jax import cli

    model = dpt_jax.load(FIXTURES / "depth_anything" / "mini_da2_metric.pth", variant="mini_da2_metric")
    picture = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    metres = model.predict(picture)
    pil = np.asarray(model.predict(picture, output="pil"))
    np.testing.assert_array_equal(pil, np.clip(np.round(metres.astype(np.float64) * 256), 0, 65535))
    Image.fromarray(picture).save(tmp_path / "p.png")
    assert cli.main(["predict", str(tmp_path / "p.png"), "-m", str(FIXTURES / "depth_anything" / "mini_da2_metric.pth"),
                     "--variant", "mini_da2_metric", "-f", "png16", "-o", str(tmp_path / "o"), "-q"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "p-depth-16.png")), pil)


def test_options_on_hugging_face_folders_win_or_are_refused_as_on_converted_files(tmp_path):
    relative, metric = tmp_path / "relative", tmp_path / "metric"
    for name, folder in (("mini_da2", relative), ("mini_da2_metric", metric)):
        dpt_jax.load(FIXTURES / "depth_anything" / f"{name}.pth", variant=name).save_pretrained(folder)
    assert dpt_jax.load(metric, max_depth=5.0).config.max_depth == 5.0  # allowed: it wins
    assert dpt_jax.load(relative, variant="mini_da2").config.name == "mini_da2"
    with pytest.raises(CheckpointError, match="not the variant mini_da2_metric given: metric depth"):
        dpt_jax.load(relative, variant="mini_da2_metric")
    with pytest.raises(CheckpointError, match="max_depth applies to metric models"):
        dpt_jax.load(relative, max_depth=5.0)


def test_predict_takes_batches_generators_and_several_outputs():
    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    pictures = np.random.default_rng(5).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    expected = model.predict(list(pictures))
    assert len(expected) == 2
    for given in (pictures, (p for p in pictures), tuple(pictures)):
        got = model.predict(given)
        assert isinstance(got, list) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    depth, picture = model.predict(pictures[0], output=("array", "pil"))
    np.testing.assert_array_equal(depth, model.predict(pictures[0]))  # batch 1 both (batch 2 may round differently)
    assert picture.mode == "I;16" and picture.size == (48, 40)
    with pytest.raises(ValueError, match="output must be"):
        model.predict(pictures[0], output=("array", "jpeg"))


def test_point_clouds_from_a_focal_length_or_intrinsics(tmp_path, capsys):
    from PIL import Image

    from dpt_jax import cli

    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    common = [str(tmp_path / "p.png"), "-m", str(FIXTURES / "mini_beit.safetensors"), "-f", "ply", "-q"]
    assert cli.main(["predict", *common, "-o", str(tmp_path / "a"), "--focal", "50"]) == 0
    assert cli.main(["predict", *common, "-o", str(tmp_path / "b"), "--fx", "50", "--fy", "50", "--cx", "30",
                     "--cy", "20"]) == 0
    a, b = (tmp_path / d / "p-points.ply" for d in "ab")
    assert a.read_bytes() == b.read_bytes() and b"fx 50 fy 50 cx 30 cy 20" in a.read_bytes()
    assert cli.main(["predict", *common, "-o", str(tmp_path / "c"), "--focal", "50", "--fov", "70"]) == 1
    assert "choose one" in capsys.readouterr().err
    assert cli.main(["predict", *common, "-o", str(tmp_path / "c"), "--fx", "50"]) == 1
    assert "missing --fy, --cx, --cy" in capsys.readouterr().err


def test_input_discovery_says_what_it_skips(tmp_path, capsys):
    from PIL import Image

    from dpt_jax import cli
    from dpt_jax.inputs import expand_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    picture = np.random.default_rng(4).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(picture).save(folder / "a.jfif", format="JPEG")
    Image.fromarray(picture).save(folder / "noext", format="PNG")
    found, notes = expand_inputs([str(folder)])
    assert [i.path.name for i in found] == ["a.jfif"]
    assert any("1 file without a picture or video suffix skipped (noext)" in n for n in notes)
    model = str(FIXTURES / "mini_beit.safetensors")
    code = cli.main(["predict", str(folder), str(folder / "nothing*.png"), "-m", model, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "nothing*.png: the pattern matches no file" in err
    assert (tmp_path / "out" / "a-depth.png").exists()


def test_colormaps_and_model_suffixes(tmp_path):
    from PIL import Image

    from dpt_jax import cli, output

    spectral = output.colormap("Spectral_r")
    assert tuple(spectral[0]) == (0x5E, 0x4F, 0xA2) and tuple(spectral[255]) == (0x9E, 0x01, 0x42)  # far blue, near red
    assert np.abs(spectral[127:129].astype(int) - (0xFF, 0xFF, 0xBF)).max() <= 3  # ColorBrewer's centre
    with pytest.raises(ValueError, match="unknown colormap"):
        output.colormap("jet")
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    model = FIXTURES / "mini_beit.safetensors"
    assert cli.main(["predict", str(tmp_path / "p.png"), "-m", str(model), "--cmap", "gray", "--suffix-model",
                     "-o", str(tmp_path / "o"), "-q"]) == 0
    rgb = np.asarray(Image.open(tmp_path / "o" / "p-mini_beit-depth.png"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() and rgb.std() > 0


def _manifest_state(path):
    class Shape:
        def __init__(self, shape):
            self.shape = tuple(shape)

    return {e["key"]: Shape(e["shape"]) for e in json.loads(path.read_text())["state_dict"]}


@pytest.mark.parametrize("manifest", [FIXTURES / "manifests" / "dpt_beit_base_384.json",
                                      FIXTURES / "manifests" / "dpt_swin2_tiny_256.json",
                                      FIXTURES / "depth_anything" / "manifests" / "da2_vits.json"])
def test_every_shape_detection_reads_is_checked(manifest):
    """Each key detection reads, made a scalar, a vector, a 5-d or a zero-size tensor: a clear error naming the
    file, never an IndexError or TypeError from inside."""
    from dpt_jax import registry
    from dpt_jax.errors import ConversionError

    state = _manifest_state(manifest)
    variant = {"variant": "da2_vits"} if "da2" in manifest.name else {}
    detected = registry.detect_config(state, "f.pth", **variant)
    read = set()

    class Spy(dict):
        def __getitem__(self, key):
            read.add(key)
            return dict.__getitem__(self, key)

    registry.detect_config(Spy(state), "f.pth", **variant)
    assert read, "detection reads shapes"
    for key in sorted(read):
        for shape in [(), (3,), (1, 2, 3, 4, 5), tuple(0 for _ in state[key].shape)]:
            crafted = dict(state)
            crafted[key] = type(state[key])(shape)
            try:
                config = registry.detect_config(crafted, "f.pth", **variant)
            except ConversionError as e:
                assert str(e).startswith("f.pth: ")
            else:  # a shape detection may tolerate must still give a valid config (and then fail the key check)
                assert config.family is detected.family


def test_convert_removes_what_a_killed_convert_left(tmp_path):
    from dpt_jax import cli
    from dpt_jax.atomic import PARTIAL_PREFIX, partial_prefix

    host = partial_prefix().split("-")[2]
    dead = 2 ** 22 + 12345  # above any pid this machine hands out
    stale_file = tmp_path / f"{PARTIAL_PREFIX}{dead}-{host}-x.safetensors"
    stale_folder = tmp_path / f"{PARTIAL_PREFIX}{dead}-{host}-y.hf"
    stale_file.write_bytes(b"half")
    stale_folder.mkdir()
    (stale_folder / "model.safetensors").write_bytes(b"half")
    assert cli.main(["convert", str(FIXTURES / "mini_beit.pt"), "--to", "hf", "-o", str(tmp_path / "out")]) == 0
    assert not stale_file.exists() and not stale_folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_resize_multiple_the_encoder_cannot_take_is_refused_up_front():
    with pytest.raises(ConfigError, match="resize_multiple 1 must be a multiple of 16"):
        MINI_CONFIGS["mini_beit"].replace(resize_multiple=1)


def test_a_video_replaced_between_the_two_passes_is_reported(tmp_path, monkeypatch):
    from test_video import make_video

    from dpt_jax import video
    from dpt_jax.errors import VideoError

    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=4)
    first_pass = video._Run.first_pass

    def then_replace(run):
        first_pass(run)
        make_video(tmp_path / "other.mp4", frames=2).replace(clip)  # another, shorter video under the same name

    monkeypatch.setattr(video._Run, "first_pass", then_replace)
    with pytest.raises(VideoError, match="changed while it was processed"):
        video.predict_video(model, clip, tmp_path / "out.mp4", side_by_side=True)
    assert not (tmp_path / "out.mp4").exists()


def test_a_frame_folder_is_complete_or_absent(tmp_path):
    from test_video import make_video

    from dpt_jax import video
    from dpt_jax.output import Png16Frames

    frames = np.zeros((3, 4, 5), np.uint16)
    interrupted = Png16Frames(tmp_path / "a-depth-16")
    interrupted.write(frames)
    interrupted.discard()  # a killed or failed run
    assert list(tmp_path.iterdir()) == []
    stale = tmp_path / "clip-depth-16"
    stale.mkdir()
    for i in range(9):  # the frames of a longer video, written before
        (stale / f"{i:06d}.png").write_bytes(b"old")
    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=3)
    video.predict_video(model, clip, None, frames_format="png16", frames_path=stale)
    assert sorted(p.name for p in stale.iterdir()) == ["000000.png", "000001.png", "000002.png"]  # replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-depth-16", "clip.mp4"]


def test_videos_batch_within_the_pixel_budget_and_say_where_the_raw_depth_waits(tmp_path, monkeypatch):
    import tempfile

    from test_video import make_video

    from dpt_jax import pipeline, video

    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=6, h=48, w=64)
    batches = []
    first_pass = video._Run.first_pass
    monkeypatch.setattr(video._Run, "first_pass", lambda run: batches.append(run.batch) or first_pass(run))
    monkeypatch.setattr(pipeline, "PIXEL_BUDGET", 2 * 48 * 64)  # two frames
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lines = []
    video.predict_video(model, clip, tmp_path / "out.mp4", batch_size=8, on_status=lines.append)
    assert batches == [2]
    assert any("temporary file in " + str(tmp_path) in line and "MB" in line for line in lines)
    from dpt_jax import pictures

    monkeypatch.setattr(pictures, "MAX_PIXELS", 100)
    with pytest.raises(dpt_jax.errors.VideoError, match="over the limit"):  # checked from the header, not a frame
        video.predict_video(model, clip, tmp_path / "big.mp4")


def test_an_output_another_run_wrote_meanwhile_is_kept(tmp_path, monkeypatch):
    from test_video import make_video

    from dpt_jax import geometry, video

    model = dpt_jax.load(FIXTURES / "mini_beit.safetensors")
    clip = make_video(tmp_path / "clip.mp4", frames=3)
    first_pass = video._Run.first_pass
    theirs = {"video": tmp_path / "clip-depth.mp4", "frames": tmp_path / "clip-depth-16"}

    def meanwhile(run):  # the other run finishes first
        first_pass(run)
        theirs["video"].write_bytes(b"theirs")
        theirs["frames"].mkdir()
        (theirs["frames"] / "000000.png").write_bytes(b"theirs")

    monkeypatch.setattr(video._Run, "first_pass", meanwhile)
    with pytest.raises(FileExistsError):
        video.predict_video(model, clip, theirs["video"], frames_format="png16", frames_path=theirs["frames"],
                            replace=False)
    assert theirs["video"].read_bytes() == b"theirs" and (theirs["frames"] / "000000.png").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-depth-16", "clip-depth.mp4", "clip.mp4"]
    ply = tmp_path / "p.ply"
    ply.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        inverse = np.linspace(1, 2, 20, dtype=np.float32).reshape(4, 5)
        geometry.save_point_cloud(ply, inverse, np.zeros((4, 5, 3), np.uint8), replace=False)
    assert ply.read_bytes() == b"theirs"


def test_point_clouds_of_large_pictures_are_bounded_with_a_way_out(tmp_path, monkeypatch):
    from dpt_jax import geometry
    from dpt_jax.errors import AlignError

    inverse = np.linspace(1, 2, 40 * 50, dtype=np.float32).reshape(40, 50)
    picture = np.zeros((40, 50, 3), np.uint8)
    monkeypatch.setattr(geometry, "MAX_POINTS", 600)
    with pytest.raises(AlignError, match=r"2,000 points is over the limit of 600: .* \(--ply-stride 2"):
        geometry.save_point_cloud(tmp_path / "a.ply", inverse, picture)
    geometry.save_point_cloud(tmp_path / "a.ply", inverse, picture, stride=2)
    header = (tmp_path / "a.ply").read_bytes().split(b"end_header")[0]
    assert b"element vertex 500" in header  # 20 x 25 points


def test_memory_errors_name_the_file_and_the_step(tmp_path, monkeypatch):
    from dpt_jax import checkpoint

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(checkpoint, "apply_table", no_memory)
    with pytest.raises(CheckpointError, match=r"mini_beit.pt: not enough memory while laying out the parameters"):
        dpt_jax.load(FIXTURES / "mini_beit.pt")
    monkeypatch.setattr(checkpoint, "write_safetensors", no_memory)
    with pytest.raises(CheckpointError, match="out.safetensors: not enough memory while writing the converted file"):
        checkpoint.write_converted(tmp_path / "out.safetensors", MINI_CONFIGS["mini_beit"], {})


@pytest.mark.parametrize("address", ["host0", "host0:", "host0:99999", ":123"])
def test_a_coordinator_address_without_a_port_is_a_clear_error(monkeypatch, address):
    from dpt_jax.predict_files import start_distributed

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", address)
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS must be host:port"):
        start_distributed(True)
