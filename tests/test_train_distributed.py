"""`dpt-jax finetune --distributed`: two CPU processes on 127.0.0.1 (one device each) train one model with its
parameters sharded across them (--shard-params), each reading half of every batch: the losses, validation and
parameters equal those of one process with two devices. (One device against several: tests/test_train_devices.py.)
"""

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from dpt_jax import predict_files
from dpt_jax.checkpoint import load_checkpoint, write_converted
from dpt_jax.timing import random_params
from helpers import free_port, run_together, tiny_da2_metric

FLAGS = ["--steps", "3", "--batch-size", "2", "--size", "28", "--lr", "2e-4", "--seed", "5", "--save-every", "2",
         "--no-progress", "--no-hf"]


def _scenes(root: Path) -> Path:
    """Four 20x30 pictures whose depth follows their brightness, in the folder layout."""
    rng = np.random.default_rng(1)
    for sub in ("images", "depth"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        shade = np.roll(np.linspace(0, 1, 30)[None, :] * np.linspace(0.5, 1, 20)[:, None], 5 * i, axis=1)
        picture = np.clip(shade[..., None] * [255, 180, 120] + rng.normal(0, 8, (20, 30, 3)), 0, 255)
        Image.fromarray(picture.astype(np.uint8)).save(root / "images" / f"p{i}.png")
        np.save(root / "depth" / f"p{i}.npy", (1.0 + 6.0 * shade).astype(np.float32))
    return root


def _log(log):
    entries = [json.loads(line) for line in Path(log).read_text().splitlines()]
    return {"loss": [e for e in entries if "loss" in e], "val": [e["val"] for e in entries if "val" in e]}


def test_two_processes_train_as_one(tmp_path):
    model = tmp_path / "tiny.safetensors"
    config = tiny_da2_metric()
    write_converted(model, config, random_params(config, seed=2))
    data = _scenes(tmp_path / "scenes")
    env = {**os.environ, "DPT_JAX_COMPILATION_CACHE": "off", "JAX_PLATFORMS": "cpu",
           # one CPU device per process; XLA's quick CPU code generation (the same operations, less compile time)
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"}
    for name in predict_files.DISTRIBUTED_VARIABLES:
        env.pop(name, None)
    joined = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}

    def finetune(out, *flags):
        return [sys.executable, "-c", "import jax, sys; jax.config.update('jax_default_matmul_precision', 'highest');"
                "from dpt_jax.cli import main; sys.exit(main(sys.argv[1:]))", "finetune", str(model), "--data",
                str(data), "--val-data", str(data), "-o", str(tmp_path / out), *FLAGS, *flags]

    runs = [(finetune("d.safetensors", "--distributed", "--shard-params"), {**env, **joined, "JAX_PROCESS_ID": "0"}),
            (finetune("d.safetensors", "--distributed", "--shard-params"), {**env, **joined, "JAX_PROCESS_ID": "1"}),
            # the same run in one process with two devices
            (finetune("one.safetensors", "--shard-params"),
             {**env, "XLA_FLAGS": env["XLA_FLAGS"].replace("count=1", "count=2")})]
    procs, outs = run_together(runs, 240)
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-3000:] for _, err in outs]
    assert "updates:    3" in outs[0][0] and "updates" not in outs[1][0]  # process 0 reports, process 1 does not
    got, want = _log(tmp_path / "d.safetensors.log.jsonl"), _log(tmp_path / "one.safetensors.log.jsonl")
    assert [e["step"] for e in got["loss"]] == [1, 2, 3]  # one log, written by process 0 alone
    # Two processes of one device each compute what one process of two devices does: the same program, the
    # all-reduce and reduce-scatter over two devices (a + b) through Gloo instead of in memory. Bit for bit.
    assert got["loss"] == want["loss"]
    # the validation: process 0 alone, on the parameters gathered from both (the other run: on its two devices)
    assert len(got["val"]) == len(want["val"]) == 1 and got["val"][0].keys() == want["val"][0].keys()
    for k, v in want["val"][0].items():
        assert np.isclose(got["val"][0][k], v, rtol=1e-6, atol=0), k
    # Orbax checkpoints written by both processes together (each its half of every sharded array)
    assert sorted(p.name for p in (tmp_path / "d.safetensors.ckpt").iterdir() if p.name.isdigit()) == ["2", "3"]
    a, b = load_checkpoint(tmp_path / "d.safetensors"), load_checkpoint(tmp_path / "one.safetensors")
    assert a.config == b.config == config
    moved = 0
    for x, y, z in zip(*(jax.tree_util.tree_leaves(c.params) for c in (a, b, load_checkpoint(model))), strict=True):
        np.testing.assert_array_equal(x, y)
        moved += not np.array_equal(y, z)
    assert moved > 10  # it did train
