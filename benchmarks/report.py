"""Tables and result files: markdown for people, JSON with every measured field for programs.

    format_rows / format_startup / format_convert / format_peaks   markdown
    write_results(kind, results, info, outdir)                      <outdir>/<machine>-<date>[-N].md and .json
    result_paths(outdir, stem, append)                              the files a run goes to
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

from dpt_jax.atomic import atomic_write

from .measure import machine_label


def _fmt(v, spec=".3g", missing="–"):
    if v is None:
        return missing
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


ROW_COLUMNS = [
    # (header, key, format)
    ("model", "model", None), ("HxW", None, None), ("batch", "batch", None), ("dtype", "dtype", None),
    ("params (M)", "jax_params", "params"), ("GFLOP/img", "gflop_per_image", ".1f"),
    ("compile s", "jax_compile_s", ".1f"), ("median ms", "jax_latency_median_s", "ms"),
    ("min ms", "jax_latency_min_s", "ms"), ("img/s", "jax_throughput_ips", ".3g"),
    ("GFLOP/s", "jax_gflops", ".1f"), ("% peak", "jax_pct_of_peak", ".0f"),
    ("peak RSS MB", "jax_peak_rss_mb", ".0f"), ("dev MB", "jax_device_peak_mb", ".0f"),
    ("torch dtype", "torch_dtype", None), ("torch median ms", "torch_latency_median_s", "ms"),
    ("torch min ms", "torch_latency_min_s", "ms"), ("torch img/s", "torch_throughput_ips", ".3g"),
    ("torch GFLOP/s", "torch_gflops", ".1f"), ("torch % peak", "torch_pct_of_peak", ".0f"),
    ("torch peak RSS MB", "torch_peak_rss_mb", ".0f"), ("params match", "params_match", None),
    ("jax/torch", "jax_over_torch", ".2f"),
    ("date", "date", "date"), ("machine", "machine", None), ("jax", "jax_version", None),
    ("torch", "torch_version", None),
]


def format_rows(rows: list[dict]) -> str:
    """The markdown table of benchmark rows (one line per row; every column is in benchmarks/README.md)."""
    lines = ["| " + " | ".join(h for h, _, _ in ROW_COLUMNS) + " |",
             "|" + "|".join("---" if f is None else "---:" for _, _, f in ROW_COLUMNS) + "|"]
    for r in rows:
        cells = []
        for _, key, f in ROW_COLUMNS:
            if key is None:
                cells.append(f"{r['height']}x{r['width']}")
                continue
            v = r.get(key)
            if f == "ms":
                cells.append(_fmt(None if v is None else v * 1e3, ".1f"))
            elif f == "params":
                cells.append(_fmt(None if v is None else v / 1e6, ".2f"))
            elif f == "date":
                cells.append(str(v)[:10] if v else "–")
            elif key == "params_match":
                cells.append("–" if v is None else ("yes" if v else f"NO ({r.get('torch_params_used')})"))
            else:
                cells.append(_fmt(v, f or ""))
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({r["torch_skipped"] for r in rows if r.get("torch_skipped")})
    for n in notes:
        lines.append(f"\nPyTorch side skipped: {n}")
    return "\n".join(lines)


def format_startup(results: list[dict]) -> str:
    lines = ["| model | HxW | batch | dtype | import s | cold first call s | cold wall s | warm first call s | "
             "warm wall s | speed-up | trace+lower s | cache entries |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['height']}x{r['width']} | {r['batch']} | {r['dtype']} | "
                     f"{r['runs'][0]['import_s']:.1f} | {r['cold_compile_s']:.1f} | {r['cold_wall_s']:.1f} | "
                     f"{r['warm_first_call_s']:.1f} | {r['warm_wall_s']:.1f} | {r['speedup']:.1f}x | "
                     f"{r['runs'][-1]['trace_lower_s']:.1f} | {r['runs'][-1]['cache_entries_after']} |")
    return "\n".join(lines)


def format_convert(results: list[dict]) -> str:
    lines = ["| manifest | parameters | param MB | source MB | RSS after import MB | peak RSS MB | "
             "peak / param bytes | (peak - import) / param bytes | convert s | write s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['manifest']} | {r['param_count']:,} | {r['param_bytes'] / 2**20:.0f} | "
                     f"{r['source_file_bytes'] / 2**20:.0f} | {r['rss_after_import_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_over_param_bytes']:.2f} | "
                     f"{r['peak_minus_import_over_param_bytes']:.2f} | {r['convert_s']:.1f} | {r['write_s']:.1f} |")
    return "\n".join(lines)


def format_peaks(measured: list[dict]) -> str:
    return "; ".join(f"{m['framework']} {m['dtype']} {m['n']}^3 matmul: {m['gflops']:.1f} GFLOP/s" for m in measured)


FORMATTERS = {"rows": format_rows, "startup": format_startup, "convert-memory": format_convert}


def result_paths(outdir, stem: str, append: bool) -> tuple[Path, Path]:
    """<outdir>/<stem>.md and .json; unless `append`, the first <stem>[-N] whose files do not exist yet."""
    outdir = Path(outdir)
    n = 1
    while True:
        name = stem + (f"-{n}" if n > 1 else "")
        md, js = outdir / f"{name}.md", outdir / f"{name}.json"
        if append or not (md.exists() or js.exists()):
            return md, js
        n += 1


def write_results(kind: str, results: list[dict], info: dict, outdir, *, table: Optional[str] = None,
                  extra: Optional[dict] = None, date: Optional[str] = None, append: bool = False,
                  stem: Optional[str] = None) -> tuple[Path, Path]:
    """Write one run as a markdown section and a JSON record to <outdir>/<stem>.md and .json.

    `stem` defaults to <machine>-<date>. Existing files are never changed unless `append` (then the
    run is added to them); otherwise a run whose files exist already goes to <stem>-2, -3, ...
    Both files are written atomically.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now().astimezone()
    date = date or now.date().isoformat()
    md, js = result_paths(outdir, stem or f"{info['machine']}-{date}", append)
    formatter = FORMATTERS.get(kind)
    table = table if table is not None else (formatter(results) if formatter else json.dumps(results, indent=1))
    header = [f"## {kind}: {now.isoformat(timespec='seconds')}", "",
              f"- machine: {machine_label(info)}, {info.get('total_memory_gb')} GB RAM, backend {info['backend']}",
              f"- versions: dpt-jax {info.get('dpt_jax') or '–'}, jax {info['jax']}, jaxlib {info['jaxlib']}, "
              f"flax {info['flax']}, numpy {info['numpy']}, torch {info.get('torch') or '–'}, "
              f"transformers {info.get('transformers') or '–'}, python {info['python']}"]
    for k, v in (extra or {}).items():
        header.append(f"- {k}: {v}")
    text = md.read_text() if md.exists() else f"# dpt-jax benchmarks: {machine_label(info)}, {date}\n\n"
    text += "\n".join(header) + "\n\n" + table + "\n\n"
    data = {"runs": []}
    if js.exists():
        try:
            data = json.loads(js.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{js} is not valid JSON: refusing to append to it (move it away or use --out)") from None
    record = {"kind": kind, "time": now.isoformat(timespec="seconds"), "info": info, "extra": extra or {},
              "results": results}
    data.setdefault("runs", []).append(record)
    with atomic_write(js, ".json") as f:
        f.write(json.dumps(data, indent=1, default=str).encode())
    with atomic_write(md, ".md") as f:
        f.write(text.encode())
    return md, js
