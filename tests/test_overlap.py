"""pipeline.run with decoding in worker threads and batches overlapped on the device."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import overlap, pipeline
from helpers import FIXTURES

SIZES = [(64, 80), (80, 64), (64, 80), (80, 64), (64, 80), (64, 80), (80, 64)]


@pytest.fixture(scope="module")
def model():
    return dpt_jax.load(FIXTURES / "mini_beit.safetensors")


def photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 64
    rgb = np.stack([np.sin(4 * x * rng.uniform(0.5, 2) + c) * np.cos(3 * y + rng.uniform(0, 6)) for c in range(3)], -1)
    return np.round((rgb * 0.5 + 0.5) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Mixed sizes, JPEG and PNG, one EXIF-rotated photo, one truncated and one corrupt file."""
    d = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (h, w) in enumerate(SIZES):
        p = d / f"p{i}.{'png' if i % 3 == 0 else 'jpg'}"
        exif = Image.Exif()
        if i == 3:
            exif[0x0112] = 6  # stored 64 x 80, shown 80 x 64, as a phone writes it
            Image.fromarray(np.ascontiguousarray(np.rot90(photo(h, w, i)))).save(p, exif=exif, quality=95)
        else:
            Image.fromarray(photo(h, w, i)).save(p)
        paths.append(p)
    (d / "truncated.jpg").write_bytes(paths[1].read_bytes()[:1000])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    paths.insert(4, d / "truncated.jpg")
    paths.insert(7, d / "corrupt.png")
    return paths


def run_recording(model, paths, **kw):
    events = []
    results = pipeline.run(model, paths, batch_size=2, on_result=lambda r: events.append((r.name, r.error)), **kw)
    return results, events


@pytest.mark.parametrize("budget", [None, 80 * 64 + 1])  # default; one picture per chunk
def test_threads_give_the_sequential_results_exactly(model, folder, budget):
    sequential, seq_events = run_recording(model, folder, workers=0, pixel_budget=budget)
    threaded, thr_events = run_recording(model, folder, workers=3, pixel_budget=budget)
    assert thr_events == seq_events  # same pictures, same order, same messages
    assert [r.name for r in threaded] == [str(p) for p in folder]  # results in input order
    for s, t in zip(sequential, threaded):
        assert s.error == t.error
        if s.error is None:
            np.testing.assert_array_equal(t.depth, s.depth)  # bit for bit
    errors = {r.name.rsplit("/", 1)[-1]: r.error for r in threaded if r.error}
    assert set(errors) == {"truncated.jpg", "corrupt.png"} and "decode" in errors["truncated.jpg"]
    assert threaded[3].depth.shape == (80, 64)  # EXIF-rotated: depth at the displayed size


class Recorder:
    """Sources whose decodes are slow and counted; a fake model and resizes recording what is dispatched."""

    def __init__(self, sizes, delay=0.0):
        self.lock = threading.Lock()
        self.held = self.peak = self.concurrent = self.most_concurrent = 0
        self.threads, self.log, self.delay = set(), [], delay
        self.pictures = [photo(h, w, i) for i, (h, w) in enumerate(sizes)]

    def change(self, px):
        with self.lock:
            self.held += px
            self.peak = max(self.peak, self.held)

    def source(self, i):
        a = self.pictures[i]

        def load():
            with self.lock:
                self.concurrent += 1
                self.most_concurrent = max(self.most_concurrent, self.concurrent)
                self.threads.add(threading.current_thread().name)
            time.sleep(self.delay)
            self.change(a.shape[0] * a.shape[1])
            with self.lock:
                self.concurrent -= 1
            return a
        return pipeline.Source(f"p{i}", a.shape[:2], load)


def run_recorded(model, monkeypatch, budget):
    sizes = [(60, 70), (60, 70), (60, 71), (60, 70), (60, 71), (60, 70), (90, 60), (60, 70)]
    rec = Recorder(sizes, delay=0.05)
    resize, back = overlap.to_network, overlap.to_picture

    def counted_resize(config, images, size):
        rec.change(-images.shape[0] * images.shape[1] * images.shape[2])  # decoded pixels given back
        return resize(config, images, size)

    def counted_back(config, depth, size):
        rec.change(depth.shape[0] * size[0] * size[1])  # depth maps at picture size held from here
        return back(config, depth, size)

    class FakeModel:
        num_devices, devices, config = 1, None, model.config

        def apply(self, x):
            rec.log.append(("apply", x.shape[0]))
            return x.mean(-1)  # (B, H, W)

    def on_result(r):
        rec.log.append(("result", r.name))
        rec.change(-r.depth.shape[0] * r.depth.shape[1])

    monkeypatch.setattr(overlap, "to_network", counted_resize)
    monkeypatch.setattr(overlap, "to_picture", counted_back)
    results = pipeline.run(FakeModel(), [rec.source(i) for i in range(len(sizes))], batch_size=2,
                           pixel_budget=budget, workers=4, on_result=on_result, keep_depth=False)
    monkeypatch.undo()
    assert all(r.error is None for r in results) and rec.held == 0
    return rec


def test_the_budget_holds_with_prefetch_and_depth_maps_included(model, monkeypatch):
    budget = 3 * 60 * 71
    rec = run_recorded(model, monkeypatch, budget)
    assert rec.peak <= budget  # inputs, prefetched inputs and depth maps at picture size together
    assert rec.peak > 2 * 60 * 71  # ... and the budget was used: the next batch was decoded meanwhile


def test_decoding_runs_in_threads_and_batch_k_plus_1_is_dispatched_before_k_is_pulled(model, monkeypatch):
    rec = run_recorded(model, monkeypatch, None)
    assert rec.threads and all(t.startswith("dpt-jax-decode") for t in rec.threads)
    assert rec.most_concurrent >= 2  # pictures decoded side by side
    kinds = [kind for kind, _ in rec.log]
    applies = [i for i, k in enumerate(kinds) if k == "apply"]
    results = [i for i, k in enumerate(kinds) if k == "result"]
    assert len(applies) == 5  # (96, 128): 2 + 2 + 2 + 1 pictures; (128, 96): 1
    for b in range(3):  # the results of batch b (2 pictures each) come after batch b + 1 was dispatched
        assert min(results[2 * b:2 * b + 2]) > applies[b + 1]


def test_a_picture_over_the_budget_still_runs_alone(model):
    rec = Recorder([(64, 64), (128, 96), (64, 64)])
    results = pipeline.run(model, [rec.source(i) for i in range(3)], batch_size=4, pixel_budget=64 * 64 + 1, workers=2)
    assert [r.depth.shape for r in results] == [(64, 64), (128, 96), (64, 64)]
    sequential = pipeline.run(model, [rec.source(i) for i in range(3)], batch_size=4, pixel_budget=64 * 64 + 1,
                              workers=0)
    for r, s in zip(results, sequential):
        np.testing.assert_array_equal(r.depth, s.depth)


def test_a_model_error_stops_the_run_and_its_threads(model):
    class Broken:
        num_devices, devices, config = 1, None, model.config

        def apply(self, x):
            raise ValueError("device lost")

    rec = Recorder([(64, 64)] * 6, delay=0.02)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="device lost"):
        pipeline.run(Broken(), [rec.source(i) for i in range(6)], batch_size=2, workers=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("dpt-jax-") and t.name not in before]


def test_an_error_in_on_result_stops_the_run_and_reaches_the_caller(model):
    seen = []

    def on_result(r):
        seen.append(r.name)
        if len(seen) == 3:
            raise OSError("disk full")

    rec = Recorder([(64, 64)] * 8)
    with pytest.raises(OSError, match="disk full"):
        pipeline.run(model, [rec.source(i) for i in range(8)], batch_size=2, workers=2, on_result=on_result)
    assert seen == ["p0", "p1", "p2"]  # nothing handed out after the error
    assert not [t for t in threading.enumerate() if t.name.startswith("dpt-jax-")]
