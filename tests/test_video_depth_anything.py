"""Video Depth Anything against the original code, stage by stage (tests/fixtures/video_depth_anything).

mini_vda is a tiny Video Depth Anything built by the original code with random weights, every
parameter non-zero (so the zero-initialised temporal modules matter); every intermediate was
saved for two clips (`sq`: 1 x 4 frames at the native 98 x 98; `wide`: 2 x 3 frames at 42 x 84,
position table resized). Loaded as a user would (dpt_jax.load) from the .pth and the
.safetensors file. Tolerance: the reference README's 5e-5 * max|ref| per array.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util

import dpt_jax
from dpt_jax.errors import ConversionError
from helpers import FIXTURES, rel_err

VDA = FIXTURES / "video_depth_anything"
TOL = 5e-5
CASES = ("sq", "wide")


@pytest.fixture(scope="module")
def reference():
    return np.load(VDA / "mini_vda.npz")


@pytest.fixture(scope="module")
def loaded():
    return {source: dpt_jax.load(VDA / f"mini_vda.{source}", variant="mini_vda") for source in ("pth", "safetensors")}


_PROGRAMS = {}


def _stages(model, clip):
    """Every sown array of one run on a (B, T, 3, H, W) clip, by "/"-joined module path."""
    import jax

    from dpt_jax.dpt import DPT

    b, t = clip.shape[:2]
    images = np.ascontiguousarray(clip.reshape(b * t, *clip.shape[2:]).transpose(0, 2, 3, 1))  # (B*T, H, W, 3)
    key = (model.config, t)
    if key not in _PROGRAMS:  # one program per clip shape, whichever file the parameters came from
        _PROGRAMS[key] = jax.jit(lambda p, x: DPT(model.config).apply({"params": p}, x, frames=t,
                                                                      mutable=["intermediates", "temporal_states"]))
    depth, state = _PROGRAMS[key](model.params, images)
    flat = {}
    for collection in state.values():
        for path, value in traverse_util.flatten_dict(collection).items():
            flat["/".join(path)] = np.asarray(value[0])
    return np.asarray(depth).reshape(b, t, *depth.shape[1:]), flat


@pytest.fixture(scope="module")
def runs(loaded, reference):
    return {(source, case): _stages(loaded[source], reference[f"{case}__input"])
            for source in loaded for case in CASES}


def _nchw(x):
    return x.transpose(0, 3, 1, 2)


def _per_frame(x, b, t, hw):
    """A temporal module's per-pixel sequences (B*h*w, T, C) -> per frame (B*T, h*w, C), the fixtures' layout."""
    return x.reshape(b, hw, t, -1).transpose(0, 2, 1, 3).reshape(b * t, hw, -1)


def _clip(x, b, t):
    """(B*T, h, w, C) -> (B, C, T, h, w): the original temporal modules' layout."""
    return x.reshape(b, t, *x.shape[1:]).transpose(0, 4, 1, 2, 3)


@pytest.mark.parametrize("source", ["pth", "safetensors"])
@pytest.mark.parametrize("case", CASES)
def test_every_stage_matches_the_original(runs, reference, source, case):
    depth, got = runs[source, case]
    ref = {k.split("__", 1)[1]: reference[k] for k in reference.files if k.startswith(f"{case}__")}
    b, t = ref["input"].shape[:2]
    subset = ref["subset_index"]
    hw = ref["mm1_proj_in"].shape[1]
    mine = {
        **{f"feat{k}": got[f"encoder/feat{k}"] for k in range(1, 5)},
        **{f"cls{k}": got[f"encoder/cls{k}"] for k in range(1, 5)},
        "tokens0": got["encoder/tokens0"], "pos_embed": got["encoder/pos_embed"],
        **{f"project{i}": _nchw(got[f"reassemble/project{i}"]) for i in (1, 2, 4)},
        **{f"reassemble{i}": _nchw(got[f"reassemble/reassemble{i}"]) for i in range(1, 5)},
        **{f"rn{i}": _nchw(got[f"reassemble/rn{i}"]) for i in range(1, 5)},
        **{f"fusion{i}": _nchw(got[f"fusion/fusion{i}"]) for i in range(1, 5)},
        "mm0_out": _clip(got["reassemble/temporal3"], b, t), "mm1_out": _clip(got["reassemble/temporal4"], b, t),
        "mm2_out": _clip(got["fusion/temporal4"], b, t), "mm3_out": _clip(got["fusion/temporal3"], b, t),
        "mm1_groupnorm": _nchw(got["reassemble/temporal_4/groupnorm"]),
        "mm1_proj_in": got["reassemble/temporal_4/projected_in"],
        "mm1_proj_out": got["reassemble/temporal_4/projected_out"],
        **{f"mm1_attn{j}_norm": _per_frame(got[f"reassemble/temporal_4/normed_{j}"], b, t, hw) for j in (0, 1)},
        **{f"mm1_attn{j}_out": _per_frame(got[f"reassemble/temporal_4/attn{j}_out"], b, t, hw) for j in (0, 1)},
        "mm1_block_out": _per_frame(got["reassemble/temporal_4/block_out"], b, t, hw),
        "head_conv1": _nchw(got["head/head_conv1"]), "head_preact": _nchw(got["head/head_preact"]),
        "depth": depth,
    }
    checked = []
    for name, want in ref.items():
        if name in ("input", "subset_index") or name not in mine:
            continue
        have = mine[name]
        if have.shape[0] != want.shape[0] and name != "depth":  # stored for the frames of `subset_index` only
            have = have[subset]
        assert rel_err(have, want) < TOL, name
        checked.append(name)
    assert len(checked) >= 33, sorted(set(ref) - set(checked))


def test_metric_and_relative_files_hold_the_same_keys_so_the_variant_is_chosen(tmp_path):
    import shutil

    anonymous = tmp_path / "weights.pth"
    shutil.copy(VDA / "mini_vda.pth", anonymous)
    with pytest.raises(ConversionError, match="cannot tell relative from metric") as e:
        dpt_jax.load(anonymous)
    assert "mini_vda_metric" in str(e.value) and "mini_da2" not in str(e.value)
    metric = dpt_jax.load(anonymous, variant="mini_vda_metric")
    assert metric.config.is_metric and metric.config.is_temporal and metric.config.depth_activation == "relu_metres"
    with pytest.raises(ConversionError, match="does not hold a mini_da2"):
        dpt_jax.load(anonymous, variant="mini_da2")
    with pytest.raises(ConversionError, match="max_depth applies"):
        dpt_jax.load(anonymous, variant="mini_vda_metric", max_depth=10)


# ---------------------------------------------------------------------------------------------
# Whole videos: windows, keyframes, alignment, blending (infer_video_depth) and streaming


@pytest.fixture(scope="module")
def clips():
    return np.load(VDA / "vda_e2e.npz")


def test_the_windows_see_the_frames_the_original_gives_them(clips):
    from dpt_jax import video_depth

    frames = list(range(80))  # stand-ins: which frame sits at each position of each window
    windows, window = [], frames[:32]
    start = 0
    while True:
        windows.append(window)
        start += video_depth.STEP
        if start >= len(frames):
            break
        new = [frames[min(i, 79)] for i in range(start + video_depth.OVERLAP, start + video_depth.WINDOW)]
        window = [window[k] for k in video_depth.KEYFRAMES] + new
    np.testing.assert_array_equal(np.array(windows), clips["clip__window_src"])


@pytest.fixture(scope="module")
def vda(clips):
    return dpt_jax.load(VDA / "mini_vda.safetensors", variant="mini_vda")


def test_a_three_window_clip_matches_infer_video_depth(vda, clips):
    depth = vda.predict_video(clips["clip__frames"], input_size=42)
    assert depth.shape == (80, 32, 48) and depth.dtype == np.float32
    assert rel_err(depth, clips["mini_vda__depth"]) < TOL
    assert vda._apply_clip._cache_size() == 1  # four windows, one compiled program


@pytest.mark.parametrize("name", ["mini_vda", "mini_vda_metric"])
def test_alignment_and_blending_match_the_original_on_its_own_window_outputs(vda, clips, monkeypatch, name):
    """The windows' network outputs as the original computed them, aligned and blended by dpt-jax."""
    from dpt_jax import preprocess, video_depth

    model = vda if name == "mini_vda" else dpt_jax.DepthModel(vda.config.replace(
        name=name, depth_activation="relu_metres"), vda.params)
    outputs = iter(clips["clip__window_out"])  # (4, 32, 42, 56): one per window, in order

    def window(model, frames, net_size, frame_size):
        assert net_size == (42, 56) and frames.shape == (32, 32, 48, 3)
        return np.asarray(preprocess.to_picture(model.config, next(outputs), frame_size))

    monkeypatch.setattr(video_depth, "_window", window)
    chunks = list(video_depth.window_depth(model, list(clips["clip__frames"]), input_size=42))
    assert sum(len(f) for f, _ in chunks) == 80 and next(outputs, None) is None  # 4 windows, every frame once
    frames = np.concatenate([np.stack(f) for f, _ in chunks])
    np.testing.assert_array_equal(frames, clips["clip__frames"])  # each depth goes with its own frame
    depth = np.concatenate([d for _, d in chunks])
    assert rel_err(depth, clips[f"{name}__depth"]) < TOL
    # the two references differ only by the relative model's alignment, by far more than the tolerance
    assert rel_err(clips["mini_vda_metric__depth"], clips["mini_vda__depth"]) > 100 * TOL


def test_a_long_video_holds_at_most_two_windows_of_frames(vda, monkeypatch):
    """1,000 frames go through with at most 2 x 32 of them alive at once (the original holds them all)."""
    import weakref

    from dpt_jax import video_depth

    alive, most = set(), [0]

    def frames():
        for i in range(1000):
            frame = np.full((4, 6, 3), i % 256, np.uint8)
            alive.add(i)
            weakref.finalize(frame, alive.discard, i)
            most[0] = max(most[0], len(alive))
            yield frame

    monkeypatch.setattr(video_depth, "_window", lambda model, window, net, size: np.ones((32, *size), np.float32))
    count = 0
    for chunk, depth in video_depth.window_depth(vda, frames(), input_size=42):
        assert len(chunk) == len(depth)
        count += len(chunk)
        del chunk, depth
    assert count == 1000 and most[0] <= 2 * video_depth.WINDOW, most[0]


def test_scale_and_shift_is_the_original_least_squares(clips):
    from dpt_jax import preprocess, video_depth

    windows = [np.asarray(preprocess.resize_depth(w, (32, 48), "bilinear_align_corners"))
               for w in clips["clip__window_out"]]
    s, t = video_depth.scale_and_shift(np.concatenate(list(windows[1][:2])),
                                       np.concatenate([windows[0][0], windows[0][12]]))
    assert np.allclose((s, t), clips["mini_vda__scale_shift"][0], rtol=1e-6, atol=1e-7)


def test_wide_frames_take_the_reduced_input_size(vda):
    from dpt_jax import video_depth

    assert video_depth.input_size((16, 40), 98) == 70  # 2.5:1: round(int(98 * 1.777 / 2.5) / 14) * 14
    assert video_depth.network_size(vda.config, (16, 40), 98) == (70, 168)  # 175 / 14 = 12.5 rounds to even
    assert video_depth.network_size(vda.config, (32, 48), 42) == (42, 56)  # 1.5:1 keeps the size


def test_streaming_matches_the_original_streaming_class(vda, clips):
    want = clips["stream__depth"]  # 48 frames: the cache is full (42 entries) from frame 11 on
    depth = vda.predict_video(clips["clip__frames"][: len(want)], input_size=42, streaming=True)
    assert rel_err(depth, want) < TOL


def test_a_camera_streams_a_video_model(vda, clips, monkeypatch):
    from dpt_jax import camera, video_depth

    frames = clips["clip__frames"][:3]
    want = vda.predict_video(frames, input_size=42, streaming=True)  # (3, h, w): the temporal states carried

    class At42(video_depth.DepthStream):  # the camera's stream, at the size the streaming test compiled
        def __init__(self, model):
            super().__init__(model, input_size=42)

    monkeypatch.setattr(video_depth, "DepthStream", At42)
    shown = []
    assert camera.run(vda, iter(frames), show=lambda colour: shown.append(colour)) == 3
    for colour, depth in zip(shown, want):
        np.testing.assert_array_equal(colour, dpt_jax.output.colorize(depth))


# ---------------------------------------------------------------------------------------------
# The command line and the API around it


def test_predict_writes_the_temporal_depth_of_a_video_and_refuses_pictures(vda, tmp_path, monkeypatch, capsys):
    from PIL import Image
    from test_video import decode, make_video

    from dpt_jax import cli

    clip = make_video(tmp_path / "clip.mp4", frames=30, h=32, w=48)  # two windows, the second one padded
    picture = tmp_path / "pic.png"
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(picture)
    monkeypatch.setattr(dpt_jax.model, "load", lambda *a, **kw: vda)
    out = tmp_path / "out"
    code = cli.main(["predict", str(clip), str(picture), "-m", "vda", "-o", str(out), "--input-size", "42",
                     "--frames", "npy", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "pic.png: mini_vda is a video model" in err and "(1 failed)" in err
    stack = np.load(out / "clip-depth.npy")
    frames = decode(clip)[0]
    assert stack.shape == (30, 32, 48) and decode(out / "clip-depth.mp4")[0].shape == (30, 32, 48, 3)
    np.testing.assert_allclose(stack, vda.predict_video(frames, input_size=42), rtol=0, atol=1e-6)
    assert "model at 56x42" in err
    # the other video outputs: input | depth, a running colour range, 16-bit frames
    code = cli.main(["predict", str(clip), "-m", "vda", "-o", str(out), "--input-size", "42", "--side-by-side",
                     "--normalize", "running", "--frames", "png16", "--no-progress"])
    assert code == 0 and decode(out / "clip-side.mp4")[0].shape == (30, 32, 96, 3)
    assert len(list((out / "clip-depth-16").glob("*.png"))) == 30


def test_the_api_says_which_path_a_model_takes(vda):
    with pytest.raises(ValueError, match="video model"):
        vda.predict(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="frames"):
        vda.predict_video(np.zeros((32, 48, 3), np.uint8))
    picture_model = dpt_jax.load(FIXTURES / "depth_anything" / "mini_da2.safetensors", variant="mini_da2")
    with pytest.raises(ValueError, match="temporal models"):
        picture_model.predict_video(np.zeros((2, 28, 28, 3), np.uint8), streaming=True)
    depth = picture_model.predict_video(np.zeros((2, 28, 28, 3), np.uint8))  # each frame alone, as predict
    assert depth.shape == (2, 28, 28) and depth.dtype == np.float32


def test_the_presets_hold_what_the_release_files_hold():
    """Key and parameter counts of the released vits/vitb/vitl files (read by the fixture generator from the
    original's constructors) against the presets' key tables; the names that say which file is which."""
    import json

    from dpt_jax import registry
    from dpt_jax.convert.dinov2 import RELEASE_FILES, key_table, skipped
    from dpt_jax.dpt import param_shapes

    releases = json.loads((VDA / "mini_vda.json").read_text())["release_key_check"]
    for size, release in releases.items():
        config = registry.get_config(f"vda_{size}")
        shapes = param_shapes(config)
        unused = 2 * (9 * config.fusion_features ** 2 + config.fusion_features)  # the deepest block's first unit
        learned = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith("pos_encoding"))
        assert learned + config.encoder.embed_dim + unused == release["parameters"], size  # + mask_token
        assert len(key_table(config)) + 1 + 4 == release["keys"] and len(skipped(config)) == 2
        tables = [shapes[f"{stage}/{name}/attn_0/pos_encoding"][-1] for stage, name in
                  (("reassemble", "temporal_3"), ("reassemble", "temporal_4"), ("fusion", "temporal_4"),
                   ("fusion", "temporal_3"))]
        assert tables == release["motion_module_channels"]
        assert RELEASE_FILES[f"video_depth_anything_{size}.pth"] == f"vda_{size}"
        assert RELEASE_FILES[f"metric_video_depth_anything_{size}.pth"] == f"vda_metric_{size}"
