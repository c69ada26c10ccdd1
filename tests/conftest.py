"""All tests run offline on CPU with full float32 matmul precision (TF32/bf16 passes would hide real bugs)."""

import os

import jax

jax.config.update("jax_default_matmul_precision", "highest")
# Tests leave the user's compilation cache alone; the cache itself is tested in its own processes.
os.environ.setdefault("DPT_JAX_COMPILATION_CACHE", "off")
