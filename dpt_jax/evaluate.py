"""The `dpt-jax eval` run: a dataset's pictures through a model (or saved depth maps), scored by its protocol.

    run(args)   1. open the dataset (its layout checked), the saved predictions and the output file: a folder
                   that does not match is one error before any model loads
                2. depth from the model (`pipeline.run`, batched on every local device) or from --predictions
                3. each picture (or, --alignment disparity-video, each video): ground truth caps and crop ->
                   alignment -> `metrics.image_terms`; the dataset's metrics from all of them
                4. a table on stdout and a JSON file (settings, metrics, one row per picture), written atomically

`Scorer` is the library form of 3: `add(sample_name, prediction, depth, valid, sequence)`, then `result()`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .datasets import DATASETS, Sample, open_dataset
from .errors import DatasetError

KINDS = ("disparity", "depth")  # what predictions are: relative inverse depth, or depth in metres
PREDICTION_SUFFIXES = (".npy", "-depth.npy", ".pfm", "-depth.pfm")  # dpt-jax predict -f npy/pfm names included


@dataclass(frozen=True)
class Settings:
    """How a run scores: what the predictions are, and the protocol (the dataset's defaults unless overridden)."""

    dataset: str
    kind: str  # KINDS
    alignment: str  # metrics.ALIGNMENTS
    crop: str  # metrics.CROPS
    min_depth: float
    max_depth: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"prediction kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.alignment not in metrics.ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(metrics.ALIGNMENTS)}; got {self.alignment!r}")
        if self.crop not in metrics.CROPS:
            raise ValueError(f"crop must be one of {', '.join(metrics.CROPS)}; got {self.crop!r}")
        if self.kind == "disparity" and self.alignment == "none":
            raise ValueError("relative inverse depth (disparity) has no scale: choose --alignment disparity, "
                             "disparity-video or median")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"the depth caps must satisfy 0 <= min < max; got {self.min_depth:g}, "
                             f"{self.max_depth:g}")


def settings_for(dataset: str, kind: str, *, alignment: str = "auto", crop: str | None = None,
                 min_depth: float | None = None, max_depth: float | None = None) -> Settings:
    """The dataset's protocol, with what is given instead; alignment "auto": disparity fit for relative
    predictions, none for metric ones."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    p = DATASETS[dataset].protocol
    if alignment == "auto":
        alignment = "disparity" if kind == "disparity" else "none"
    return Settings(dataset, kind, alignment, p.crop if crop is None else crop,
                    p.min_depth if min_depth is None else min_depth, p.max_depth if max_depth is None else max_depth)


class Scorer:
    """Scores predictions one picture at a time (a video at a time for disparity-video alignment)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.terms: list[dict] = []  # each scored picture's metrics.image_terms (B = 1)
        self.rows: list[dict] = []  # each scored picture's row
        self._video: dict[str, list] = {}  # sequence -> [(name, prediction, depth, valid)] until it is complete

    def _valid(self, depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
        s = self.settings
        return valid & (depth > s.min_depth) & (depth < s.max_depth) & metrics.crop_mask(s.crop, depth.shape)

    def _as_disparity(self, prediction: np.ndarray) -> np.ndarray:
        if self.settings.kind == "disparity":
            return prediction
        with np.errstate(divide="ignore"):
            return np.where(prediction > 0, 1.0 / prediction, 0.0)

    def _aligned(self, prediction, depth, valid) -> tuple[np.ndarray, dict]:
        """Predicted depth (B, H, W) in metres and the fit's numbers."""
        s = self.settings
        cap = s.max_depth
        if s.alignment in ("disparity", "disparity-video"):
            if not valid.any():
                return np.full(depth.shape, np.nan), {}
            aligned, scale, shift = metrics.align_disparity(self._as_disparity(prediction), depth, valid, cap)
            return aligned, {"scale": scale, "shift": shift}
        as_depth = prediction if s.kind == "depth" else 1.0 / np.clip(prediction, metrics.CLIP, None)
        if s.alignment == "median":
            aligned, scales = metrics.align_median(as_depth, depth, valid, cap)
            return aligned, {"scale": float(scales[0])}
        return np.clip(as_depth.astype(np.float64), metrics.CLIP, cap), {}

    def add(self, name: str, prediction: np.ndarray, depth: np.ndarray, valid: np.ndarray,
            sequence: str | None = None, sequence_length: int = 1) -> None:
        """Score one picture: its prediction (h, w), ground truth depth (h, w) and where it exists. With
        disparity-video alignment the pictures of a `sequence` wait until all `sequence_length` are in."""
        if prediction.shape != depth.shape:
            raise DatasetError(name, f"the prediction is {prediction.shape[1]}x{prediction.shape[0]}, the ground "
                                     f"truth {depth.shape[1]}x{depth.shape[0]}")
        item = (name, np.asarray(prediction, np.float32), depth, self._valid(depth, valid))
        if self.settings.alignment != "disparity-video" or sequence is None:
            self._score([item])
            return
        frames = self._video.setdefault(sequence, [])
        frames.append(item)
        if len(frames) == sequence_length:
            self._score(self._video.pop(sequence))

    def _score(self, items: list) -> None:
        names = [i[0] for i in items]
        prediction, depth, valid = (np.stack([i[k] for i in items]) for k in (1, 2, 3))  # (T, H, W) each
        aligned, fit = self._aligned(prediction, depth, valid)
        terms = metrics.image_terms(aligned, depth, valid)
        for t, row in enumerate(metrics.per_image(terms)):
            self.terms.append({k: v[t:t + 1] for k, v in terms.items()})
            self.rows.append({"name": names[t], **row, **fit})

    def flush(self) -> None:
        """Score the videos still waiting for frames (one whose other frames failed) with the frames they have."""
        for sequence in sorted(self._video):
            self._score(self._video.pop(sequence))

    def part(self) -> dict:
        """What this scorer holds (rows and per-picture terms) as JSON data, to combine shares of many processes."""
        self.flush()
        terms = {k: np.concatenate([t[k] for t in self.terms]).tolist() for k in self.terms[0]} if self.terms else {}
        return {"rows": self.rows, "terms": terms}

    def absorb(self, part: dict) -> None:
        """Add another scorer's `part` (another process's share)."""
        if part["terms"]:
            self.terms.append({k: np.asarray(v) for k, v in part["terms"].items()})
            self.rows += part["rows"]

    def result(self) -> dict[str, float]:
        """The dataset's metrics over every picture scored (pictures without valid ground truth left out)."""
        self.flush()
        if not self.terms:
            raise ValueError("no picture was scored")
        return metrics.combine({k: np.concatenate([t[k] for t in self.terms]) for k in self.terms[0]})


# ---------------------------------------------------------------------------------------------
# Saved predictions


def prediction_files(samples: list[Sample], folder: Path) -> list[Path]:
    """Each sample's saved prediction: FOLDER/<name>.npy (or -depth.npy, .pfm, -depth.pfm, as `dpt-jax predict`
    writes them); one error naming what is missing."""
    if not folder.is_dir():
        raise DatasetError(folder, "no such folder" if not folder.exists() else "not a folder")
    found, missing = [], []
    for s in samples:
        path = next((folder / (s.name + e) for e in PREDICTION_SUFFIXES if (folder / (s.name + e)).is_file()), None)
        (found if path else missing).append(path or f"{s.name}.npy")
    if missing:
        raise DatasetError(folder, f"no prediction for {len(missing)} of {len(samples)} pictures: "
                                   f"{', '.join(map(str, missing[:3]))}{' ...' if len(missing) > 3 else ''} "
                                   f"(looked for <name>{', <name>'.join(PREDICTION_SUFFIXES)})")
    return found


def read_prediction(path: Path) -> np.ndarray:
    """A saved (h, w) prediction; NaN or infinite values are refused (they would poison the fit)."""
    from .datasets import read_npy, read_pfm

    prediction = read_pfm(path) if path.suffix == ".pfm" else read_npy(path)
    if not np.isfinite(prediction).all():
        raise DatasetError(path, "the prediction has NaN or infinite values")
    return prediction


# ---------------------------------------------------------------------------------------------
# Many hosts


def shares(samples: list[Sample], processes: int, by_sequence: bool) -> list[list[int]]:
    """Each process's sample indices: unit k (a picture, or with `by_sequence` a whole video) goes to process
    k % processes; every process computes the same shares from the same sorted dataset."""
    units: dict = {}
    for i, s in enumerate(samples):
        units.setdefault(s.sequence if by_sequence and s.sequence is not None else ("", i), []).append(i)
    ordered = list(units.values())
    return [[i for unit in ordered[p::processes] for i in unit] for p in range(processes)]


#: How long process 0 waits for the others' shares (they evaluate meanwhile).
GATHER_TIMEOUT_MS = 24 * 3600 * 1000


def gather(process: int, processes: int, payload: dict) -> list[dict] | None:
    """Every process's payload on process 0 (None on the others), through the key-value store of the
    distributed run's coordination service: no device collective, so any backend (CPU included) works."""
    from jax._src import distributed  # the coordination client; jax has no public key-value API

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("the distributed run is not started (jax.distributed.initialize)")
    client.key_value_set(f"dpt_jax_eval/{process}", json.dumps(payload))
    if process:
        return None
    return [json.loads(client.blocking_key_value_get(f"dpt_jax_eval/{p}", GATHER_TIMEOUT_MS))
            for p in range(processes)]


# ---------------------------------------------------------------------------------------------
# The command


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def write_report(path, report: dict) -> None:
    """The JSON report, written atomically (NaN as null, infinite caps as "inf")."""
    from .atomic import atomic_write

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return _json_value(x)

    with atomic_write(path, ".json") as f:
        f.write(json.dumps(clean(report), indent=1, allow_nan=False).encode() + b"\n")


def table(name: str, count: int, values: dict[str, float]) -> str:
    """The metrics as a two-line table."""
    head = ["dataset", "images", *metrics.METRICS]
    cells = [name, str(count), *(f"{values[m]:.4f}" if m != "silog" else f"{values[m]:.3f}" for m in metrics.METRICS)]
    widths = [max(len(h), len(c)) for h, c in zip(head, cells)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in (head, cells))


def _default_output(args) -> str:
    from .predict_files import model_tag

    tag = model_tag(args.model) if args.predictions is None else Path(args.predictions).resolve().name
    return f"eval-{args.dataset}-{tag}.json"


def run(args) -> int:
    from .predict_files import start_distributed

    if (args.model is None) == (args.predictions is None):
        raise ValueError("give a MODEL, or --predictions DIR of saved depth maps (not both)")
    process, processes = start_distributed(args.distributed)
    if processes == 1:
        return _run(args, 0, 1)
    try:
        return _run(args, process, processes)
    except BaseException as e:  # tell process 0, which waits for this share, instead of leaving it waiting
        if process:
            gather(process, processes, {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        raise


def _run(args, process: int, processes: int) -> int:
    from tqdm import tqdm

    from .atomic import check_output

    if args.kind is not None and args.predictions is None:
        raise ValueError("--kind applies to --predictions; a model says what its output is")
    every = open_dataset(args.dataset, args.data)
    if args.limit:
        every = every[:args.limit]
    mine = shares(every, processes, args.alignment == "disparity-video")[process]
    samples = [every[i] for i in mine]
    files = prediction_files(samples, Path(args.predictions)) if args.predictions else None
    output = args.output or _default_output(args)
    if process == 0:  # the one that writes the report
        check_output(output, inputs=[args.data] + ([args.predictions] if args.predictions else []),
                     overwrite=args.overwrite)
    overrides = dict(alignment=args.alignment, crop=args.crop, min_depth=args.min_eval_depth,
                     max_depth=args.max_eval_depth)
    model = None
    if files is None:
        from .model import load
        from .options import model_options

        settings_for(args.dataset, "disparity", **{**overrides, "alignment": "disparity"})  # the caps, crop
        model = load(args.model, dtype=args.dtype, progress=not args.no_progress, **model_options(args))
        kind = "depth" if model.config.is_metric else "disparity"
    else:
        kind = args.kind or "disparity"
    settings = settings_for(args.dataset, kind, **overrides)

    scorer = Scorer(settings)
    lengths: dict = {}
    for s in every:
        lengths[s.sequence] = lengths.get(s.sequence, 0) + 1
    failed: list[dict] = []
    prefix = f"[process {process}/{processes}] " if processes > 1 else ""
    bar = tqdm(total=len(samples), unit="img", file=sys.stderr,
               disable=args.no_progress or not sys.stderr.isatty())

    def fail(name: str, error: str) -> None:
        failed.append({"name": name, "error": error})
        bar.write(f"dpt-jax eval: {prefix}{name}: {error}", file=sys.stderr)

    def score(sample: Sample, prediction) -> None:
        try:
            depth, valid = sample.load_truth()
            prediction = prediction() if callable(prediction) else prediction
            scorer.add(sample.name, prediction, depth, valid, sample.sequence, lengths[sample.sequence])
        except ValueError as e:  # DatasetError included
            fail(sample.name, str(e))
        bar.update(1)

    try:
        if files is not None:
            for sample, path in zip(samples, files):
                score(sample, lambda path=path: read_prediction(path))
        else:
            from . import pipeline

            def on_result(r: pipeline.Result) -> None:
                if r.error is not None:
                    fail(samples[r.index].name, r.error)
                    bar.update(1)
                else:
                    score(samples[r.index], r.depth)

            pipeline.run(model, [s.picture for s in samples], batch_size=args.batch_size, on_result=on_result,
                         keep_depth=False)
    finally:
        bar.close()
    if processes > 1:
        parts = gather(process, processes, {**scorer.part(), "failed": failed})
        if parts is None:
            print(f"{prefix}scored {len(scorer.rows)} pictures ({len(failed)} failed); process 0 writes the report")
            return 1 if failed else 0
        errors = [f"process {p}: {part['error']}" for p, part in enumerate(parts) if "error" in part]
        if errors:
            raise RuntimeError("the distributed evaluation failed on " + "; ".join(errors))
        scorer = Scorer(settings)
        failed = []
        for part in parts:
            scorer.absorb(part)
            failed += part["failed"]
        order = {s.name: i for i, s in enumerate(every)}
        scorer.rows.sort(key=lambda r: order[r["name"]])
    values = scorer.result()
    report = {
        "settings": {**asdict(settings), "data": os.path.abspath(args.data),
                     "model": None if model is None else model.config.name,
                     "checkpoint": None if model is None else model.source,
                     "predictions": None if files is None else os.path.abspath(args.predictions),
                     "dtype": None if model is None else args.dtype, "processes": processes,
                     "protocol": asdict(DATASETS[args.dataset].protocol)},
        "metrics": values, "images": scorer.rows, "failed": failed,
    }
    write_report(output, report)
    scored = sum(r["valid_pixels"] > 0 for r in scorer.rows)
    print(f"{settings.dataset}: {scored} pictures scored ({len(failed)} failed), alignment {settings.alignment}, "
          f"crop {settings.crop}, valid depth {settings.min_depth:g} < gt < {settings.max_depth:g} m")
    print(table(settings.dataset, scored, values))
    print(f"wrote {output}")
    return 1 if failed else 0
