"""Every stage of every reference fixture against the original MiDaS, loaded from .pt and from .safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dpt_jax
from helpers import FIXTURES, nchw_to_nhwc, rel_err, run_with_intermediates

# name -> (cases, bound on max|ours - ref| / max|ref| from the reference README, SwinV2 pretrained windows)
REFERENCE = {
    "mini_beit": (["native", "wide", "tall_odd"], 1e-4, None),
    "mini_swin2": (["native"], 2e-3, (0, 0, 0, 0)),
    "mini_swin2_pw": (["native"], 2e-3, (4, 4, 4, 2)),  # windows are not stored in checkpoints: given, as a user would
}
STAGES = [f"hook{i}" for i in range(1, 5)] + [f"reassemble{i}" for i in range(1, 5)] + \
    [f"rn{i}" for i in range(1, 5)] + [f"fusion{i}" for i in range(4, 0, -1)] + ["head_preact", "depth"]
PARAMS = [(name, fmt) for name in REFERENCE for fmt in ("pt", "safetensors")]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{n}.{f}" for n, f in PARAMS])
def run(request):
    name, fmt = request.param
    cases, bound, windows = REFERENCE[name]
    model = dpt_jax.load(FIXTURES / f"{name}.{fmt}", pretrained_window_sizes=windows)
    reference = np.load(FIXTURES / f"{name}.npz")
    outputs = {case: run_with_intermediates(model, nchw_to_nhwc(reference[f"{case}__input"])) for case in cases}
    return name, model, reference, outputs, bound


def test_every_stage_of_every_case_matches_the_original(run):
    name, _, reference, outputs, bound = run
    errors = {}
    for case, out in outputs.items():
        for stage in STAGES:
            ref = reference[f"{case}__{stage}"]
            got = out[stage]
            if name.startswith("mini_swin2") and stage.startswith("hook"):
                got = got.transpose(0, 2, 3, 1).reshape(ref.shape)  # SwinV2 hooks: token rows in the fixture
            errors[f"{case}/{stage}"] = rel_err(got, ref)
    worst = max(errors, key=errors.get)
    print(f"{name}: worst {worst} {errors[worst]:.2e}")
    assert {k: e for k, e in errors.items() if e >= bound} == {}


def test_distance_to_float64_is_that_of_torch_float32(run):
    name, _, reference, outputs, _ = run
    observed = json.loads((FIXTURES / f"{name}.json").read_text())["observed_differences"]
    for case, out in outputs.items():
        torch_error = observed[case]["depth_fp32_vs_fp64"]["max_abs_over_max_ref"]
        ours = rel_err(out["depth"], reference[f"{case}__depth_fp64"])
        print(f"{name}/{case}: ours {ours:.2e}, torch fp32 {torch_error:.2e}")
        assert ours < 5 * torch_error


def test_jitted_apply_gives_the_same_depth(run):
    name, model, reference, outputs, bound = run
    case = next(iter(outputs))
    depth = model.apply(nchw_to_nhwc(reference[f"{case}__input"]))
    assert rel_err(depth, reference[f"{case}__depth"]) < bound
