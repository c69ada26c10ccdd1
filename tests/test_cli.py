"""The dpt-jax command line, in-process: inputs, output names, never replacing files, formats, status, bugs."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import cli, hub, inputs, overlap, pipeline
from dpt_jax.atomic import _host_tag
from helpers import FIXTURES

MINI = str(FIXTURES / "mini_beit.safetensors")


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(MINI)


@pytest.fixture
def loads(model, monkeypatch):
    """dpt_jax.load returns the one module-wide mini model (its compiled programs are reused); counts calls."""
    calls = []

    def load(path, **kw):
        calls.append(str(path))
        return model

    monkeypatch.setattr(dpt_jax.model, "load", load)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command resolves (downloads) or loads a model."""
    def refuse(*a, **k):
        raise AssertionError("the model was resolved or loaded")

    monkeypatch.setattr(hub, "resolve", refuse)
    monkeypatch.setattr(dpt_jax.model, "load", refuse)


def picture(path, seed=0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]] / 64
    rgb = np.stack([np.sin(3 * x + rng.uniform(0, 6)) * np.cos(2 * y + c) for c in range(3)], -1)
    a = np.round((rgb * 0.5 + 0.5) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


def predict(*args):
    return cli.main(["predict", *map(str, args), "-m", MINI, "--batch-size", "1"])


# -- output names are unique across the run -------------------------------------

def test_same_stems_from_different_folders_get_distinct_names(tmp_path, loads, model):
    for d, name in [("a", "x.jpg"), ("b", "x.jpg"), ("c", "x-2.png")]:
        picture(tmp_path / d / name)
    out = tmp_path / "out"
    assert predict(tmp_path / "a/x.jpg", tmp_path / "b/x.jpg", tmp_path / "c/x-2.png", "-o", out, "-f", "npy") == 0
    # b's x cannot take x-2: c's picture is called that; it gets x-3.
    assert sorted(p.name for p in out.iterdir()) == ["x-2-depth.npy", "x-3-depth.npy", "x-depth.npy"]
    c = np.load(out / "x-2-depth.npy")
    np.testing.assert_allclose(c, model.predict(tmp_path / "c/x-2.png", batch_size=1), atol=1e-6 * np.abs(c).max())


def test_output_bases_rule():
    P = inputs.PurePath
    found = [inputs.Input(inputs.Path(p), P(r)) for p, r in
             [("a/x.jpg", "x.jpg"), ("b/X.png", "X.png"), ("c/x-2.png", "x-2.png"), ("d/x.jpg", "x.jpg"),
              ("e/s/x.jpg", "s/x.jpg")]]
    assert [str(b) for b in inputs.output_bases(found)] == ["x", "X-3", "x-2", "x-4", "s/x"]


# -- item 8: files the run did not create are never replaced ----------------------------------------

def test_existing_files_are_kept_and_a_second_run_skips_done_pictures(tmp_path, loads, capsys):
    photos = tmp_path / "photos"
    picture(photos / "holiday.jpg", 1)
    picture(photos / "beach.jpg", 2)
    (photos / "holiday.png").write_bytes(b"the user's own picture")
    (photos / "holiday-depth.png").write_bytes(b"the user's own file")
    assert predict(str(photos / "*.jpg"), "-o", photos) == 0
    err = capsys.readouterr().err
    assert (photos / "holiday.png").read_bytes() == b"the user's own picture"
    assert (photos / "holiday-depth.png").read_bytes() == b"the user's own file"
    assert "1 skipped" in err and "--overwrite" in err
    assert Image.open(photos / "beach-depth.png").mode == "RGB"
    # A second run has nothing left to do: it says so and loads no model.
    loads.clear()
    assert predict(str(photos / "*.jpg"), "-o", photos) == 0
    assert "2 skipped" in capsys.readouterr().err and loads == []
    assert predict(str(photos / "holiday.jpg"), "-o", photos, "--overwrite") == 0
    assert Image.open(photos / "holiday-depth.png").mode == "RGB"


def test_outputs_never_replace_inputs_even_with_overwrite(tmp_path, no_model, capsys):
    pic = tmp_path / "x-depth.png"
    picture(pic)
    picture(tmp_path / "x.png")
    assert predict(tmp_path / "x.png", pic, "-o", tmp_path, "--overwrite") == 1
    assert "refusing to overwrite input" in capsys.readouterr().err


# -- item 9: decoded pixels in flight are bounded across a batch ------------------------------------

class ShapeModel:
    """Stands in for a DepthModel in pipeline tests: the real config, a cheap forward that records its input shapes."""

    num_devices, devices, source = 1, None, "fake"

    def __init__(self, config):
        self.config, self.shapes = config, []

    def apply(self, x):
        self.shapes.append(tuple(x.shape))
        return x.mean(-1) + x[..., 0]  # (B, H, W)


def test_decoded_pixels_in_flight_stay_within_the_budget(model, monkeypatch):
    pictures = [np.random.default_rng(i).integers(0, 255, (60, 70 + i % 2, 3), np.uint8) for i in range(5)]
    held, peak = [0], [0]

    def source(i, a):
        def load():
            held[0] += a.shape[0] * a.shape[1]
            peak[0] = max(peak[0], held[0])
            return a
        return pipeline.Source(f"p{i}", a.shape[:2], load)

    resize = overlap.to_network

    def counted_resize(config, images, size):
        held[0] -= images.shape[0] * images.shape[1] * images.shape[2]  # these pixels are released after this
        return resize(config, images, size)

    monkeypatch.setattr(overlap, "to_network", counted_resize)
    fake = ShapeModel(model.config)
    budget = 2 * 60 * 71
    results = pipeline.run(fake, [source(i, a) for i, a in enumerate(pictures)], batch_size=4, pixel_budget=budget)
    assert peak[0] <= budget and held[0] == 0
    assert fake.shapes == [(4, 96, 128, 3), (1, 96, 128, 3)]  # the batches themselves are unchanged
    monkeypatch.setattr(overlap, "to_network", resize)
    unbounded = pipeline.run(fake, pictures, batch_size=4)
    for r, u in zip(results, unbounded):
        np.testing.assert_allclose(r.depth, u.depth, atol=1e-6)


# -- item 10: globs do not follow directory links; inputs are de-duplicated --------------------------

def test_recursive_glob_survives_directory_link_loops(tmp_path):
    picture(tmp_path / "a" / "p.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "up").symlink_to(tmp_path, target_is_directory=True)
    found, notes = inputs.expand_inputs([str(tmp_path / "**" / "*.png"), str(tmp_path / "a" / "p.png")])
    assert [str(i.path) for i in found] == [str(tmp_path / "a" / "p.png")]
    assert str(found[0].rel) == os.path.join("a", "p.png") and "processed once" in notes[0]
    found, _ = inputs.expand_inputs([str(tmp_path)], recursive=True)
    assert [i.path for i in found] == [tmp_path / "a" / "p.png"]


# -- item 11: temporary files of killed runs are recognised and removed ---------------------------------

def test_stale_partial_files_of_dead_processes_are_removed(tmp_path, no_model, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".partial-{dead_pid}-{_host_tag()}-abc.png"
    running = out / f".partial-{os.getppid()}-{_host_tag()}-abc.png"  # a live process's
    foreign = out / ".partial-xyz.png"  # not named by dpt-jax
    for f in (stale, running, foreign):
        f.write_bytes(b"x")
    picture(tmp_path / "p.png")
    (out / "p-depth.png").write_bytes(b"done before")  # nothing to compute: no model needed
    assert predict(tmp_path / "p.png", "-o", out) == 0
    assert not stale.exists() and running.exists() and foreign.exists()


# -- the output folder and the inputs are checked before any model --------

def test_unwritable_output_folder_fails_before_the_model(tmp_path, no_model, capsys):
    picture(tmp_path / "p.png")
    (tmp_path / "file").write_text("not a folder")
    assert predict(tmp_path / "p.png", "-o", tmp_path / "file") == 1
    assert "output folder" in capsys.readouterr().err
    assert predict(tmp_path / "p.png", "-o", tmp_path / "file" / "sub") == 1
    assert "cannot write there" in capsys.readouterr().err


def test_missing_input_is_reported_before_any_download(tmp_path, no_model, capsys):
    code = cli.main(["predict", str(tmp_path / "missing.jpg"), "-m", "dpt_swin2_tiny_256", "-o", str(tmp_path / "o")])
    assert code == 1 and "missing.jpg: no such file" in capsys.readouterr().err


def test_an_animated_picture_says_it_gives_its_first_frame(tmp_path, loads, model, capsys):
    first = picture(tmp_path / "f0.png", 1)
    second = picture(tmp_path / "f1.png", 2)
    frames = [Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE) for a in (first, second)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert predict(tmp_path / "anim.gif", "-o", tmp_path / "out", "-f", "npy") == 0
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'anim.gif'}: an animation of 2 frames: its first frame only" in err
    with Image.open(tmp_path / "anim.gif") as img:  # Pillow's first frame, as predict reads it
        expected = model.predict(np.asarray(img.convert("RGB")))
    np.testing.assert_array_equal(np.load(tmp_path / "out/anim-depth.npy"), expected)


def test_a_failed_run_leaves_no_output_folder_it_created(tmp_path, capsys):
    picture(tmp_path / "p.png")
    out = tmp_path / "a" / "b" / "out"
    assert cli.main(["predict", str(tmp_path / "missing.png"), "-m", MINI, "-o", str(out)]) == 1
    assert not (tmp_path / "a").exists()  # nothing written: the folders the run made are gone
    assert cli.main(["predict", str(tmp_path / "p.png"), "-m", str(tmp_path / "no.safetensors"), "-o", str(out)]) == 1
    assert "no.safetensors" in capsys.readouterr().err and not (tmp_path / "a").exists()  # the model failed
    (tmp_path / "a").mkdir()
    assert cli.main(["predict", str(tmp_path / "missing.png"), "-m", MINI, "-o", str(out)]) == 1
    assert list((tmp_path / "a").iterdir()) == []  # a folder that was there before stays


def test_url_inputs_are_fetched_not_taken_for_paths(tmp_path, loads, model, server, monkeypatch, capsys):
    a = picture(tmp_path / "local.png", 4)
    url = server.serve("/photos/cat.png?size=2", (tmp_path / "local.png").read_bytes())
    missing = server.url("/photos/gone.jpg")
    monkeypatch.chdir(tmp_path)
    clip = server.url("/clip.mp4")
    assert predict(url, missing, clip, "-o", "out", "-f", "npy,color") == 1
    err = capsys.readouterr().err
    assert f"{missing}: cannot download it: " in err and "HTTP 404" in err and "2 failed" in err
    assert f"{clip}: videos are read from files: download it first" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["cat-depth.npy", "cat-depth.png"]  # named after the URL's file
    assert not (tmp_path / "http:").exists()  # not mangled into a path
    expected = model.predict(a)
    np.testing.assert_array_equal(np.load(tmp_path / "out/cat-depth.npy"), expected)
    assert [p for p, _ in server.requests].count("/photos/cat.png?size=2") == 1  # fetched once (color decodes it again)
    np.testing.assert_array_equal(model.predict(url), expected)  # the API takes URLs too


# -- formats, layout, status ------------------------------------------------------------------------

def test_every_format_in_one_run(tmp_path, loads, capsys):
    a = picture(tmp_path / "in" / "p.png", 3, size=(64, 80))
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "-o", out, "-f", "color,gray8,png16,npy,pfm,side") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["p-depth.png", "p-depth-gray8.png", "p-depth-16.png", "p-depth.npy", "p-depth.pfm", "p-side.png"])
    depth = np.load(out / "p-depth.npy")
    np.testing.assert_allclose(depth, dpt_jax.load(MINI).predict(a), atol=1e-6 * np.abs(depth).max())
    raw = (out / "p-depth.pfm").read_bytes()
    assert raw.startswith(b"Pf\n80 64\n-1.000000\n")
    rows = np.frombuffer(raw[len(b"Pf\n80 64\n-1.000000\n"):], "<f4").reshape(64, 80)
    np.testing.assert_array_equal(rows[::-1], depth)  # bottom row first
    assert Image.open(out / "p-depth-gray8.png").mode == "L"
    assert np.asarray(Image.open(out / "p-depth-16.png")).max() == 65535
    side = np.asarray(Image.open(out / "p-side.png"))
    assert side.shape == (64, 160, 3)
    np.testing.assert_array_equal(side[:, :80], a)


def test_sub_folders_are_reported_or_processed_with_recursive(tmp_path, loads, capsys):
    picture(tmp_path / "in" / "top.png")
    picture(tmp_path / "in" / "sub" / "deep" / "low.png", 1)
    out = tmp_path / "out"
    assert predict(tmp_path / "in", "-o", out) == 0
    assert "1 sub-folder skipped" in capsys.readouterr().err and not (out / "sub").exists()
    assert predict(tmp_path / "in", "-o", out, "--recursive") == 0
    assert (out / "sub" / "deep" / "low-depth.png").is_file() and (out / "top-depth.png").is_file()


def test_status_lines_and_quiet(tmp_path, loads, capsys):
    picture(tmp_path / "a.png")
    picture(tmp_path / "b.png", 1)
    assert predict(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "o1", "-v") == 0
    out, err = capsys.readouterr()
    assert out == ""  # status goes to stderr
    assert "model custom_beit (MiDaS v3.1 DPT-BEiT)" in err and "float32" in err and "cpu" in err.lower()
    assert f"[1/2] {tmp_path / 'a.png'} -> {tmp_path / 'o1' / 'a-depth.png'}" in err
    assert "2 pictures done" in err
    assert predict(tmp_path / "a.png", "-o", tmp_path / "o2", "-q") == 0
    assert capsys.readouterr() == ("", "")


def test_height_size_and_bucket_options_set_the_network_input(tmp_path, model, monkeypatch):
    fake = ShapeModel(model.config)
    monkeypatch.setattr(dpt_jax.model, "load", lambda path, **kw: fake)
    picture(tmp_path / "p.png", 4, size=(60, 70))
    for option, shape in [([], (96, 128)), (["--height", "64"], (64, 64)), (["--size", "64x160"], (64, 64)),
                          (["--size", "64x200", "--no-keep-aspect-ratio"], (64, 192)),
                          (["--bucket"], (128, 128)), (["--height", "64", "--no-keep-aspect-ratio"], (64, 64))]:
        fake.shapes.clear()
        assert predict(tmp_path / "p.png", "-o", tmp_path / "o", "--overwrite", *option) == 0
        assert fake.shapes == [(1, *shape, 3)], option
    # MiDaS's rule for --size 64x160 on 60x70: the height's scale (1.07) is closer to 1 than the width's (2.3),
    # so both sides take it (64 x 74.7), then round to multiples of 32.
    assert pipeline.planner(model.config, size=(64, 160))((60, 70)) == (64, 64)


# -- fixed bugs ---------------------------------------------------------------------------------------

def test_convert_refuses_to_replace_its_source(tmp_path, capsys):
    src = tmp_path / "m.pt"
    src.write_bytes((FIXTURES / "mini_beit.pt").read_bytes())
    before = src.read_bytes()
    assert cli.main(["convert", str(src), "-o", str(src)]) == 1
    assert "is the checkpoint being converted" in capsys.readouterr().err and src.read_bytes() == before


def test_wrong_number_of_pretrained_window_sizes_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert cli.main(["convert", str(FIXTURES / "mini_swin2.pt"), "-o", str(out),
                     "--pretrained-window-sizes", "4,4"]) == 1
    assert "has 2 values; this checkpoint has 4 stages: give one per stage" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["info", MINI, "--pretrained-window-sizes", "4,4,4,2"]) == 1
    assert "pretrained_window_sizes does not apply to a MiDaS v3.1 DPT-BEiT model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["info", MINI, "--pretrained-window-sizes", "4,-4"])


class _ClosedPipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_info_into_a_closed_pipe_is_quiet(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["info", MINI]) == 141
    assert capsys.readouterr().err == ""


def test_info_reports_devices(capsys):
    assert cli.main(["info", MINI]) == 0
    assert "devices:    1 x cpu" in capsys.readouterr().out


def test_every_option_has_help_and_predict_help_lists_models_and_naming(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name == "bench":  # its own parser (dpt_jax.bench)
            continue
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    assert all(n in text for n in hub.REGISTRY) and "-depth.png" in text and "--overwrite" in text


def test_version_and_python_m(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"dpt-jax {dpt_jax.__version__}"
    assert dpt_jax.__version__ == version("dpt-jax")
    proc = subprocess.run([sys.executable, "-m", "dpt_jax", "--version"], capture_output=True, text=True,
                          cwd=FIXTURES.parent.parent, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dpt-jax {dpt_jax.__version__}"
