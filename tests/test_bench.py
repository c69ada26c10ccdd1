"""Smoke tests of the benchmark harness (benchmarks/) and of `dpt-jax bench` on small configurations.

The FLOP tests check the analytic count against two independent counters: the operations of
the traced program (exact agreement expected) and XLA's cost analysis of the compiled
executable (a few % more, because XLA also counts elementwise ops). The PyTorch-side tests
need torch and transformers (the `bench` extra) and are skipped, with the reason, without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

import dpt_jax  # noqa: F401  (first: the dpt_jax under test, installed or the checkout's, wins over the path below)
from dpt_jax.beit import BeitConfig
from dpt_jax.config import DPTConfig
from dpt_jax.dpt import param_shapes
from dpt_jax.registry import MINI_CONFIGS
from dpt_jax.timing import parse_model_spec, resolve_config
from helpers import FIXTURES

# benchmarks/ is not installed: it is imported from the repository this test file belongs to.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks import bench, convert_memory, flops, measure, report, rows, startup, torch_side  # noqa: E402

MINIS = ["mini_beit", "mini_swin2"]
# XLA counts elementwise work on top of the matmuls: +1.7 % (BEiT) and +4.1 % (SwinV2) for these minis.
XLA_EXCESS_MAX = 0.06

# The real wiring at the smallest useful size, for the harness runs (compiles in about a second).
TINY = DPTConfig(name="tiny_beit", encoder=BeitConfig(embed_dim=32, depth=4, num_heads=2, mlp_hidden=64,
                                                      hooks=(0, 1, 2, 3), native_grid=(4, 4)),
                 reassembly_features=(8, 8, 16, 16), reassemble_factors=(4, 2, 1, 0.5), readout="project",
                 native_size=(64, 64), keep_aspect_ratio=True, fusion_features=16)

TORCH_OK, TORCH_WHY = torch_side.torch_status()
needs_torch = pytest.mark.skipif(not TORCH_OK, reason=f"PyTorch side not checked: {TORCH_WHY}")


@pytest.fixture(scope="module", params=MINIS)
def traced(request):
    config = MINI_CONFIGS[request.param]
    h, w = config.native_size
    return config, (h, w), flops.trace_forward(config, h, w, 1)


def test_flop_count_equals_traced_program(traced):
    config, (h, w), tr = traced
    analytic = flops.flop_count(config, h, w, 1)
    counted = flops.traced_flops(config, h, w, 1, traced=tr)
    assert counted["dot_general"] > 0 and counted["conv_general_dilated"] > 0
    assert counted["total"] == analytic.total
    assert sum(analytic.stages.values()) == analytic.total
    assert set(analytic.stages) == {"encoder", "reassemble", "fusion", "head"}


def test_flop_count_close_to_xla_cost_analysis(traced):
    config, (h, w), tr = traced
    analytic = flops.flop_count(config, h, w, 1).total
    xla = flops.xla_flops(config, h, w, 1, compiled=True, traced=tr)  # jit(f).lower(...).compile().cost_analysis()
    # Systematic: XLA's count is the analytic one plus one FLOP per element of every elementwise op.
    assert 0.0 <= xla / analytic - 1.0 < XLA_EXCESS_MAX, (xla, analytic)


@pytest.mark.parametrize("name,size", [("mini_beit", (112, 80)), ("mini_swin2", (160, 96))])
def test_flop_count_off_native_sizes(name, size):
    # Odd BEiT grid (stride-2 conv on 7x5, padding taps) and SwinV2 windows padded at 160x96.
    config = MINI_CONFIGS[name]
    assert flops.traced_flops(config, *size, 2)["total"] == flops.flop_count(config, *size, 2).total
    dense = flops.flop_count(config, *size, 2, padding_taps=True).total
    assert dense > flops.flop_count(config, *size, 2).total


def test_flop_count_scales_with_batch():
    c = resolve_config("beit_base_384")
    assert flops.flop_count(c, 384, 384, 4).total == 4 * flops.flop_count(c, 384, 384, 1).total


@pytest.fixture(scope="module")
def peaks():
    return {"float32": measure.matmul_peak(256, repeats=2)["gflops"]}


@pytest.fixture(scope="module")
def row(peaks):
    spec = rows.RowSpec(model="tiny_beit", config=TINY, height=64, width=96, batch=2, repeats=1, warmup=0, torch=True)
    return rows.run_row(spec, isolate=False, peaks=peaks)


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
    assert row["torch_threads"] == measure.cpu_cores()
    assert row["torch_counted_flops"] == row["flops_padding_taps"]


@needs_torch
@pytest.mark.parametrize("name", ["dpt_swin2_tiny_256", "dpt_beit_base_384"])
def test_transformers_model_does_the_same_work(name):
    # Built on the meta device: instant even at full size.
    config = resolve_config(name)
    h, w = config.native_size
    expected = flops.flop_count(config, h, w, 2, padding_taps=True, original_order=True).total
    assert torch_side.torch_flop_count(config, h, w, 2) == expected


@needs_torch
def test_transformers_parameter_count_matches():
    model, report = torch_side.hf_model(MINI_CONFIGS["mini_swin2"])
    assert report["params_match"] and report["torch_params_total"] > report["torch_params_used"]
    assert report["torch_attn"] == "eager"


def test_results_files(row, tmp_path):
    info = measure.machine_info()
    md, js = report.write_results("rows", [row], info, tmp_path, append=True)
    report.write_results("rows", [row], info, tmp_path, append=True)
    assert md.parent == tmp_path and md.name.startswith(info["machine"]) and md.suffix == ".md"
    text = md.read_text()
    assert text.count("## rows:") == 2 and "| tiny_beit | 64x96 | 2 | float32 |" in text
    data = json.loads(js.read_text())
    assert len(data["runs"]) == 2
    saved = data["runs"][0]["results"][0]
    assert saved["jax_latency_median_s"] == row["jax_latency_median_s"] and data["runs"][0]["info"]["cpu"]


def test_table_has_a_line_per_row(row):
    table = report.format_rows([row, row])
    lines = [ln for ln in table.splitlines() if ln.startswith("| tiny_beit")]
    assert len(lines) == 2
    assert len(lines[0].split("|")) == len(table.splitlines()[0].split("|"))


def test_convert_memory_on_fixture_manifest():
    r = convert_memory.convert_memory(FIXTURES / "mini_beit.json")
    assert r["model"] == "custom_beit" and r["param_count"] == 216_297
    assert r["param_bytes"] == 4 * r["param_count"]
    assert r["peak_rss_mb"] >= r["rss_after_import_mb"] > 0
    assert r["ru_maxrss_mb"] >= r["peak_rss_mb"] - 1  # ru_maxrss may include the parent's RSS (see convert_memory)
    assert r["peak_over_param_bytes"] > 1


def test_synthesized_checkpoint_has_the_manifest_layout(tmp_path):
    from dpt_jax.convert.files import read_state_dict

    manifest = json.loads((FIXTURES / "mini_swin2.json").read_text())
    path = tmp_path / "synthetic.safetensors"
    convert_memory.synthesize_checkpoint(manifest, path)
    state = read_state_dict(path)
    assert list(state) == [e["key"] for e in manifest["state_dict"]]
    assert all(tuple(state[e["key"]].shape) == tuple(e["shape"]) for e in manifest["state_dict"])


def test_startup_cold_then_warm_cache():
    r = startup.startup_times(TINY, 64, 64)
    assert len(r["runs"]) == 2 and r["cold_wall_s"] > 0 and r["warm_wall_s"] > 0
    assert r["runs"][0]["cache_entries_after"] > 0  # the first process filled the persistent cache
    assert r["runs"][1]["trace_lower_s"] > 0


def test_model_specs_and_cli_flops(capsys):
    config, size = parse_model_spec("beit_base_384@384x512")
    assert config.name == "dpt_beit_base_384" and size == (384, 512)
    assert parse_model_spec("dpt_swin2_tiny_256")[1] == (256, 256)
    with pytest.raises(ValueError):
        parse_model_spec("swin2_tiny_256@250")
    assert bench.main(["flops", "mini_beit", "--xla", "none"]) == 0
    assert "traced dot_general + conv" in capsys.readouterr().out
    assert bench.main(["run", "no_such_model", "--no-write"]) == 1


def test_row_spec_round_trip():
    spec = rows.RowSpec(model="m", config=MINI_CONFIGS["mini_swin2"], height=128, width=96, batch=3)
    assert rows.RowSpec.from_json(spec.to_json()) == spec
    assert dataclasses.asdict(rows.RowSpec.from_json(spec.to_json()))["config"] == dataclasses.asdict(spec)["config"]


# ---------------------------------------------------------------------------------------------
# Where results go, what the FLOP count reads, and the layering of the package


def test_results_never_change_existing_files_unless_asked(row, tmp_path):
    info = measure.machine_info()
    md, js = report.write_results("rows", [row], info, tmp_path, date="2000-01-01")
    before = md.read_text(), js.read_text()
    md2, js2 = report.write_results("rows", [row], info, tmp_path, date="2000-01-01")
    assert (md.read_text(), js.read_text()) == before
    assert md2.name == f"{info['machine']}-2000-01-01-2.md" and js2.stem == md2.stem
    assert len(json.loads(js2.read_text())["runs"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([md.name, js.name, md2.name, js2.name])


def test_default_results_folder_is_the_repositorys_not_the_current_one():
    root = Path(__file__).resolve().parent.parent
    assert bench.RESULTS_DIR == root / "benchmarks" / "results"
    assert Path(bench.build_parser().parse_args(["run", "mini_beit"]).out) == bench.RESULTS_DIR
    assert convert_memory.DEFAULT_MANIFEST_DIR == root / "tests" / "fixtures" / "manifests"


def test_manifest_folder_is_an_argument(tmp_path):
    assert convert_memory.resolve_manifest("beit_base_384", FIXTURES / "manifests").name == "dpt_beit_base_384.json"
    with pytest.raises(ValueError, match="no manifest 'beit_base_384'"):
        convert_memory.resolve_manifest("beit_base_384", tmp_path)


# The neck and head as data: variants no released model has, counted from the config's fields.
NECK_VARIANTS = {
    "readout ignore, Depth Anything head": MINI_CONFIGS["mini_beit"].replace(readout="ignore", head="depth_anything"),
    "other reassemble factors": MINI_CONFIGS["mini_beit"].replace(reassemble_factors=(2, 1, 1, 0.5)),
    "SwinV2, Depth Anything head": MINI_CONFIGS["mini_swin2"].replace(head="depth_anything", head_features=16),
}


@pytest.mark.parametrize("variant", list(NECK_VARIANTS))
def test_flop_count_reads_the_neck_fields(variant):
    config = NECK_VARIANTS[variant]
    h, w = 96, 64 if config.input_multiple == 16 else 96
    assert flops.traced_flops(config, h, w, 1)["total"] == flops.flop_count(config, h, w, 1).total


def test_bfloat16_trace_is_the_program_depth_model_runs():
    from flax import traverse_util

    from dpt_jax.dpt import cast_params
    from dpt_jax.timing import random_params

    config = MINI_CONFIGS["mini_swin2"]
    abstract = traverse_util.flatten_dict(flops.abstract_params(config, "bfloat16"))
    real = traverse_util.flatten_dict(cast_params(random_params(config)))
    assert {k: (tuple(v.shape), v.dtype) for k, v in abstract.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in real.items()}
    assert {str(v.dtype) for v in abstract.values()} == {"float32"}  # the program casts to bfloat16 itself
    h, w = config.native_size
    assert flops.traced_flops(config, h, w, 1, "bfloat16")["total"] == flops.flop_count(config, h, w, 1).total


def test_every_family_has_a_transformers_counterpart():
    from dpt_jax.registry import FAMILIES

    assert all(torch_side.hf_counterpart(f.presets[0]) is f.hf is not None for f in FAMILIES.values())


def test_dpt_jax_never_imports_the_harness():
    import ast

    package = Path(dpt_jax.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "benchmarks" or n == "dpt_jax.bench"]
    assert not offenders
    assert not (package / "bench.py").exists()


def test_cli_bench_help_and_one_run(capsys):
    from dpt_jax.cli import main

    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as e:
            main(["bench", flag])
        assert e.value.code == 0
        assert "--repeats" in capsys.readouterr().out
    assert main(["bench", "mini_beit@64x64", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "jax " in out
    line = next(ln for ln in out.splitlines() if ln.startswith("mini_beit 64x64 batch 1 float32"))
    assert "compile" in line and "median" in line and "images/s" in line
    assert main(["bench", "no_such_model", "--repeats", "1"]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
