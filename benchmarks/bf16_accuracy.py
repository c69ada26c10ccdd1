#!/usr/bin/env python
"""bfloat16 accuracy: dpt-jax bfloat16 against PyTorch's own autocast bfloat16, both against PyTorch float32.

    python benchmarks/bf16_accuracy.py                                  # swin2_tiny_256, beit_base_384, da2_vits
    python benchmarks/bf16_accuracy.py --models da2_vitb --images PHOTOS.npz --out DIR

The criterion: on full-size models and real photos, dpt-jax bfloat16's error against
the original float32 is no larger than the original's own error under
`torch.autocast("cpu", dtype=torch.bfloat16)` (mean and max, same inputs).

Each model is a full-size preset with **random weights**: `DPT(config).init` with a fixed seed
(Flax's default initialisers, nothing rescaled). `DepthModel.save_pretrained` writes them as a
Hugging Face transformers folder, which transformers loads as the PyTorch side
(`AutoModelForDepthEstimation`); its float32 output is the reference. The dpt-jax float32 row
shows that both sides compute the same function. Every photo is preprocessed once, by dpt-jax's
own steps (`preprocess.network_size` / `to_network`), and the same tensor goes to every row.

Metrics per photo, over the network-size depth map: mean and max of |x - ref| / (max ref - min ref).
Results go to <out>/bf16-accuracy-<machine>-<date>[-N].md/.json (report.py's conventions:
existing files are never changed). Needs the `bench` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root, not this folder, on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT / "tests" / "fixtures" / "depth_anything" / "mini_da2_e2e.npz"
DEFAULT_MODELS = "swin2_tiny_256,beit_base_384,da2_vits"
PHOTO_SUFFIX = "__raw_bgr_uint8"
ROWS = ("dpt-jax float32", "dpt-jax bfloat16", "torch autocast bfloat16")


def read_photos(path) -> dict[str, np.ndarray]:
    """name -> RGB uint8 (h, w, 3): every `<name>__raw_bgr_uint8` array of an .npz (BGR, as OpenCV reads)."""
    with np.load(path, allow_pickle=False) as data:
        photos = {k[: -len(PHOTO_SUFFIX)]: data[k][..., ::-1].copy() for k in data.files if k.endswith(PHOTO_SUFFIX)}
    if not photos:
        raise ValueError(f"{path}: holds no '*{PHOTO_SUFFIX}' arrays")
    for name, a in photos.items():
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"{path}: {name}{PHOTO_SUFFIX} is {a.dtype} {a.shape}, expected uint8 (h, w, 3)")
    return photos


def errors(x: np.ndarray, ref: np.ndarray) -> dict:
    """Mean and max |x - ref| over ref's range (per image)."""
    span = float(ref.max() - ref.min())
    d = np.abs(x.astype(np.float64) - ref.astype(np.float64)) / span
    return {"mean": float(d.mean()), "max": float(d.max()), "ref_range": span,
            "ref_zero_fraction": float(np.mean(ref == 0))}  # pixels the final ReLU clips


def init_params(config, seed: int):
    """DPT(config).init at the native size with PRNGKey(seed): Flax's default initialisers, float32."""
    import jax
    import jax.numpy as jnp

    from dpt_jax.dpt import DPT

    h, w = config.native_size
    variables = jax.jit(DPT(config).init)(jax.random.PRNGKey(seed), jnp.zeros((1, h, w, 3), jnp.float32))
    return jax.tree_util.tree_map(np.asarray, variables["params"])


def preact_function(config, dtype: str):
    """jit (params, images) -> (depth, head pre-activation) as `forward` runs in `dtype` (same context)."""
    import jax

    from dpt_jax.dpt import DPT
    from dpt_jax.layers import COMPUTE_DTYPES

    def run(params, images):
        with jax.default_matmul_precision("highest"):
            depth, state = DPT(config, COMPUTE_DTYPES[dtype]).apply({"params": params}, images,
                                                                    mutable=["intermediates"])
        return depth, state["intermediates"]["head"]["head_preact"][0][..., 0]  # (B, H, W), (B, H, W)

    return jax.jit(run)


def torch_preact_hook(hf, store: dict):
    """Record the input of the head's final activation (ReLU) of a transformers depth model in store["preact"]."""
    import torch

    last = [m for m in hf.head.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Sigmoid))][-1]
    def keep(_module, args):
        store["preact"] = args[0].detach().float().clone()

    return last.register_forward_pre_hook(keep)


def run_model(name: str, photos: dict, *, seed: int, keep_aspect_ratio, threads: int) -> list[dict]:
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForDepthEstimation

    from dpt_jax.model import DepthModel
    from dpt_jax.preprocess import network_size, to_network
    from dpt_jax.timing import resolve_config

    config = resolve_config(name)
    t0 = time.perf_counter()
    params = init_params(config, seed)
    models = {dt: DepthModel(config, params, dtype=dt) for dt in ("float32", "bfloat16")}
    with_preact = {dt: preact_function(config, dt) for dt in models}
    with tempfile.TemporaryDirectory() as tmp:
        folder = models["float32"].save_pretrained(Path(tmp) / name)
        hf = AutoModelForDepthEstimation.from_pretrained(str(folder)).eval()
    torch.set_num_threads(threads)
    store = {}
    torch_preact_hook(hf, store)
    print(f"{name}: init + export + transformers load {time.perf_counter() - t0:.1f} s ({type(hf).__name__})",
          file=sys.stderr, flush=True)

    rows = []
    for photo, rgb in photos.items():
        size = network_size(config, rgb.shape[:2], keep_aspect_ratio=keep_aspect_ratio)
        x = np.asarray(to_network(config, jnp.asarray(rgb[None]), size))  # (1, H, W, 3) float32, the one input
        pixel_values = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (1, 3, H, W)
        outs, pre, secs = {}, {}, {}
        t = time.perf_counter()
        with torch.inference_mode():
            ref = hf(pixel_values=pixel_values).predicted_depth.float().numpy()[0]  # (H, W)
        ref_pre = store.pop("preact").numpy()[0, 0]  # (H, W)
        secs["torch float32"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs["torch autocast bfloat16"] = hf(pixel_values=pixel_values).predicted_depth.float().numpy()[0]
        pre["torch autocast bfloat16"] = store.pop("preact").numpy()[0, 0]
        secs["torch autocast bfloat16"] = time.perf_counter() - t
        for dt in ("float32", "bfloat16"):
            t = time.perf_counter()
            outs[f"dpt-jax {dt}"] = np.asarray(models[dt].apply(x), np.float32)[0]
            secs[f"dpt-jax {dt}"] = time.perf_counter() - t  # includes compiling at a new size
            _, preact = with_preact[dt](models[dt].params, x)
            pre[f"dpt-jax {dt}"] = np.asarray(preact, np.float32)[0]
        for row in ROWS:
            if outs[row].shape != ref.shape:
                raise RuntimeError(f"{name} {photo}: {row} gave {outs[row].shape}, transformers {ref.shape}")
            e = errors(outs[row], ref)
            ep = errors(pre[row], ref_pre)
            rows.append({"model": config.name, "photo": photo, "picture_hw": list(rgb.shape[:2]),
                         "input_hw": list(size), "row": row, "mean": e["mean"], "max": e["max"],
                         "ref_range": e["ref_range"], "ref_zero_fraction": e["ref_zero_fraction"],
                         "preact_mean": ep["mean"], "preact_max": ep["max"], "preact_ref_range": ep["ref_range"],
                         "seconds": secs[row], "seed": seed,
                         "torch_float32_seconds": secs["torch float32"]})
            print(f"  {photo} {size[0]}x{size[1]} {row:24s} mean {e['mean']:.3e} max {e['max']:.3e}  "
                  f"pre-activation mean {ep['mean']:.3e} max {ep['max']:.3e}",
                  file=sys.stderr, flush=True)
    return rows


def verdicts(rows: list[dict]) -> list[dict]:
    """Per model and photo: whether dpt-jax bfloat16's mean and max are <= torch autocast's."""
    out = []
    keys = dict.fromkeys((r["model"], r["photo"]) for r in rows)  # in run order
    for model, photo in keys:
        by = {r["row"]: r for r in rows if r["model"] == model and r["photo"] == photo}
        j, t = by["dpt-jax bfloat16"], by["torch autocast bfloat16"]
        out.append({"model": model, "photo": photo, "mean_ok": j["mean"] <= t["mean"], "max_ok": j["max"] <= t["max"],
                    "mean_ratio": j["mean"] / t["mean"], "max_ratio": j["max"] / t["max"],
                    "preact_mean_ratio": j["preact_mean"] / t["preact_mean"],
                    "preact_max_ratio": j["preact_max"] / t["preact_max"]})
    return out


def format_table(rows: list[dict], checks: list[dict]) -> str:
    lines = ["Error against transformers float32 on the same input, over the reference's range "
             "(|x - ref| / (max ref - min ref)), per photo; 'reference = 0': the share of pixels the final "
             "ReLU sets to 0 in the reference (random weights); 'pre-act.': the same for the head's output "
             "before that ReLU (every pixel counts):", "",
             "| model | photo | input HxW | reference = 0 | row | mean | max | pre-act. mean | pre-act. max |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['photo']} | {r['input_hw'][0]}x{r['input_hw'][1]} | "
                     f"{r['ref_zero_fraction']:.0%} | {r['row']} | "
                     f"{r['mean']:.2e} | {r['max']:.2e} | {r['preact_mean']:.2e} | {r['preact_max']:.2e} |")
    lines += ["", "Criterion: dpt-jax bfloat16 <= torch autocast bfloat16 (ratio = dpt-jax / torch):", "",
              "| model | photo | mean ratio | max ratio | met | pre-act. mean ratio | pre-act. max ratio |",
              "|---|---|---:|---:|---|---:|---:|"]
    for c in checks:
        met = "yes" if c["mean_ok"] and c["max_ok"] else "NO (" + ", ".join(
            k for k, ok in (("mean", c["mean_ok"]), ("max", c["max_ok"])) if not ok) + ")"
        lines.append(f"| {c['model']} | {c['photo']} | {c['mean_ratio']:.2f} | {c['max_ratio']:.2f} | {met} | "
                     f"{c['preact_mean_ratio']:.2f} | {c['preact_max_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from benchmarks import bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated presets (default {DEFAULT_MODELS})")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), metavar="NPZ",
                   help="an .npz of photos as '<name>__raw_bgr_uint8' arrays (default: the Depth Anything e2e "
                        "fixture's two)")
    p.add_argument("--seed", type=int, default=0, help="PRNGKey of DPT(config).init (default 0)")
    p.add_argument("--keep-aspect-ratio", choices=("auto", "config", "yes", "no"), default="auto",
                   help="resize rule for the network input: 'no' gives the native square; 'auto' (default) is the "
                        "config's, except models sized to at least their native size (Depth Anything): the native "
                        "518x518 square, where transformers uses the position embeddings as they are (elsewhere it "
                        "interpolates them differently from the original)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    p.add_argument("--out", default=str(bench.RESULTS_DIR), metavar="DIR",
                   help="results folder (default benchmarks/results)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    import datetime

    import jax

    from benchmarks.measure import machine_info
    from benchmarks.report import result_paths, write_results
    from dpt_jax.timing import cpu_cores, resolve_config

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 means float32 everywhere
    photos = read_photos(args.images)
    threads = args.threads or cpu_cores()
    info = machine_info()
    feats = info["cpu_features"]
    bf16_units = [k for k in ("avx512_bf16", "amx_bf16") if feats[k]]
    extra = {
        "what": "dpt-jax bfloat16 vs torch.autocast('cpu', bfloat16), both against transformers float32",
        "weights": f"random: DPT(config).init with PRNGKey({args.seed}) (Flax default initialisers, nothing rescaled), "
                   "written by DepthModel.save_pretrained and loaded by transformers AutoModelForDepthEstimation",
        "photos": f"{', '.join(photos)} (real photos, {Path(args.images).name}), preprocessed by dpt-jax "
                  f"(keep_aspect_ratio: {args.keep_aspect_ratio})",
        "lscpu": f"{feats['lscpu_model']}; bfloat16 matrix instructions: "
                 f"{', '.join(bf16_units) if bf16_units else 'none (no avx512_bf16, no amx_bf16)'}"
                 f"; avx512f {'yes' if feats['avx512f'] else 'no'}, avx2 {'yes' if feats['avx2'] else 'no'}",
        "torch threads": threads,
    }
    stem = result_paths(args.out, f"bf16-accuracy-{info['machine']}-{datetime.date.today().isoformat()}", False)[0].stem
    ok = True
    for name in [m for m in args.models.split(",") if m]:  # one section per model, written as soon as it is done
        keep = {"config": None, "yes": True, "no": False}.get(args.keep_aspect_ratio)
        if args.keep_aspect_ratio == "auto":
            # models that resize to at least their native size (Depth Anything) run at their native square
            keep = False if resolve_config(name).resize_rule == "lower_bound" else None
        rows = run_model(name, photos, seed=args.seed, keep_aspect_ratio=keep, threads=threads)
        checks = verdicts(rows)
        ok &= all(c["mean_ok"] and c["max_ok"] for c in checks)
        table = format_table(rows, checks)
        print(table)
        if not args.no_write:
            md, js = write_results("bf16-accuracy", rows, info, args.out, table=table,
                                   extra=extra, stem=stem, append=True)
            print(f"wrote {md} and {js}", file=sys.stderr)
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
