"""`dpt-jax eval`: the real Middlebury pair end to end, a model run on a folder dataset, and early errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import cli, datasets, evaluate, hub, metrics
from helpers import FIXTURES, free_port, run_together, write_motorcycle

MINI = str(FIXTURES / "mini_beit.safetensors")


@pytest.fixture(scope="module")
def motorcycle(tmp_path_factory):
    """scikit-image's Middlebury 2014 pair in Middlebury's layout, and its ground truth depth as the reader gives."""
    root = tmp_path_factory.mktemp("middlebury")
    write_motorcycle(root / "Motorcycle")
    [sample] = datasets.open_dataset("middlebury", root)
    depth, valid = sample.load_truth()
    return root, depth, valid


def test_middlebury_pair_with_known_errors_end_to_end(motorcycle, tmp_path, capsys):
    root, gt, valid = motorcycle
    h, w = gt.shape
    wrong = np.zeros((h, w), bool)
    wrong[:, : w // 3] = True  # a third of the columns 30 % too far; the rest exact
    pred = np.where(wrong, gt * 1.3, gt).astype(np.float32)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "Motorcycle.npy", pred)
    out = tmp_path / "report.json"
    code = cli.main(["eval", "--dataset", "middlebury", "--data", str(root), "--predictions", str(tmp_path / "pred"),
                     "--kind", "depth", "-o", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    fraction = (wrong & valid).sum() / valid.sum()  # of the valid pixels, how many are wrong
    m = report["metrics"]
    np.testing.assert_allclose(m["abs_rel"], 0.3 * fraction, rtol=1e-5)
    np.testing.assert_allclose(m["sq_rel"], 0.09 * gt[wrong & valid].sum() / valid.sum(), rtol=1e-5)
    np.testing.assert_allclose(m["delta1"], 1 - fraction, rtol=1e-9)  # 1.3 > 1.25
    assert m["delta2"] == 1 and m["delta3"] == 1
    np.testing.assert_allclose(m["log10"], np.log10(1.3) * fraction, rtol=1e-5)
    np.testing.assert_allclose(m["rmse"], np.sqrt(0.09 * (gt[wrong & valid].astype(np.float64) ** 2).sum()
                                                  / valid.sum()), rtol=1e-5)
    assert report["settings"]["alignment"] == "none" and report["settings"]["kind"] == "depth"
    assert report["settings"]["max_depth"] == "inf"
    assert [r["name"] for r in report["images"]] == ["Motorcycle"]
    assert report["images"][0]["valid_pixels"] == valid.sum()
    text = capsys.readouterr().out
    assert "abs_rel" in text and f"{m['abs_rel']:.4f}" in text


def test_middlebury_affine_disparity_is_recovered_by_the_default_alignment(motorcycle, tmp_path):
    root, gt, valid = motorcycle
    disparity = np.where(valid, 2.5 / np.where(valid, gt, 1) + 0.3, 0.3).astype(np.float32)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "Motorcycle-depth.npy", disparity)  # as dpt-jax predict -f npy names it
    out = tmp_path / "report.json"
    assert cli.main(["eval", "--dataset", "middlebury", "--data", str(root), "--predictions",
                     str(tmp_path / "pred"), "-o", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["alignment"] == "disparity"
    assert report["metrics"]["abs_rel"] < 1e-5 and report["metrics"]["delta1"] == 1
    np.testing.assert_allclose(report["images"][0]["scale"], 1 / 2.5, rtol=1e-4)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was resolved or loaded")

    monkeypatch.setattr(hub, "resolve", refuse)
    monkeypatch.setattr(dpt_jax.model, "load", refuse)


def test_a_folder_not_matching_the_layout_fails_before_any_model(tmp_path, no_model, capsys):
    (tmp_path / "images").mkdir()
    assert cli.main(["eval", MINI, "--dataset", "folder", "--data", str(tmp_path)]) == 1
    assert "missing depth" in capsys.readouterr().err
    assert cli.main(["eval", MINI, "--dataset", "kitti", "--data", str(tmp_path)]) == 1
    assert "missing eigen_test_files_with_gt.txt" in capsys.readouterr().err
    assert cli.main(["eval", "--dataset", "kitti", "--data", str(tmp_path)]) == 1
    assert "give a MODEL, or --predictions" in capsys.readouterr().err


def _folder_dataset(root, n=3, size=(30, 40)):
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        np.save(root / "depth" / f"p{i}.npy", rng.uniform(1, 5, size).astype(np.float32))


def test_a_model_on_a_folder_dataset_writes_the_report_once(tmp_path, monkeypatch, capsys):
    model = dpt_jax.load(MINI)
    calls = []
    monkeypatch.setattr(dpt_jax.model, "load", lambda *a, **k: calls.append(k) or model)
    _folder_dataset(tmp_path / "data")
    out = tmp_path / "r.json"
    args = ["eval", MINI, "--dataset", "folder", "--data", str(tmp_path / "data"), "-o", str(out), "--no-progress",
            "--batch-size", "3"]
    assert cli.main(args) == 0
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["images"]] == ["p0", "p1", "p2"]
    assert report["settings"]["model"] == model.config.name and report["settings"]["dtype"] == "float32"
    assert calls[0]["dtype"] == "float32"
    assert all(np.isfinite(report["metrics"][m]) for m in metrics.METRICS)
    # the same scores from the library: the model's depth through evaluate.Scorer
    scorer = evaluate.Scorer(evaluate.settings_for("folder", "disparity"))
    samples = datasets.open_dataset("folder", tmp_path / "data")
    depths = model.predict([s.picture.load() for s in samples], batch_size=3)  # the same program as the run
    for s, depth in zip(samples, depths):
        scorer.add(s.name, depth, *s.load_truth())
    np.testing.assert_allclose(report["metrics"]["abs_rel"], scorer.result()["abs_rel"], rtol=1e-6)
    assert cli.main(args) == 1  # the report is not replaced without --overwrite
    assert "exists" in capsys.readouterr().err


def test_disparity_video_alignment_fits_each_sequence_once():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, 5, (4, 5, 6))
    disparity = np.concatenate([2 / gt[:2] + 0.1, 7 / gt[2:] + 0.4])  # two videos, one affine map each
    scorer = evaluate.Scorer(evaluate.settings_for("sintel", "disparity", alignment="disparity-video",
                                                   max_depth=np.inf))
    for i in range(4):
        scorer.add(f"f{i}", disparity[i], gt[i], np.ones((5, 6), bool), sequence=f"v{i // 2}", sequence_length=2)
    assert scorer.result()["abs_rel"] < 1e-6  # float32 predictions, as eval.py reads them
    assert [r["scale"] for r in scorer.rows][::2] == pytest.approx([0.5, 1 / 7])
    scorer.add("f4", disparity[0], gt[0], np.ones((5, 6), bool), sequence="v2", sequence_length=2)  # one frame lost
    assert len(scorer.rows) == 4 and scorer.result()["abs_rel"] < 1e-6 and len(scorer.rows) == 5
    with pytest.raises(ValueError, match="has no scale"):
        evaluate.settings_for("folder", "disparity", alignment="none")


def test_shares_cover_every_picture_and_keep_videos_whole():
    samples = [datasets.Sample(f"s{i}", None, None, sequence=f"v{i // 3}") for i in range(7)]
    by_picture = evaluate.shares(samples, 2, by_sequence=False)
    assert by_picture == [[0, 2, 4, 6], [1, 3, 5]]
    assert evaluate.shares(samples, 2, by_sequence=True) == [[0, 1, 2, 6], [3, 4, 5]]


def test_two_processes_score_their_shares_and_process_0_reports_all(tmp_path):
    import os
    import sys

    _folder_dataset(tmp_path / "data", n=5, size=(6, 8))
    rng = np.random.default_rng(3)
    (tmp_path / "pred").mkdir()
    for i in range(5):
        gt = np.load(tmp_path / "data" / "depth" / f"p{i}.npy")
        np.save(tmp_path / "pred" / f"p{i}.npy", (gt * rng.uniform(0.7, 1.4, gt.shape)).astype(np.float32))
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2",
           "JAX_PLATFORMS": "cpu"}
    options = ["--dataset", "folder", "--data", str(tmp_path / "data"), "--predictions", str(tmp_path / "pred"),
               "--kind", "depth", "--no-progress"]
    command = [sys.executable, "-m", "dpt_jax", "eval", *options, "-o", str(tmp_path / "all.json"), "--distributed"]
    runs = [(command, {**env, "JAX_PROCESS_ID": str(p)}) for p in range(2)]
    procs, outs = run_together(runs, 120, cwd=FIXTURES.parent.parent)
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "process 0 writes the report" in outs[1][0]
    report = json.loads((tmp_path / "all.json").read_text())
    assert [r["name"] for r in report["images"]] == [f"p{i}" for i in range(5)]
    assert report["settings"]["processes"] == 2
    single = tmp_path / "one.json"
    assert cli.main(["eval", *options, "-o", str(single)]) == 0  # one process, the same scores
    np.testing.assert_allclose([report["metrics"][m] for m in metrics.METRICS],
                               [json.loads(single.read_text())["metrics"][m] for m in metrics.METRICS], rtol=1e-12)


def test_a_bad_saved_prediction_is_a_failed_picture_and_the_rest_are_scored(tmp_path, capsys):
    _folder_dataset(tmp_path / "data", n=3, size=(6, 8))
    (tmp_path / "pred").mkdir()
    for i in range(3):
        np.save(tmp_path / "pred" / f"p{i}.npy", np.load(tmp_path / "data" / "depth" / f"p{i}.npy"))
    np.save(tmp_path / "pred" / "p1.npy", np.full((6, 8), np.nan, np.float32))
    np.save(tmp_path / "pred" / "p2.npy", np.ones((5, 8), np.float32))
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--dataset", "folder", "--data", str(tmp_path / "data"), "--predictions",
                     str(tmp_path / "pred"), "--kind", "depth", "-o", str(out), "--no-progress"]) == 1
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["images"]] == ["p0"] and report["metrics"]["abs_rel"] == 0
    assert [f["name"] for f in report["failed"]] == ["p1", "p2"]
    err = capsys.readouterr().err
    assert "p1.npy: the prediction has NaN or infinite values" in err
    assert "p2: the prediction is 8x5, the ground truth 8x6" in err
