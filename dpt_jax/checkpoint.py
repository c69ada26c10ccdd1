"""Checkpoint files in, parameter trees out: original checkpoints and dpt-jax converted files.

    read_checkpoint(path)        any supported file -> Checkpoint(config, params, skipped)
      original .pt / .safetensors: the family that recognises the keys gives the config and the
      key table; every missing, unexpected and mis-shaped key is listed at once (ConversionError)
      converted .safetensors: the config stored in the metadata, validated field by field

    write_converted(path, config, params)   float32 parameters + config in the metadata, atomically

Nothing is read that the model does not use (lazy tensors), nothing is allocated before the
file's shapes have been checked against what the model expects.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .config import DPTConfig
from .convert.files import read_state_dict
from .convert.keys import apply_table, check_state_dict, problem_list, skipped_keys
from .convert.safetensors_io import read_safetensors_metadata, write_safetensors
from .convert.tensors import TensorRef
from .errors import CheckpointError, ConfigError, ConversionError
from .registry import config_from_json, detect_config

FORMAT = "dpt-jax"  # value of the "format" metadata entry of converted files
FORMAT_VERSION = "2"  # 2: the neck and head as data (reassemble factors, readout, head, activation)


@dataclass
class Checkpoint:
    config: DPTConfig
    params: dict  # nested Flax tree of NumPy arrays
    skipped: list[str]  # source keys deliberately not loaded
    path: str = "<state dict>"

    @property
    def num_params(self) -> int:
        return count_params(self.params)


def count_params(tree) -> int:
    """The number of scalars in a nested tree of arrays (anything with .shape)."""
    from flax import traverse_util

    return sum(int(np.prod(a.shape)) for a in traverse_util.flatten_dict(dict(tree)).values())


def convert_state_dict(state: Mapping[str, TensorRef], config: DPTConfig, path="<state dict>",
                       shown=str) -> Checkpoint:
    """Map `state` onto the parameter tree of DPT(config), checking every key and shape first.

    Reads only the tensors the model uses. Raises ConversionError listing every missing,
    unexpected and mis-shaped key (named by `shown(key)`).
    """
    from .dpt import param_shapes

    family = config.family
    table, skips = family.key_table(config), family.skipped(config)
    problems = check_state_dict(state, table, skips, param_shapes(config), shown)
    if problems:
        raise ConversionError(path, f"does not fit {config.name} ({family.name}):\n  " + "\n  ".join(problems))
    return Checkpoint(config, apply_table(state, table), skipped_keys(state, skips), str(path))


def read_checkpoint(path, **options) -> Checkpoint:
    """Read an original checkpoint or a converted file (lazily: unused tensors stay on disk).

    `options`: choices a checkpoint cannot tell (`pretrained_window_sizes` for SwinV2; `variant`
    and `max_depth` for Depth Anything, whose keys cannot tell V1 from V2 nor relative from metric).
    """
    path = os.fspath(path)
    from .convert import hf

    if hf.is_hf_folder(path):
        return read_hf(path, **options)
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else
                              f"not a regular file (nor a folder with a Hugging Face {hf.CONFIG_NAME})")
    if is_converted(path):
        return read_converted(path, **options)
    state = read_state_dict(path)
    return convert_state_dict(state, detect_config(state, path, **options), path)


def read_hf(path, **options) -> Checkpoint:
    """A Hugging Face transformers folder (config.json + weights): renamed to the original keys, then
    converted like an original checkpoint (convert/hf.py); `options` win over what config.json says."""
    from .convert import hf
    from .registry import FAMILIES, as_preset

    source = hf.read(path)
    if source.model.kind not in FAMILIES:
        raise ConversionError(source.model.path, f"a {source.model.kind} model (Depth Anything): this dpt-jax has "
                              f"no {source.model.kind} encoder family (it has {', '.join(FAMILIES)})")
    config = detect_config(source.state, source.path, facts=source.options, **options)
    config = as_preset(hf.finish(config, source))
    return convert_state_dict(source.state, config, source.path, shown=source.shown)


def is_converted(path) -> bool:
    try:
        return read_safetensors_metadata(path).get("format") == FORMAT
    except CheckpointError:
        return False


def write_converted(path, config: DPTConfig, params: Mapping) -> None:
    """Write params (nested dict of arrays) as float32 safetensors with the config in the metadata, atomically."""
    from flax import traverse_util

    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
    write_safetensors(path, flat, metadata)


def read_converted(path, *, pretrained_window_sizes=None, variant=None, max_depth=None, **options) -> Checkpoint:
    """Config and parameter tree of a converted file; the config is validated and every shape checked.

    The variant is recorded in the file: `variant`, if given, must be it; `max_depth` overrides a metric model's.
    """
    from flax import traverse_util

    from .dpt import param_shapes

    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "not a dpt-jax converted file (no 'format: dpt-jax' metadata)")
    version = meta.get("format_version")
    if version not in ("1", FORMAT_VERSION):
        raise CheckpointError(path, f"converted with format version {str(version)[:20]!r}; "
                              f"this dpt-jax reads versions 1 and {FORMAT_VERSION}: convert the original again")
    try:
        text = meta.get("config")
        config = config_from_json(_upgrade_v1(text) if version == "1" else text, "the config in its metadata")
        if pretrained_window_sizes is not None:
            if "pretrained_window_sizes" not in config.family.options:
                raise ConfigError(f"pretrained_window_sizes does not apply to a {config.family.name} model")
            config = config.replace(encoder=dataclasses.replace(
                config.encoder, pretrained_window_sizes=tuple(pretrained_window_sizes)))
        if variant is not None and variant not in (config.name, config.name.removeprefix("dpt_")):
            raise ConfigError(f"holds {config.name} (recorded when it was converted), not the variant {variant} given")
        if max_depth is not None:
            if not config.is_metric:
                raise ConfigError(f"max_depth applies to metric models; {config.name} is relative")
            config = config.replace(max_depth=float(max_depth))
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None
    state = read_state_dict(path)
    want = param_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    mis_shaped = [f"{k}: {tuple(state[k].shape)}, expected {want[k]}"
                  for k in want if k in state and tuple(state[k].shape) != want[k]]
    problems = problem_list(missing=missing, unexpected=unexpected, mis_shaped=mis_shaped)
    if problems:
        raise ConversionError(path, f"does not fit {config.name}:\n  " + "\n  ".join(problems))
    params = traverse_util.unflatten_dict({k: state[k].read() for k in want}, sep="/")
    return Checkpoint(config, params, [], path)


def _upgrade_v1(text):
    """Version 1 files (MiDaS BEiT/SwinV2 only) stored no neck fields: add the ones each family implied."""
    import json

    try:
        d = json.loads(text)
        beit = d["encoder"]["family"] == "beit"
    except (TypeError, ValueError, KeyError):
        return text  # config_from_json says what is wrong
    d.update(reassemble_factors=[4, 2, 1, 0.5] if beit else [1, 1, 1, 1], readout="project" if beit else "none")
    return json.dumps(d)
