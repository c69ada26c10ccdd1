"""The encoder families dpt-jax knows, their presets, the one name resolver, and detection by keys.

    FAMILIES          name -> EncoderFamily: every convert/<module> that ends with a FAMILY, found
                      by looking (no list to keep), plus those added with `register_family`
    PRESETS           preset name -> DPTConfig, over every family (MINI_CONFIGS: the toy sizes)
    canonical_name    any spelling of a model name (aliases, "dpt_" left out) -> its preset name
    get_config        a preset or mini by any of its names
    detect_config     state dict -> DPTConfig (asks each family whether it recognises the keys)
    config_from_json  the config stored in a converted file, validated field by field
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from typing import Mapping

from .config import DPTConfig, from_dict
from .errors import ConfigError, ConversionError
from .family import EncoderFamily, Option

FAMILIES: dict[str, EncoderFamily] = {}
PRESETS: dict[str, DPTConfig] = {}
MINI_CONFIGS: dict[str, DPTConfig] = {}
_ALIASES: dict[str, str] = {}


def register_family(family: EncoderFamily) -> EncoderFamily:
    """Add a family: its presets, minis and aliases become names everything else takes."""
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"register_family takes an EncoderFamily; got {type(family).__name__}")
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"a family named {family.name!r} is registered already")
    names = [c.name for c in family.presets + family.minis]
    if taken := [n for n in names if (n in PRESETS or n in MINI_CONFIGS) and
                 (PRESETS.get(n) or MINI_CONFIGS.get(n)).family is not family]:
        raise ValueError(f"{family.name}: preset names taken by another family: {', '.join(taken)}")
    FAMILIES[family.name] = family
    PRESETS.update((p.name, p) for p in family.presets)
    MINI_CONFIGS.update((m.name, m) for m in family.minis)
    _ALIASES.update(family.aliases)
    return family


def unregister_family(name: str) -> None:
    """Remove a family registered with `register_family` (and its names)."""
    family = FAMILIES.pop(name, None)
    if family is None:
        return
    for table in (PRESETS, MINI_CONFIGS):
        for key in [k for k, c in table.items() if c.family is family]:
            del table[key]
    for alias in family.aliases:
        _ALIASES.pop(alias, None)


def _discover() -> None:
    from . import convert

    for info in sorted(pkgutil.iter_modules(convert.__path__), key=lambda m: m.name):
        family = getattr(importlib.import_module(f"{convert.__name__}.{info.name}"), "FAMILY", None)
        if isinstance(family, EncoderFamily):
            register_family(family)


_discover()


def canonical_name(name: str) -> str | None:
    """The preset (or mini) name `name` stands for, or None: exact names first, then each family's aliases."""
    if not isinstance(name, str):
        return None
    if name in PRESETS or name in MINI_CONFIGS:
        return name
    return _ALIASES.get(name)


def get_config(name: str) -> DPTConfig:
    """A preset or mini by any of its names ("beit_large_512" for "dpt_beit_large_512")."""
    key = canonical_name(name)
    if key is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS.get(key) or MINI_CONFIGS[key]


def options() -> dict[str, Option]:
    """Every family's options by name: the `load` keywords and CLI flags beyond the common ones."""
    return {o.name: o for f in FAMILIES.values() for o in f.options}


def family_of(encoder_config) -> EncoderFamily:
    family = getattr(type(encoder_config), "family", None)
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"{type(encoder_config).__name__} is the config of no encoder family")
    return family


def source_keys(state: Mapping) -> Mapping:
    """`state` under the names a family's key table uses: the first family that renames it (family.source_keys)."""
    for family in FAMILIES.values():
        renamed = family.source_keys(state)
        if renamed is not state:
            return renamed
    return state


def recognise(state: Mapping) -> EncoderFamily | None:
    """The family whose checkpoints have the keys of `state`, or None."""
    return next((f for f in FAMILIES.values() if f.recognises(state)), None)


def detect_config(state: Mapping, path="<state dict>", *, variant: str | None = None, max_depth: float | None = None,
                  facts: Mapping | None = None, **options) -> DPTConfig:
    """The configuration of checkpoint `state` (key -> anything with `.shape`); reads no tensor data.

    A config equal to a preset but for its name is that preset. `options` are choices the file
    cannot tell (see each family's `options`; None means "not given"). `variant` names a preset
    (or a mini): for families whose keys cannot tell their variants (`chooses_variant`) it is the
    choice; for the others it must be what the keys say. `max_depth` (metres) overrides a metric
    model's largest depth.
    `facts` are what another file says about the checkpoint (a Hugging Face config.json: window
    sizes, the blocks feeding the neck, metric depth): passed to the family's detect_config where
    it takes them; the user's `variant` and `options` win over them.
    """
    family = recognise(state)
    if family is None:
        hint = ""
        if any(k.startswith("backbone.") or k.startswith("dpt.") for k in state):
            hint = (" (this looks like the weights of a Hugging Face transformers checkpoint: pass the folder "
                    "that holds them and their config.json)")
        known = ", ".join(f.title for f in FAMILIES.values())
        raise ConversionError(path, f"not a checkpoint of a known DPT model ({known}): none of them recognises "
                              f"its {len(state)} keys{hint}")
    options = {k: v for k, v in options.items() if v is not None}
    allowed = {o.name for o in family.options}
    if unknown := sorted(set(options) - allowed):
        raise ConversionError(path, f"{', '.join(unknown)} does not apply to a {family.title} model")
    if variant is not None:
        chosen = canonical_name(variant)
        if chosen is None:
            raise ConversionError(path, f"unknown variant {variant!r}; known: {', '.join(PRESETS)}")
        config = PRESETS.get(chosen) or MINI_CONFIGS[chosen]
        if config.family is not family:
            raise ConversionError(path, f"holds a {family.title} checkpoint; variant {chosen} is a "
                                  f"{config.family.title} model")
        variant = chosen
    options = {**_taken(family.detect_config, facts or {}), **options}
    try:
        if family.chooses_variant:
            config = family.detect_config(state, path, variant=variant, **options)
        else:
            config = as_preset(family.detect_config(state, path, **options))
    except ConfigError as e:  # shapes that describe no valid model (a zero-width layer, a crafted count)
        raise ConversionError(path, f"its keys and shapes describe no valid {family.title} model: {e}") from None
    if not family.chooses_variant and variant is not None and config.name != variant:
        raise ConversionError(path, f"its keys say it is {config.name}, not the variant {variant} given")
    return with_max_depth(config, max_depth, path)


def with_max_depth(config: DPTConfig, max_depth: float | None, path="<state dict>") -> DPTConfig:
    """`config` with the user's largest depth (metres) for a metric model; None leaves it as it is."""
    if max_depth is None:
        return config
    if not config.is_metric:
        raise ConversionError(path, f"max_depth applies to metric models; {config.name} is relative")
    try:
        return config.replace(max_depth=float(max_depth))
    except (ConfigError, TypeError, ValueError) as e:
        raise ConversionError(path, f"max_depth: {e}") from None


def _taken(detect, facts: Mapping) -> dict:
    """The entries of `facts` that the family's detect_config takes as keywords."""
    parameters = inspect.signature(detect).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(facts)
    return {k: v for k, v in facts.items() if k in parameters}


def as_preset(config: DPTConfig) -> DPTConfig:
    """The preset equal to `config` but for its name, or `config` itself."""
    return next((p for p in config.family.presets if p.replace(name=config.name) == config), config)


def config_from_json(text: str, where: str = "config", *, upgrade_v1: bool = False) -> DPTConfig:
    """The DPTConfig written by `DPTConfig.to_json`; every field is type- and range-checked (ConfigError).

    `upgrade_v1`: the text is of a version-1 converted file, which stored no neck fields: the
    family's `v1_fields` fill them in.
    """
    try:
        d = json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{where} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict) or not isinstance(d.get("encoder"), dict):
        raise ConfigError(f"{where} must be an object with an 'encoder' object")
    d = dict(d)
    encoder = dict(d.pop("encoder"))
    name = encoder.pop("family", None)
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(f"{where}: encoder.family must be one of {', '.join(FAMILIES)}; got {str(name)[:40]!r}")
    family = FAMILIES[name]
    if upgrade_v1:
        d.update(family.v1_fields)
    d["encoder"] = from_dict(family.config_class, encoder, f"{where}: encoder")
    return from_dict(DPTConfig, d, where)
