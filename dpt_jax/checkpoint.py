"""The one checkpoint service: any source in, (config, parameter tree) out, each file read once.

    load_checkpoint(source, *, variant, max_depth, **options) -> Checkpoint(config, params, skipped)
        source: a file or folder (below), a released model's name (fetched by `hub`, and checked
        as that model by the same reading that loads it), "<name>_hf" or a Hub repo id
    read_checkpoint(path, ...)   the same for a local file or folder:
      original .pt / .pth / .safetensors: the family that recognises the keys gives the config
        and the key table; every missing, unexpected and mis-shaped key is listed at once
      a Hugging Face transformers folder: renamed to the original keys (convert/hf.py), then the same
      a dpt-jax converted file: the config stored in its metadata, validated field by field
    write_converted(path, config, params)   float32 parameters + config in the metadata, atomically

The user's choices apply the same way to every source: `variant` names the model a file holds
(it must agree with what the file says), `max_depth` overrides a metric model's largest depth,
and each family's `options` (family.py) supply what its files do not store.
Nothing is read that the model does not use (lazy tensors), nothing is allocated before the
file's shapes have been checked against what the model expects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from . import hub, registry
from .config import DPTConfig
from .convert import hf
from .convert.files import read_state_dict
from .convert.keys import apply_table, check_state_dict, problem_list, skipped_keys
from .convert.safetensors_io import is_safetensors, read_safetensors_metadata, write_safetensors
from .convert.tensors import TensorRef
from .errors import CheckpointError, ConfigError, ConversionError

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


def load_checkpoint(source=None, *, variant: str | None = None, max_depth: float | None = None,
                    progress: bool = True, **options) -> Checkpoint:
    """The checkpoint of `source`: a path, a released model's name (None: hub.DEFAULT_MODEL), or a Hub repo.

    A release is downloaded on first use; a new or changed file is checked as the release's model
    by reading it, and that reading is the one returned (no second read).
    """
    if source is not None and not isinstance(source, str):  # a path object: a local file or folder
        return read_checkpoint(source, variant=variant, max_depth=max_depth, **options)
    text = hub.DEFAULT_MODEL if source is None else source
    release = hub.lookup(text) if not os.path.exists(text) else None
    if release is None:
        model = registry.canonical_name(text[:-len(hub.HF_SUFFIX)]) if hub.hf_repo(text) is not None else None
        if variant is None and model is not None and registry.PRESETS[model].family.chooses_variant:
            variant = model  # "<name>_hf": that model (a repo's config.json cannot tell, e.g., Distill-Any-Depth)
        return read_checkpoint(hub.resolve(text, progress=progress), variant=variant, max_depth=max_depth, **options)
    expected = registry.get_config(release.holds or release.name)
    read: list[Checkpoint] = []

    def check(path: Path) -> None:
        read.append(read_release(path, expected, variant=variant, **options))

    path = hub.download(release.name, check=check, progress=progress)
    checkpoint = read[-1] if read else read_release(path, expected, variant=variant, **options)
    checkpoint.path = os.fspath(path)
    return _with_max_depth(checkpoint, max_depth)


def read_release(path, expected: DPTConfig, *, variant: str | None = None, **options) -> Checkpoint:
    """Read `path` as the checkpoint of the released model `expected`: its keys must say exactly that model."""
    path = os.fspath(path)
    if variant is not None and registry.canonical_name(variant) != expected.name:
        raise ConversionError(path, f"is the release {expected.name}, not the variant {variant} given")
    state = registry.source_keys(read_state_dict(path))
    family = registry.recognise(state)
    if family is not None and family is not expected.family:
        raise CheckpointError(path, f"holds a {family.title} ({family.name}) model, not the "
                              f"{expected.family.title} model {expected.name}")
    chosen = {"variant": expected.name} if expected.family.chooses_variant else {}
    config = registry.detect_config(state, path, **chosen, **options)
    if config != expected:
        diffs = _differences(config, expected)
        raise CheckpointError(path, f"holds another {expected.family.name} architecture than {expected.name} ("
                              + "; ".join(diffs) + ")")
    return convert_state_dict(state, config, path)


def _differences(got: DPTConfig, want: DPTConfig) -> list[str]:
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(dataclasses.asdict(got)), flat(dataclasses.asdict(want))
    return [f"{k}: {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k != "name" and a.get(k) != b.get(k)]


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
        raise ConversionError(path, f"does not fit {config.name} ({family.title}):\n  " + "\n  ".join(problems))
    with _memory(path, "laying out the parameters"):
        params = apply_table(state, table)
    return Checkpoint(config, params, skipped_keys(state, skips), str(path))


@contextlib.contextmanager
def _memory(path, step: str):
    """A MemoryError during `step` as a CheckpointError naming the file and the step."""
    try:
        yield
    except MemoryError:
        raise CheckpointError(path, f"not enough memory while {step}") from None


def read_checkpoint(path, *, variant: str | None = None, max_depth: float | None = None, **options) -> Checkpoint:
    """Read an original checkpoint, a Hugging Face folder or a converted file (lazily: unused tensors stay on disk)."""
    path = os.fspath(path)
    if unknown := sorted(set(options) - set(registry.options())):
        raise TypeError(f"unknown option {', '.join(unknown)}; the options are variant, max_depth and "
                        f"{', '.join(registry.options())}")
    options = {k: v for k, v in options.items() if v is not None}
    if (weights := original_release_folder(path)) is not None:  # the file inside; its config.json names the model
        return read_checkpoint(weights, variant=variant, max_depth=max_depth, **options)
    if hf.is_hf_folder(path):
        checkpoint = read_hf(path, variant=variant, **options)
    elif not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else
                              f"not a regular file (nor a folder with a Hugging Face {hf.CONFIG_NAME})")
    elif is_converted(path):
        checkpoint = read_converted(path, variant=variant, **options)
    else:
        state = registry.source_keys(read_state_dict(path))
        checkpoint = convert_state_dict(state, registry.detect_config(state, path, variant=variant, **options), path)
    return _with_max_depth(checkpoint, max_depth)


def original_release_folder(path) -> str | None:
    """The weights file of a folder as an original PyTorchModelHubMixin release holds it (Depth Anything 3's Hub
    repositories: model.safetensors and a config.json of the constructor's arguments, no transformers
    "model_type"), or None for any other path."""
    folder = Path(os.fspath(path))
    weights, config = folder / hf.WEIGHTS_NAME, folder / hf.CONFIG_NAME
    if not (folder.is_dir() and weights.is_file() and config.is_file()):
        return None
    d = hf.load_json(config, hf.MAX_CONFIG_BYTES)
    return os.fspath(weights) if "model_type" not in d and "model_name" in d else None


def _with_max_depth(checkpoint: Checkpoint, max_depth: float | None) -> Checkpoint:
    checkpoint.config = registry.with_max_depth(checkpoint.config, max_depth, checkpoint.path)
    return checkpoint


def read_hf(path, *, variant: str | None = None, **options) -> Checkpoint:
    """A Hugging Face transformers folder (config.json + weights): renamed to the original keys, then
    converted like an original checkpoint (convert/hf.py); `options` win over what config.json says."""
    source = hf.read(path, registry.FAMILIES.values())
    config = registry.detect_config(source.state, source.path, variant=variant, facts=source.options, **options)
    if variant is not None:  # a variant given must be what config.json says, as a converted file's must
        said = {"metric depth": (source.model.metric, config.is_metric)}
        if source.model.hooks is not None and hasattr(config.encoder, "hooks"):
            said["the blocks feeding the neck"] = (source.model.hooks, tuple(config.encoder.hooks))
        if wrong := [f"{what}: config.json says {a}, {config.name} has {b}" for what, (a, b) in said.items() if a != b]:
            raise ConversionError(source.model.path, f"is not the variant {variant} given: " + "; ".join(wrong))
    config = registry.as_preset(hf.finish(config, source))
    return convert_state_dict(source.state, config, source.path, shown=source.shown)


def is_converted(path) -> bool:
    try:
        return is_safetensors(path) and read_safetensors_metadata(path).get("format") == FORMAT
    except CheckpointError:
        return False


def write_converted(path, config: DPTConfig, params: Mapping) -> None:
    """Write params (nested dict of arrays) as float32 safetensors with the config in the metadata, atomically."""
    from flax import traverse_util

    with _memory(path, "writing the converted file"):
        flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
        write_safetensors(path, flat, metadata)


def read_converted(path, *, variant: str | None = None, **options) -> Checkpoint:
    """Config and parameter tree of a converted file; the config is validated and every shape checked.

    The variant is recorded in the file: `variant`, if given, must be it; a family option
    (a field of the encoder's config) replaces the recorded value.
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
        config = registry.config_from_json(meta.get("config"), "the config in its metadata", upgrade_v1=version == "1")
        allowed = {o.name for o in config.family.options}
        if unknown := sorted(set(options) - allowed):
            raise ConfigError(f"{', '.join(unknown)} does not apply to a {config.family.title} model")
        if options:
            values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in options.items()}
            config = config.replace(encoder=dataclasses.replace(config.encoder, **values))
        if variant is not None and registry.canonical_name(variant) != config.name:
            raise ConfigError(f"holds {config.name} (recorded when it was converted), not the variant {variant} given")
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
    with _memory(path, "reading the parameters"):
        params = traverse_util.unflatten_dict({k: state[k].read() for k in want}, sep="/")
    return Checkpoint(config, params, [], path)
