"""Checkpoint conversion: installed as `dpt_jax.convert` (the source folder is ./convert).

- `torch_zip`: a safe, lazy reader of PyTorch zip checkpoints and safetensors files.
- `midas`: variant detection, the key tables and the converted-file format.
"""
