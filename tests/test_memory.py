"""What a config, a size or a batch makes the program allocate is checked against a stated budget before tracing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import dpt_jax
from dpt_jax import cli, export, memory, pipeline
from dpt_jax import model as model_module
from dpt_jax.registry import MINI_CONFIGS
from helpers import FIXTURES

MINI = str(FIXTURES / "mini_beit.safetensors")


@pytest.fixture
def no_trace(monkeypatch):
    """Fail the test if a model forward is traced."""
    def refuse(*a, **k):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(model_module, "forward", refuse)
    monkeypatch.setattr(export, "forward", refuse)


def test_the_bound_counts_the_head_and_the_family_terms(monkeypatch):
    config = MINI_CONFIGS["mini_da2"]
    head = 4 * 2 * 140 * 140 * (config.fusion_features // 2 + config.head_features)
    assert memory.activation_bytes(config, 2, (140, 140)) == max(head, config.family.encoder_peak_bytes(
        config.encoder, 140, 140, 2))
    assert memory.activation_bytes(config, 4, (140, 140)) == 2 * memory.activation_bytes(config, 2, (140, 140))
    beit = MINI_CONFIGS["mini_beit"]
    g = 1024 // 16  # BEiT's bias is cut from a (heads, w, (2h-1) w) table, whatever the batch
    assert memory.activation_bytes(beit, 1, (1024, 1024)) >= 4 * beit.encoder.num_heads * g * (2 * g - 1) * g
    for text, value in [("64M", 64 << 20), ("1.5G", 3 << 29), ("2gib", 2 << 30), ("123456", 123456)]:
        monkeypatch.setenv(memory.ENV, text)
        assert memory.budget() == (value, memory.ENV)
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(ValueError, match="DPT_JAX_MEMORY_BUDGET must be a number of bytes"):
        memory.budget()
    monkeypatch.delenv(memory.ENV)
    assert memory.budget()[0] > 2**28 and "DPT_JAX_MEMORY_BUDGET sets another" in memory.budget()[1]


def test_a_converted_native_size_over_the_budget_is_refused_naming_file_and_field(tmp_path, monkeypatch, capsys,
                                                                                   no_trace):
    model = dpt_jax.load(MINI)
    big = tmp_path / "big.safetensors"
    dpt_jax.DepthModel(model.config.replace(native_size=(1024, 1024)), model.params).save(big)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "p.png")
    monkeypatch.setenv(memory.ENV, "64M")
    assert cli.main(["predict", str(tmp_path / "p.png"), "-m", str(big), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "p.png: one picture at 768x1024 needs at least" in err and "over the budget of 67.1 MB" in err
    assert f"the model's native_size 1024x1024 ({big}) sets it" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_absurd_sizes_and_batches_are_refused_before_tracing(tmp_path, capsys, no_trace):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "p.png")
    for option in (["--size", "60000"], ["--height", "60000"]):  # the default budget: this machine's memory
        assert cli.main(["predict", str(tmp_path / "p.png"), "-m", MINI, "-o", str(tmp_path / "out"), *option]) == 1
        err = capsys.readouterr().err
        assert "p.png: one picture at " in err and "--size/--height" in err
        assert re.search(r"needs at least \d+(\.\d+)? [GT]B of memory", err)  # hundreds of GB and more
    for args in (["--size", "65536x65536"], ["--size", "128x128", "--batch", "10000000"]):
        assert cli.main(["export", MINI, "-o", str(tmp_path / "m.stablehlo"), *args]) == 1
        assert "the exported program: " in capsys.readouterr().err
    assert cli.main(["bench", "mini_beit", "--batch", "100000000"]) == 1
    assert "mini_beit: a batch of 100000000 at 128x128 needs at least" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_batches_shrink_to_fit_the_budget(tmp_path, monkeypatch, capsys):
    model = dpt_jax.load(MINI)
    pictures = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(3)]
    one = memory.activation_bytes(model.config, 1, (96, 128))
    monkeypatch.setenv(memory.ENV, str(one + one // 2))  # room for one picture a call, not two
    seen = []
    results = pipeline.run(model, pictures, batch_size=4, on_status=seen.append)
    assert all(r.error is None for r in results)
    assert any(line.startswith("batch size 1: ") for line in seen) and "(batch 1)" in " ".join(seen)
    assert not any("(batch 4)" in line or "(batch 2)" in line for line in seen)
