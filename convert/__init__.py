"""What is known about checkpoint files: installed as `dpt_jax.convert` (the source folder is ./convert).

- `files`, `torch_zip`, `safetensors_io`, `tensors`: safe, lazy readers (and the safetensors writer).
- `keys`: key tables (source key -> Flax path) and their checks; `midas`: the MiDaS DPT neck's names.
- `hf`: the Hugging Face transformers layout, generic; each family supplies its own names.
- `beit`, `swinv2`, `dinov2`: one module a family, each ending in its `EncoderFamily`.
"""
