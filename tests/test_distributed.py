"""`dpt-jax predict --distributed`: two CPU processes on 127.0.0.1 share a folder."""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from dpt_jax import cli, predict_files
from helpers import FIXTURES, free_port, run_together


def test_shares_are_disjoint_and_cover_every_picture():
    items = list(range(11))
    shares = [predict_files.shard(items, p, 3) for p in range(3)]
    assert sorted(sum(shares, [])) == items and shares[1] == [1, 4, 7, 10]
    assert predict_files.shard(items, 0, 1) == items


def test_two_processes_do_every_picture_once_without_name_collisions(tmp_path):
    rng = np.random.default_rng(0)
    pictures = {"in/p0.png": (64, 80), "in/p1.png": (64, 80), "in/p2.png": (64, 80),
                "other/a/x.png": (64, 80), "other/b/x.png": (64, 96)}  # one network size: 96x128
    for name, (h, w) in pictures.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "in/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    # Inputs in order: in/broken, in/p0, in/p1, in/p2, a/x, b/x; picture i goes to process i % 2.
    # The two x.png are named one by one: x and x-2, decided from the whole list in both processes.
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2",
           "DPT_JAX_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "dpt_jax", "predict", *(str(tmp_path / p) for p in ("in", "other/a/x.png",
               "other/b/x.png")), "-m", str(FIXTURES / "mini_beit.safetensors"), "-o", str(tmp_path / "out"),
               "-f", "npy", "--distributed"]
    runs = [(command, {**env, "JAX_PROCESS_ID": str(p)}) for p in range(2)]
    procs, outs = run_together(runs, 240, cwd=FIXTURES.parent.parent)
    errs = [err for _, err in outs]
    assert [p.returncode for p in procs] == [1, 0], errs  # process 0 had the broken picture
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["p0-depth.npy", "p1-depth.npy", "p2-depth.npy", "x-2-depth.npy", "x-depth.npy"], errs
    assert np.load(tmp_path / "out/x-depth.npy").shape == (64, 80)  # a/x.png
    assert np.load(tmp_path / "out/x-2-depth.npy").shape == (64, 96)  # b/x.png, written by the other process
    for p, err in enumerate(errs):
        lines = err.strip().splitlines()
        assert lines and all(line.startswith(f"[process {p}/2] ") for line in lines), err
    assert [err.count("broken.png: not an image") for err in errs] == [1, 0]
    # Each picture was written by exactly one process, as its share says.
    assert "in/p1.png ->" in errs[0] and "other/a/x.png ->" in errs[0] and "p0.png ->" not in errs[0]
    assert "in/p0.png ->" in errs[1] and "in/p2.png ->" in errs[1] and "other/b/x.png ->" in errs[1]
    assert "2 pictures done" in errs[0] and "(1 failed)" in errs[0] and "3 pictures done" in errs[1]


def test_distributed_without_a_coordinator_fails_clearly(tmp_path, monkeypatch, capsys):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    assert cli.main(["predict", str(tmp_path / "p.png"), "-o", str(tmp_path / "out")]) == 1
    assert "JAX_NUM_PROCESSES must be an integer; got 'two'" in capsys.readouterr().err
