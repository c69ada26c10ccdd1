"""The encoder families dpt-jax knows, their presets, and lookups by config, name and checkpoint.

    FAMILIES      name -> EncoderFamily (beit.py, swinv2.py, dinov2.py)
    PRESETS       preset name -> DPTConfig, over every family
    family_of     encoder config -> its family
    detect_config state dict -> DPTConfig (asks each family whether it recognises the keys)
    config_from_json  the config stored in a converted file, validated field by field
"""

from __future__ import annotations

import json
from typing import Mapping

from . import beit, dinov2, swinv2
from .config import DPTConfig, from_dict
from .errors import ConfigError, ConversionError
from .family import EncoderFamily

FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (beit.FAMILY, swinv2.FAMILY, dinov2.FAMILY)}

PRESETS: dict[str, DPTConfig] = {p.name: p for f in FAMILIES.values() for p in f.presets}
MINI_CONFIGS: dict[str, DPTConfig] = {m.name: m for f in FAMILIES.values() for m in f.minis}


def family_of(encoder_config) -> EncoderFamily:
    family = getattr(type(encoder_config), "family", None)
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"{type(encoder_config).__name__} is the config of no encoder family")
    return family


def get_config(name: str) -> DPTConfig:
    """A preset by name; accepts the short form too ("beit_large_512" for "dpt_beit_large_512")."""
    key = name if name in PRESETS else f"dpt_{name}"
    if key not in PRESETS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]


def recognise(state: Mapping) -> EncoderFamily | None:
    """The family whose checkpoints have the keys of `state`, or None."""
    return next((f for f in FAMILIES.values() if f.recognises(state)), None)


def detect_config(state: Mapping, path="<state dict>", *, variant: str | None = None, facts: Mapping | None = None,
                  **options) -> DPTConfig:
    """The configuration of checkpoint `state` (key -> anything with `.shape`); reads no tensor data.

    A config equal to a preset but for its name is that preset. `options` are choices the file
    cannot tell (see each family's `options`; None means "not given"). `variant` names a preset
    (or a mini): for families whose keys cannot tell their variants (Depth Anything) it is the
    choice; for the others (MiDaS) it must be what the keys say.
    `facts` are what another file says about the checkpoint (a Hugging Face config.json: window
    sizes, the blocks feeding the neck, metric depth): passed to the family's detect_config where
    it takes them; the user's `variant` and `options` win over them.
    """
    family = recognise(state)
    if family is not None:
        options = {k: v for k, v in options.items() if v is not None}
        allowed = family.options or {}
        if unknown := sorted(set(options) - set(allowed)):
            raise ConversionError(path, f"{', '.join(unknown)} does not apply to a {family.name} model")
        if variant is not None:
            chosen = PRESETS.get(variant) or MINI_CONFIGS.get(variant) or PRESETS.get(f"dpt_{variant}")
            if chosen is None:
                raise ConversionError(path, f"unknown variant {variant!r}; known: {', '.join(PRESETS)}")
            if chosen.family is not family:
                raise ConversionError(path, f"holds a {family.name} checkpoint; variant {chosen.name} is a "
                                      f"{chosen.family.name} model")
            variant = chosen.name
        options = {**_taken(family.detect_config, facts or {}), **options}
        if "variant" in allowed:
            return family.detect_config(state, path, variant=variant, **options)
        config = as_preset(family.detect_config(state, path, **options))
        if variant is not None and config.name != variant:
            raise ConversionError(path, f"its keys say it is {config.name}, not the variant {variant} given")
        return config
    hint = ""
    if any(k.startswith("backbone.") or k.startswith("dpt.") for k in state):
        hint = (" (this looks like the weights of a Hugging Face transformers checkpoint: pass the folder "
                "that holds them and their config.json)")
    raise ConversionError(
        path, f"not a checkpoint of a known DPT model ({', '.join(FAMILIES)}): none of them recognises "
        f"its {len(state)} keys{hint}"
    )


def _taken(detect, facts: Mapping) -> dict:
    """The entries of `facts` that the family's detect_config takes as keywords."""
    import inspect

    parameters = inspect.signature(detect).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(facts)
    return {k: v for k, v in facts.items() if k in parameters}


def as_preset(config: DPTConfig) -> DPTConfig:
    """The preset equal to `config` but for its name, or `config` itself."""
    return next((p for p in config.family.presets if p.replace(name=config.name) == config), config)


def config_to_dict(config: DPTConfig) -> dict:
    return json.loads(config.to_json())


def config_from_json(text: str, where: str = "config") -> DPTConfig:
    """The DPTConfig written by `DPTConfig.to_json`; every field is type- and range-checked (ConfigError)."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{where} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict) or not isinstance(d.get("encoder"), dict):
        raise ConfigError(f"{where} must be an object with an 'encoder' object")
    d = dict(d)
    encoder = dict(d.pop("encoder"))
    name = encoder.pop("family", None)
    if name not in FAMILIES:
        raise ConfigError(f"{where}: encoder.family must be one of {', '.join(FAMILIES)}; got {str(name)[:40]!r}")
    d["encoder"] = from_dict(FAMILIES[name].config_class, encoder, f"{where}: encoder")
    return from_dict(DPTConfig, d, where)
