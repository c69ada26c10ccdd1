"""The contract every encoder family keeps, checked for each registered family (a new one is checked too).

The same shape for every family: its configs round-trip through the converted-file JSON, its key
table feeds every parameter exactly once, its Hugging Face layout renames every original key
both ways and its config.json is read back as what was written, and its names (releases,
aliases, Hub repos) are presets of its own. Stage-by-stage exactness against the original code
lives in one file per family's reference fixtures (test_reference.py for MiDaS, test_dinov2.py
for Depth Anything): a new family adds such a file, made from its own fixtures.
"""

from __future__ import annotations

import functools
import json

import pytest

from dpt_jax import hub, registry
from dpt_jax.convert import hf
from dpt_jax.dpt import param_shapes

FAMILIES = sorted(registry.FAMILIES)


def configs_of(family):
    """The family's minis and its smallest preset (parameter tables are traced, not allocated); the minis stand
    for every layout of the family (a family with several Hugging Face layouts has a mini for each)."""
    return list(family.minis) + [_smallest(family.name)]


@functools.lru_cache(maxsize=None)
def _smallest(name: str):
    """A family's smallest preset by its key table (tracing every preset's parameters would cost seconds each)."""
    family = registry.FAMILIES[name]
    return min(family.presets, key=lambda c: len(family.key_table(c)))


@pytest.mark.parametrize("name", FAMILIES)
def test_configs_round_trip_through_the_converted_file_format(name):
    family = registry.FAMILIES[name]
    for config in family.presets + family.minis:
        assert config.family is family
        assert registry.config_from_json(config.to_json()) == config
        assert registry.canonical_name(config.name) == config.name


@pytest.mark.parametrize("name", FAMILIES)
def test_the_key_table_feeds_every_parameter_exactly_once(name):
    family = registry.FAMILIES[name]
    for config in configs_of(family):
        table = family.key_table(config)
        targets = [e.target for e in table]
        sources = [e.source for e in table]
        assert len(set(targets)) == len(targets) and len(set(sources)) == len(sources)
        assert set(targets) == set(param_shapes(config)), config.name


@pytest.mark.parametrize("name", [n for n in FAMILIES if registry.FAMILIES[n].hf is not None])
def test_the_hugging_face_layout_renames_both_ways_and_reads_its_own_config(name, tmp_path):
    family = registry.FAMILIES[name]
    for config in configs_of(family):
        if family.hf_layout_of(config) is None:
            with pytest.raises(ValueError, match="transformers has no layout"):
                hf.write(tmp_path / "refused", config, {})
            continue
        renamer = hf.Renamer.of(hf.layout_of(config))  # the family's layout that writes this model
        for entry in family.key_table(config):
            names = renamer.to_hf(entry.source)
            assert names, entry.source
            assert [renamer.from_hf(n) for n in names] == [(entry.source, i if len(names) == 3 else None)
                                                           for i in range(len(names))]
        (tmp_path / "config.json").write_text(json.dumps(hf.hf_config(config)))
        found, model = hf.parse_config(tmp_path / "config.json", registry.FAMILIES.values())
        assert found is family
        assert model.metric == config.is_metric
        if model.hooks is not None:
            assert model.hooks == config.encoder.hooks


@pytest.mark.parametrize("name", FAMILIES)
def test_names_point_at_the_familys_own_presets(name):
    family = registry.FAMILIES[name]
    presets = {p.name for p in family.presets}
    assert {r.name for r in family.releases} <= presets
    assert set(family.hf_repos) <= presets and set(family.aliases.values()) <= presets
    for release in family.releases:
        assert (release.url is None) != (release.repo is None) and release.licence and release.approx_bytes > 0
        assert hub.lookup(release.name) is not None
    for alias, target in family.aliases.items():
        assert registry.get_config(alias) is registry.PRESETS[target]
    options = {o.name for o in family.options}
    assert options <= set(registry.options())
