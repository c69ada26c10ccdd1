"""Depth videos: the picture pipeline per frame, one mapping across frames, outputs, broken inputs."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import errors, output, video
from helpers import FIXTURES

FRAMES, H, W, FPS, BATCH = 8, 48, 64, Fraction(12), 3  # batches of 3, 3 and 2 (padded to 3)


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(FIXTURES / "mini_beit.safetensors")


def make_video(path, frames=FRAMES, h=H, w=W, options=None, rotation=None):
    """A small synthetic clip whose content (so its depth range) changes from frame to frame."""
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 4_000_000
        if rotation is not None:
            s.set_display_rotation(rotation)
        y, x = np.mgrid[0:h, 0:w]
        for i in range(frames):
            blob = np.exp(-((x - 8 - 6 * i) ** 2 + (y - h / 2) ** 2) / (30 + 40 * i))
            rgb = np.stack([(x * 3 + i * 25) % 256, 255 * blob, np.full_like(x, 40 + 25 * i)], -1)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                c.mux(p)
        c.mux(s.encode(None))
    return path


def decode(path):
    """Frames as stored (no rotation applied), (n, h, w, 3) uint8, and the stream's rate and declared count."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
        return frames, s.average_rate, s.frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


def test_frames_go_through_the_picture_pipeline_in_one_program(model, clip, tmp_path):
    seen = []
    result = video.predict_video(model, clip, tmp_path / "depth.mp4", batch_size=BATCH, frames_format="npy",
                                 progress=seen.append)
    assert seen == [3, 3, 2] and result.frames == FRAMES and result.size == (H, W) and result.fps == FPS
    assert result.processed_size == (96, 128)
    stack = np.load(tmp_path / "depth.npy")
    assert stack.shape == (FRAMES, H, W) and stack.dtype == np.float32
    inputs, _, _ = decode(clip)
    expected = np.stack(model.predict(list(inputs[:BATCH]), batch_size=BATCH))  # as pictures, in the same program
    np.testing.assert_allclose(stack[:BATCH], expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    frames, rate, count = decode(tmp_path / "depth.mp4")
    assert frames.shape == (FRAMES, H, W, 3) and rate == FPS and count == FRAMES  # rate and count kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.mp4", "depth.npy"]  # no temporary files
    assert result.video == tmp_path / "depth.mp4" and result.frames_path == tmp_path / "depth.npy"
    assert result.depth_range == (stack.min(), stack.max())
    # A clip of another length (batches of 3 and 2) compiles no new model program: short batches are padded.
    programs = model._apply._cache_size()
    video.predict_video(model, make_video(tmp_path / "five.mp4", frames=5), tmp_path / "five-depth.mp4",
                        batch_size=BATCH)
    assert model._apply._cache_size() == programs


def test_global_mapping_is_one_for_the_whole_video(model, clip, tmp_path):
    video.predict_video(model, clip, tmp_path / "depth.mp4", batch_size=BATCH, frames_format="npy")
    stack = np.load(tmp_path / "depth.npy").astype(np.float64)
    video.predict_video(model, clip, tmp_path / "d16.mp4", batch_size=BATCH, frames_format="png16")
    sixteen = np.stack([np.asarray(Image.open(tmp_path / "d16" / f"{i:06d}.png")) for i in range(FRAMES)])
    assert sixteen.dtype == np.uint16 and sorted(p.name for p in (tmp_path / "d16").iterdir())[-1] == "000007.png"
    lo, hi = stack.min(), stack.max()
    expected = np.round((stack - lo) / (hi - lo) * 65535)
    assert np.abs(sixteen - expected).max() <= 1  # float32 on the device against float64 here
    per_frame = np.stack([np.round(output.normalized(d) * 65535) for d in stack])
    assert np.abs(per_frame - expected).max() > 10000  # the clip's frames do differ in range
    # The colour video: inferno of the same global mapping (up to the lossy codec), not per-frame colours.
    frames, _, _ = decode(tmp_path / "depth.mp4")
    global_colours = output.INFERNO[np.round((stack - lo) / (hi - lo) * 255).astype(np.uint8)]
    per_frame_colours = np.stack([output.colorize(d) for d in stack])
    err = lambda a: np.abs(frames.mean((1, 2)) - a.mean((1, 2))).max()  # noqa: E731  frame means: codec noise averages out
    assert err(global_colours) < 3 and err(per_frame_colours) > 8  # measured: 1.3 and 11.2 levels


def test_running_mapping_is_a_moving_average_of_frame_ranges(model, clip, tmp_path):
    video.predict_video(model, clip, tmp_path / "depth.mp4", batch_size=BATCH, frames_format="npy")
    stack = np.load(tmp_path / "depth.npy").astype(np.float64)
    video.predict_video(model, clip, None, batch_size=BATCH, normalize="running", smoothing=0.5,
                        frames_format="png16", frames_path=tmp_path / "run")
    sixteen = np.stack([np.asarray(Image.open(tmp_path / "run" / f"{i:06d}.png")) for i in range(FRAMES)])
    r = np.array([stack[0].min(), stack[0].max()])
    expected = []
    for d in stack:  # carried across the batches of 3
        r = 0.5 * r + 0.5 * np.array([d.min(), d.max()]) if expected else r
        expected.append(np.round(np.clip((d - r[0]) / (r[1] - r[0]), 0, 1) * 65535))
    assert np.abs(sixteen - np.stack(expected)).max() <= 1
    assert not (tmp_path / "depth.mp4").with_name("run.mp4").exists()  # dst None: frames only


def test_side_by_side_shows_input_and_depth(model, clip, tmp_path):
    video.predict_video(model, clip, tmp_path / "depth.mp4", batch_size=BATCH)
    video.predict_video(model, clip, tmp_path / "both.mkv", batch_size=BATCH, side_by_side=True)
    both, rate, _ = decode(tmp_path / "both.mkv")
    depth, _, _ = decode(tmp_path / "depth.mp4")
    inputs, _, _ = decode(clip)
    assert both.shape == (FRAMES, H, 2 * W, 3) and rate == FPS
    assert np.abs(both[:, :, :W].astype(float) - inputs).mean() < 4
    assert np.abs(both[:, :, W:].astype(float) - depth).mean() < 4


def test_rotated_videos_are_turned_upright(model, tmp_path):
    src = make_video(tmp_path / "portrait.mp4", frames=BATCH, h=W, w=H, rotation=90)  # stored 48 wide, 64 high
    result = video.predict_video(model, src, None, batch_size=BATCH, frames_format="npy",
                                 frames_path=tmp_path / "d.npy")
    assert result.size == (H, W)
    stored, _, _ = decode(src)
    assert stored.shape[1:3] == (W, H)
    upright = [np.rot90(f) for f in stored]  # the display matrix turns the frame 90 degrees counterclockwise
    expected = np.stack(model.predict(upright, batch_size=BATCH))
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_broken_videos_leave_no_video_behind(model, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(errors.VideoError, match="garbage.mp4: cannot open as a video"):
        video.predict_video(model, garbage, tmp_path / "out.mp4", frames_format="npy")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(errors.VideoError, match="empty.mp4: the file is empty"):
        video.predict_video(model, tmp_path / "empty.mp4", tmp_path / "out.mp4")
    with pytest.raises(errors.VideoError, match="no such file"):
        video.predict_video(model, tmp_path / "missing.mp4", tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp4", "garbage.mp4"]


@pytest.mark.parametrize("normalize", ["global", "running"])
def test_truncated_video_keeps_the_frames_asked_for_and_no_video(model, tmp_path, normalize):
    full = make_video(tmp_path / "full.mp4", options={"movflags": "faststart"})  # index first, then the frames
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.VideoError, match=r"cut.mp4: truncated or corrupt: decoded (\d) of the 8 frames") as e:
        video.predict_video(model, cut, out / "cut.mp4", batch_size=BATCH, normalize=normalize)
    assert list(out.iterdir()) == []  # no frames asked for: nothing written
    decoded = int(e.value.message.split("decoded ")[1].split()[0])
    assert 0 < decoded < FRAMES
    with pytest.raises(errors.VideoError, match="truncated"):
        video.predict_video(model, cut, out / "cut.mp4", batch_size=BATCH, normalize=normalize, frames_format="npy")
    partial = np.load(out / "cut.npy")
    video.predict_video(model, full, out / "full.mp4", batch_size=BATCH, frames_format="npy")
    np.testing.assert_array_equal(partial, np.load(out / "full.npy")[:decoded])  # the frames decoded so far
    assert sorted(p.name for p in out.iterdir()) == ["cut.npy", "full.mp4", "full.npy"]  # no cut.mp4, no temp files


def test_bad_arguments_are_refused_before_any_work(model, clip, tmp_path):
    with pytest.raises(ValueError, match="normalize must be one of global, running"):
        video.predict_video(model, clip, tmp_path / "o.mp4", normalize="frame")
    with pytest.raises(ValueError, match="normalize='running' only"):
        video.predict_video(model, clip, tmp_path / "o.mp4", smoothing=0.5)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        video.predict_video(model, clip, tmp_path / "o.mp4", normalize="running", smoothing=1.0)
    with pytest.raises(ValueError, match="cannot write a .gif video"):
        video.predict_video(model, clip, tmp_path / "o.gif")
    with pytest.raises(ValueError, match="refusing to overwrite the input video"):
        video.predict_video(model, clip, clip)
    with pytest.raises(ValueError, match="nothing to write"):
        video.predict_video(model, clip, None)
    assert list(tmp_path.iterdir()) == []
    assert video.is_video("a/b.MKV") and not video.is_video("photo.jpg")
