"""Fine-tuning over 4 devices (XLA's host platform split in 4, in a child process): data parallel, and with the
parameters and optimizer state sharded (FSDP), three steps of the reference mini (tests/fixtures/train) give the
one-device run's losses and parameters within float rounding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from dpt_jax import train
from test_train_reference import BATCH, CONFIG, RECIPE, tree

assert len(jax.devices()) == 4
images, depth, valid = BATCH
batch = tuple(np.concatenate([a, a[:, :, ::-1]]) for a in (images, depth, valid))  # 4 pictures, one per device
recipe, params, out = RECIPE.replace(batch_size=4), tree("mini.pth"), {}
for name, devices, shard in (("one", jax.devices()[:1], False), ("dp4", jax.devices(), False),
                             ("fsdp4", jax.devices(), True)):
    trainer = train.Trainer(CONFIG, recipe, devices, shard)
    state, losses = trainer.init(params), []
    for _ in range(3):
        state, loss = trainer.step(state, batch)
        losses.append(float(loss))
    leaves = jax.tree_util.tree_leaves(state["params"])
    out[name] = {"losses": losses, "sliced": sum(x.addressable_shards[0].data.size * 4 == x.size for x in leaves),
                 "leaves": len(leaves),
                 "params": [np.asarray(jax.device_get(x)).ravel().tolist() for x in leaves]}
print("RESULT " + json.dumps(out))
"""


def test_four_devices_data_parallel_and_sharded_equal_one():
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
           # four CPU devices; XLA's quick CPU code generation (the same operations, a third of the compile time)
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    one = out["one"]
    assert out["one"]["sliced"] == 0 and out["dp4"]["sliced"] == 0  # a whole copy on each device
    assert out["fsdp4"]["sliced"] >= out["fsdp4"]["leaves"] - 2  # a quarter of (nearly) every array on each
    for name in ("dp4", "fsdp4"):
        np.testing.assert_allclose(out[name]["losses"], one["losses"], rtol=1e-6)
        # the batch's sums are split four ways: float rounding, which Adam's first steps magnify where 0 < |g|
        # < 1e-6 (tests/fixtures/train/README.md) to about 2e-4 of a parameter array's largest value
        for got, want in zip(out[name]["params"], one["params"], strict=True):
            want = np.asarray(want)
            assert np.abs(np.asarray(got) - want).max() <= 1e-3 * np.abs(want).max()
    assert out["fsdp4"]["params"] == out["dp4"]["params"]  # the same arithmetic, only where the arrays live
