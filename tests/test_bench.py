"""Smoke tests of the benchmark harness (dpt_jax.bench) on small configurations.

The FLOP tests check the analytic count against two independent counters: the operations of
the traced program (exact agreement expected) and XLA's cost analysis of the compiled
executable (a few % more, because XLA also counts elementwise ops). The PyTorch-side tests
need torch and transformers (the `bench` extra) and are skipped, with the reason, without them.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from dpt_jax import bench
from dpt_jax.beit import BeitConfig
from dpt_jax.config import DPTConfig
from dpt_jax.dpt import param_shapes
from helpers import FIXTURES

MINIS = ["mini_beit", "mini_swin2"]
# XLA counts elementwise work on top of the matmuls: +1.7 % (BEiT) and +4.1 % (SwinV2) for these minis.
XLA_EXCESS_MAX = 0.06

# The real wiring at the smallest useful size, for the harness runs (compiles in about a second).
TINY = DPTConfig(name="tiny_beit", encoder=BeitConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden=64,
                                                      hooks=(0, 1, 2, 3), native_grid=(4, 4)),
                 reassembly_features=(8, 8, 16, 16), reassemble_factors=(4, 2, 1, 0.5), readout="project",
                 native_size=(64, 64), keep_aspect_ratio=True, fusion_features=16)

TORCH_OK, TORCH_WHY = bench.torch_status()
needs_torch = pytest.mark.skipif(not TORCH_OK, reason=f"PyTorch side not checked: {TORCH_WHY}")


@pytest.fixture(scope="module", params=MINIS)
def traced(request):
    config = bench.MINI_CONFIGS[request.param]
    h, w = config.native_size
    return config, (h, w), bench.trace_forward(config, h, w, 1)


def test_flop_count_equals_traced_program(traced):
    config, (h, w), tr = traced
    analytic = bench.flop_count(config, h, w, 1)
    counted = bench.traced_flops(config, h, w, 1, traced=tr)
    assert counted["dot_general"] > 0 and counted["conv_general_dilated"] > 0
    assert counted["total"] == analytic.total
    assert sum(analytic.stages.values()) == analytic.total
    assert set(analytic.stages) == {"encoder", "reassemble", "fusion", "head"}


def test_flop_count_close_to_xla_cost_analysis(traced):
    config, (h, w), tr = traced
    analytic = bench.flop_count(config, h, w, 1).total
    xla = bench.xla_flops(config, h, w, 1, compiled=True, traced=tr)  # jit(f).lower(...).compile().cost_analysis()
    # Systematic: XLA's count is the analytic one plus one FLOP per element of every elementwise op.
    assert 0.0 <= xla / analytic - 1.0 < XLA_EXCESS_MAX, (xla, analytic)


@pytest.mark.parametrize("name,size", [("mini_beit", (112, 80)), ("mini_swin2", (160, 96))])
def test_flop_count_off_native_sizes(name, size):
    # Odd BEiT grid (stride-2 conv on 7x5, padding taps) and SwinV2 windows padded at 160x96.
    config = bench.MINI_CONFIGS[name]
    assert bench.traced_flops(config, *size, 2)["total"] == bench.flop_count(config, *size, 2).total
    dense = bench.flop_count(config, *size, 2, padding_taps=True).total
    assert dense > bench.flop_count(config, *size, 2).total


def test_flop_count_scales_with_batch():
    c = bench.resolve_config("beit_base_384")
    assert bench.flop_count(c, 384, 384, 4).total == 4 * bench.flop_count(c, 384, 384, 1).total


@pytest.fixture(scope="module")
def peaks():
    return {"float32": bench.matmul_peak(256, repeats=2)["gflops"]}


@pytest.fixture(scope="module")
def row(peaks):
    spec = bench.RowSpec(model="tiny_beit", config=TINY, height=64, width=96, batch=2, repeats=1, warmup=0, torch=True)
    return bench.run_row(spec, isolate=False, peaks=peaks)


JAX_FIELDS = ["date", "machine", "cpu", "cores", "jax_version", "model", "height", "width", "batch", "dtype",
              "flops", "gflop_per_image", "jax_params", "jax_compile_s", "jax_latency_median_s", "jax_latency_min_s",
              "jax_throughput_ips", "jax_gflops", "jax_pct_of_peak", "jax_pct_of_fp32_peak", "jax_peak_rss_mb",
              "peak_gflops", "jax_xla_flops_lowered"]


def test_row_jax_fields(row):
    missing = [k for k in JAX_FIELDS if row.get(k) is None]
    assert not missing, missing
    assert row["jax_compile_s"] > 0 and row["jax_latency_min_s"] > 0
    assert row["jax_latency_min_s"] <= row["jax_latency_median_s"]
    assert row["jax_output_finite"] and row["jax_output_shape"] == [2, 64, 96]
    assert row["jax_throughput_ips"] == pytest.approx(2 / row["jax_latency_median_s"])
    assert row["jax_gflops"] == pytest.approx(row["flops"] / row["jax_latency_median_s"] / 1e9)
    assert row["jax_pct_of_peak"] == pytest.approx(100 * row["jax_gflops"] / row["peak_gflops"])
    assert row["jax_peak_rss_mb"] > 0
    assert row["jax_params"] == sum(math.prod(s) for s in param_shapes(TINY).values())
    assert row["xla_flops_lowered_vs_analytic"] > 0  # XLA adds the elementwise ops (~10 % at this toy width)


def test_row_torch_fields(row):
    if not TORCH_OK:
        assert TORCH_WHY in row["torch_skipped"]  # the reason is recorded in the row and the table
        pytest.skip(f"PyTorch side not checked: {TORCH_WHY}")
    assert row["params_match"], (row["params_ours"], row["torch_params_used"], row["torch_params_total"])
    assert row["torch_latency_median_s"] > 0 and row["torch_first_call_s"] > 0
    assert row["torch_output_finite"] and row["torch_output_shape"] == [2, 64, 96]
    assert row["jax_over_torch"] == pytest.approx(row["jax_latency_median_s"] / row["torch_latency_median_s"])
    assert row["torch_threads"] == bench.jax_cores()
    assert row["torch_counted_flops"] == row["flops_padding_taps"]


@needs_torch
@pytest.mark.parametrize("name", ["dpt_swin2_tiny_256", "dpt_beit_base_384"])
def test_transformers_model_does_the_same_work(name):
    # Built on the meta device: instant even at full size.
    config = bench.resolve_config(name)
    h, w = config.native_size
    expected = bench.flop_count(config, h, w, 2, padding_taps=True, original_order=True).total
    assert bench.torch_flop_count(config, h, w, 2) == expected


@needs_torch
def test_transformers_parameter_count_matches():
    model, report = bench.hf_dpt_model(bench.MINI_CONFIGS["mini_swin2"])
    assert report["params_match"] and report["torch_params_total"] > report["torch_params_used"]
    assert report["torch_attn"] == "eager"


def test_results_files(row, tmp_path):
    info = bench.machine_info()
    md, js = bench.write_results("rows", [row], info, tmp_path)
    bench.write_results("rows", [row], info, tmp_path)
    assert md.parent == tmp_path and md.name.startswith(info["machine"]) and md.suffix == ".md"
    text = md.read_text()
    assert text.count("## rows:") == 2 and "| tiny_beit | 64x96 | 2 | float32 |" in text
    data = json.loads(js.read_text())
    assert len(data["runs"]) == 2
    saved = data["runs"][0]["results"][0]
    assert saved["jax_latency_median_s"] == row["jax_latency_median_s"] and data["runs"][0]["info"]["cpu"]


def test_table_has_a_line_per_row(row):
    table = bench.format_rows([row, row])
    lines = [ln for ln in table.splitlines() if ln.startswith("| tiny_beit")]
    assert len(lines) == 2
    assert len(lines[0].split("|")) == len(table.splitlines()[0].split("|"))


def test_convert_memory_on_fixture_manifest():
    r = bench.convert_memory(FIXTURES / "mini_beit.json")
    assert r["model"] == "custom_beit" and r["param_count"] == 216_297
    assert r["param_bytes"] == 4 * r["param_count"]
    assert r["peak_rss_mb"] >= r["rss_after_import_mb"] > 0
    assert r["ru_maxrss_mb"] >= r["peak_rss_mb"] - 1  # ru_maxrss may include the parent's RSS (see convert_memory)
    assert r["peak_over_param_bytes"] > 1


def test_synthesized_checkpoint_has_the_manifest_layout(tmp_path):
    from dpt_jax.convert.torch_zip import read_state_dict

    manifest = json.loads((FIXTURES / "mini_swin2.json").read_text())
    path = tmp_path / "synthetic.safetensors"
    bench.synthesize_checkpoint(manifest, path)
    state = read_state_dict(path)
    assert list(state) == [e["key"] for e in manifest["state_dict"]]
    assert all(tuple(state[e["key"]].shape) == tuple(e["shape"]) for e in manifest["state_dict"])


def test_startup_cold_then_warm_cache():
    r = bench.startup_times(TINY, 64, 64)
    assert len(r["runs"]) == 2 and r["cold_wall_s"] > 0 and r["warm_wall_s"] > 0
    assert r["runs"][0]["cache_entries_after"] > 0  # the first process filled the persistent cache
    assert r["runs"][1]["trace_lower_s"] > 0


def test_model_specs_and_cli_flops(capsys):
    config, size = bench.parse_model_spec("beit_base_384@384x512")
    assert config.name == "dpt_beit_base_384" and size == (384, 512)
    assert bench.parse_model_spec("dpt_swin2_tiny_256")[1] == (256, 256)
    with pytest.raises(ValueError):
        bench.parse_model_spec("swin2_tiny_256@250")
    assert bench.main(["flops", "mini_beit", "--xla", "none"]) == 0
    assert "traced dot_general + conv" in capsys.readouterr().out
    assert bench.main(["run", "no_such_model", "--no-write"]) == 1


def test_row_spec_round_trip():
    spec = bench.RowSpec(model="m", config=bench.MINI_CONFIGS["mini_swin2"], height=128, width=96, batch=3)
    assert bench.RowSpec.from_json(spec.to_json()) == spec
    assert dataclasses.asdict(bench.RowSpec.from_json(spec.to_json()))["config"] == dataclasses.asdict(spec)["config"]
