"""All tests run offline on CPU with full float32 matmul precision (TF32/bf16 passes would hide real bugs)."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
