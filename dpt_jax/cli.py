"""The `dpt-jax` command line."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .inputs import NAMING
from .options import add_model_options, model_options


def cmd_convert(args) -> int:
    from .atomic import check_output, clean_stale_partials
    from .checkpoint import load_checkpoint, write_converted
    from .convert import hf

    clean_stale_partials(os.path.dirname(os.path.abspath(args.output)))  # left there by a killed convert
    if os.path.exists(args.output) and os.path.exists(args.src) and os.path.samefile(args.src, args.output):
        raise ValueError(f"{args.output}: is the checkpoint being converted; choose another output file")
    check_output(args.output, inputs=[args.src], overwrite=args.overwrite, folder=args.to == "hf")
    checkpoint = load_checkpoint(args.src, **model_options(args))
    config = checkpoint.config
    if args.to == "hf":  # a transformers folder: config.json + model.safetensors
        hf.write(args.output, config, checkpoint.params, overwrite=args.overwrite)
    else:
        write_converted(args.output, config, checkpoint.params)
    print(f"variant:    {config.name} ({config.family.title})")
    print(f"output:     {output_kind(config)}")
    print(f"parameters: {checkpoint.num_params:,}")
    for option in config.family.options:
        if hasattr(config.encoder, option.name):
            print(f"{option.name.replace('_', ' ')}: {getattr(config.encoder, option.name)}")
    print(f"skipped:    {len(checkpoint.skipped)} keys the original forward does not use")
    for k in checkpoint.skipped if args.verbose else []:
        print(f"  {k}")
    print(f"wrote       {args.output}")
    return 0


def cmd_info(args) -> int:
    from .model import load
    from .predict_files import describe_devices

    model = load(args.model, **model_options(args))
    c = model.config
    h, w = c.native_size
    print(f"model:      {c.name} ({c.family.title})")
    print(f"output:     {output_kind(c)}")
    print(f"source:     {model.source}")
    print(f"parameters: {model.num_params:,}")
    if c.resize_rule == "at_most":
        print(f"input:      larger pictures shrink to at most {max(h, w)} px, sides multiples of {c.input_multiple}, "
              "keeping the aspect ratio")
    elif c.resize_rule == "upper_bound":
        print(f"input:      the longer side {max(h, w)}, sides to the nearest multiple of {c.input_multiple}")
    else:
        print(f"input:      native {h}x{w} (HxW), sides multiples of {c.input_multiple}, "
              f"{'keeps' if c.keep_aspect_ratio else 'ignores'} the aspect ratio by default")
    print(f"devices:    {describe_devices(model.devices or None)}")
    print(f"config:     {c.to_json()}")
    return 0


def output_kind(config) -> str:
    """What the model's numbers are: relative inverse depth, relative depth, or metres."""
    if config.prompt:
        return "metric depth in metres, within the depth prompt's range (--prompt-depth)"
    if config.focal_metric_divisor:
        return (f"metric depth in metres (focal length in pixels x output / {config.focal_metric_divisor:g}; "
                "the focal length from --focal, --fov, the picture's EXIF, else a 60 degree field of view)")
    if config.depth_activation == "relu_metres":
        return "metric depth in metres (a video model's frames together)"
    if config.is_metric:
        return f"metric depth in metres (max {config.max_depth:g} m)"
    if config.predicts_depth:
        return "relative depth (larger is farther; unknown scale)"
    return "relative inverse depth (larger is nearer; unknown scale and shift)"


def _formats(text: str) -> list[str]:
    from .output import FORMATS

    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(unknown) or repr(text)}; "
                                         f"choose from {', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        size = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 384 or 384x512); got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive; got {text!r}")
    return size


def _number(convert, ok, expected: str):
    """An argparse type: `convert(text)` that must satisfy `ok`, else "expected <expected>"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


_degrees = _number(float, lambda v: 0 < v < 180, "a field of view in degrees between 0 and 180")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_positive = _number(int, lambda v: v >= 1, "a positive integer")


def cmd_download(args) -> int:
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.name, progress=not args.no_progress)  # fetched, and checked by reading it
    print(checkpoint.path)
    return 0


def cmd_bench(args) -> int:
    from . import timing

    return timing.run(args)


def cmd_export(args) -> int:
    from . import export
    from .atomic import check_output, clean_stale_partials
    from .model import load

    clean_stale_partials(os.path.dirname(os.path.abspath(args.output)))  # left there by a killed export
    check_output(args.output, inputs=[args.model], overwrite=args.overwrite)
    model = load(args.model, **model_options(args))
    if args.with_preprocessing:
        spec = export.export(model, args.output, size=args.size, batch=args.batch, dtype=args.dtype,
                             with_preprocessing=True, picture_size=args.picture_size or args.size)
    elif args.picture_size:
        raise ValueError("--picture-size applies only with --with-preprocessing")
    else:
        spec = export.export(model, args.output, size=args.size, batch=args.batch, dtype=args.dtype)
    print(f"wrote      {args.output}: {model.config.name}")
    print(f"program:   {spec.describe()}")
    if not args.no_verify:
        err = export.verify(model, args.output, spec)
        print(f"verified:  max|exported - dpt-jax {spec.dtype}| / max|dpt-jax {spec.dtype}| = {err:.1e} on a random "
              "input (the same program in dpt-jax)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt-jax", description="DPT depth models (MiDaS v3.1, Depth Anything "
                                                                 "V1/V2) in JAX")
    parser.add_argument("--version", action="version", version=f"dpt-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a checkpoint (original, Hugging Face folder, name) to a dpt-jax "
                                       "safetensors file or a Hugging Face folder")
    p.add_argument("src", help="original .pt or .safetensors checkpoint, Hugging Face folder, name or repo id")
    p.add_argument("-o", "--output", required=True, help="converted .safetensors file (or, --to hf, folder) to write")
    p.add_argument("--to", choices=["dpt-jax", "hf"], default="dpt-jax",
                   help="dpt-jax: one converted .safetensors file; hf: a Hugging Face transformers folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (--to hf: write into a non-empty folder, replacing "
                        "config.json and model.safetensors and nothing else)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the skipped keys")
    add_model_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a model's config, parameter count and input size")
    p.add_argument("model", help="checkpoint path (original, converted or Hugging Face folder), name or repo id")
    add_model_options(p)
    p.set_defaults(func=cmd_info)

    import textwrap

    from . import hub
    from .output import COLORMAPS, FORMATS

    p = sub.add_parser(
        "predict", help="write depth for pictures and videos", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Depth for pictures and videos (files, folders and globs): relative inverse depth, or "
                    "metres for metric models.",
        epilog=textwrap.fill(f"Models (-m): a checkpoint file or Hugging Face folder, a Hub repo id, or a "
                             f"{hub.known_names_text()}; default {hub.DEFAULT_MODEL}, downloaded on first use.",
                             92) + f"\n\n{NAMING}")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="picture files, folders (their pictures), globs ('**' matches sub-folders; quote it) or "
                        "picture URLs (http://, https://)")
    p.add_argument("--camera", nargs="?", const=0, type=_number(int, lambda v: v >= 0, "a camera number"),
                   metavar="N", help="instead of inputs, the frames of camera N (default 0; PyAV capture on Linux "
                   "and macOS): shown in a window where OpenCV and a display exist, otherwise written to OUTDIR "
                   "as camera-000000-depth.png, ...; Ctrl-C ends")
    p.add_argument("-m", "--model", default=None,
                   help="checkpoint path, Hugging Face folder, official name or Hugging Face repo id "
                        "(default: the smallest, dpt_swin2_tiny_256)")
    p.add_argument("-o", "--output", default="depth", metavar="OUTDIR", help="output folder (default: ./depth)")
    p.add_argument("-f", "--format", type=_formats, default=["color"], metavar="FMT[,FMT...]",
                   help="one or more of: " + "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
                        + "; default color")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="process the sub-folders of folders given too, keeping their layout under OUTDIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (default: skip pictures whose outputs exist)")
    p.add_argument("--suffix-model", action="store_true",
                   help="put the model in the output names, <stem>-<model>-depth.png (as MiDaS's <name>-<model_type>), "
                        "so a second model into the same folder does not find the first one's outputs")
    p.add_argument("--cmap", choices=list(COLORMAPS), default="inferno",
                   help="colormap of color, side and video outputs: inferno (default), spectral_r (Depth "
                        "Anything's), gray; near is bright/warm")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--height", type=_positive, metavar="N",
                      help="network input target N x N instead of the model's native size, as MiDaS's --height "
                           "(sides rounded to the model's multiple, 32 for MiDaS, 14 for Depth Anything; the aspect "
                           "ratio is kept as --keep-aspect-ratio says)")
    size.add_argument("--size", type=_size, metavar="N|HxW", help="network input target, N x N or H x W")
    p.add_argument("--bucket", action="store_true",
                   help="snap network input sizes to multiples of 64, so pictures of near sizes share one "
                        "compiled program (fewer compiles for mixed folders); the picture is resized to the "
                        "bucket, which changes the depth slightly (see README)")
    p.add_argument("--views", action="store_true",
                   help="the pictures are views of one scene (Depth Anything 3 any-view models: da3_small, "
                        "da3_base, da3_large, da3_giant): one run over all of them; depth per view at the network's "
                        "size, <first>-cameras.json (poses, intrinsics) and with -f ply one merged point cloud "
                        "in the first view's camera frame")
    p.add_argument("--cameras", metavar="FILE",
                   help="with --views: the known cameras of the views, a .json ({\"views\": [{\"world_to_camera\": 4x4 "
                        "or 3x4, \"intrinsics\": 3x3 in pixels of the picture}, ...]}, in the pictures' order) or a "
                        ".npz (arrays extrinsics (S, 4, 4) and intrinsics (S, 3, 3)); the depth comes in the poses' "
                        "scale and the cameras written are these")
    p.add_argument("--batch-size", type=_positive, default=4, help="pictures per model call (default 4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32 (exact; default) or bfloat16 matmuls (faster on GPU/TPU and bf16 CPUs)")
    p.add_argument("--keep-aspect-ratio", action=argparse.BooleanOptionalAction, default=None,
                   help="resize keeping the aspect ratio (default: as the model's original preprocessing; "
                        "dpt-jax info MODEL says which)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it only shows on a terminal; otherwise one line per picture)")
    p.add_argument("--distributed", action="store_true",
                   help="one process per host: join them with jax.distributed.initialize() (JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES, JAX_PROCESS_ID, or a cluster JAX detects) and let each do every "
                        "n-th picture on its own devices; on by itself when those variables are set")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the devices, skipped pictures and removed temporary files")
    add_model_options(p)
    v = p.add_argument_group("videos", "inputs with a video suffix (.mp4, .mov, .mkv, .webm, .avi, ...); a picture "
                             "model runs each frame alone, a video model windows of 32 frames aligned "
                             "to each other")
    v.add_argument("--input-size", type=_positive, metavar="N",
                   help="network input of videos: at least N x N keeping the aspect ratio, as Depth Anything's "
                        "and Video Depth Anything's --input_size (default: the model's native size; --size and "
                        "--height apply to videos too)")
    v.add_argument("--streaming", action="store_true",
                   help="video models: one frame at a time with the states of earlier frames, as Video Depth "
                        "Anything's streaming mode (for live sources; no alignment between windows)")
    v.add_argument("--normalize", choices=["global", "running"], default="global",
                   help="colour mapping, never per frame: global (one min/max over the whole video; default) "
                        "or running (a moving average of the frames' ranges; follows cuts and zooms)")
    v.add_argument("--smoothing", type=float, metavar="A",
                   help="--normalize running: the average's weight of the past, in [0, 1) (default 0.9)")
    v.add_argument("--side-by-side", action="store_true",
                   help="the video shows input | depth, twice as wide (named -side.mp4)")
    v.add_argument("--frames", choices=[n for n, f in FORMATS.items() if f.frames is not None],
                   help="also write the frames: npy (an (n, h, w) float32 stack of raw inverse depth) or png16 "
                        "(a folder of 16-bit PNGs, mapped as the video)")
    p.add_argument("--prompt-depth", metavar="FILE",
                   help="Prompt Depth Anything models: the picture's coarse metric depth (a phone's LiDAR map), a "
                        "16-bit PNG in millimetres or .npy/.npz in metres, of the picture's aspect ratio; one picture "
                        "per run; the depth (and -f ply) is then in metres")
    g = p.add_argument_group("point clouds", "-f ply: a coloured binary PLY of each picture, camera coordinates; "
                             "--fov / --focal also give Depth Anything 3 metric its metres (else the picture's EXIF, "
                             "else 60 degrees)")
    g.add_argument("--fov", type=_degrees, metavar="DEG",
                   help="horizontal field of view of the camera in degrees (default 60)")
    g.add_argument("--focal", type=_positive_float, metavar="PX",
                   help="focal length in pixels of the picture (fx = fy; principal point at the centre), instead "
                        "of --fov, as Depth Anything's depth_to_pointcloud.py")
    for axis in ("fx", "fy", "cx", "cy"):
        g.add_argument(f"--{axis}", type=_positive_float, metavar="PX",
                       help=f"camera intrinsics in pixels: --fx --fy --cx --cy together ({axis})")
    g.add_argument("--align", metavar="FILE",
                   help="known depths in metres for the one picture given (.csv rows x,y,depth, .npy or .npz): "
                        "fits scale and shift so the PLY is in metres (relative models; metric ones are already)")
    g.add_argument("--robust", action="store_true",
                   help="--align: a robust fit that ignores wrong known depths (up to about a third)")
    g.add_argument("--ply-stride", type=_positive, default=1, metavar="N",
                   help="every N-th pixel of each axis becomes a point (default 1; point clouds have at most "
                        "25 million points)")
    g.add_argument("--far", type=_positive_float, metavar="DEPTH",
                   help="leave out points deeper than this, in the PLY's units (metres for metric models and "
                        "--align; otherwise the arbitrary units 1 nearest .. 10 farthest)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("download", help="fetch a released checkpoint (or a Hugging Face repo) into the cache, checked")
    p.add_argument("name", help=f"a released model's name or a Hub repo id: {hub.known_names_text()}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("export", help="write a model as a StableHLO (.stablehlo) or ONNX (.onnx) program")
    p.add_argument("model", help="checkpoint path (original, converted or Hugging Face folder), name or repo id")
    p.add_argument("-o", "--output", required=True, help="file to write: NAME.stablehlo or NAME.onnx")
    p.add_argument("--size", metavar="HxW", help="network input size, sides multiples of the model's multiple "
                   "(dpt-jax info MODEL prints it); with --with-preprocessing the default is the original's size "
                   "for the picture size")
    p.add_argument("--batch", default="dynamic", help="batch size, or 'dynamic' (default) for any batch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16 matmuls (StableHLO only); float32 pins full float32 precision")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="take uint8 RGB pictures of one size (--picture-size, default --size) and return depth at "
                        "that size, with the original's resize and normalisation inside")
    p.add_argument("--picture-size", metavar="HxW", help="picture size taken with --with-preprocessing")
    add_model_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the written file against dpt-jax on a random input")
    p.set_defaults(func=cmd_export)


    from .datasets import DATASETS
    from .metrics import ALIGNMENTS, CROPS

    p = sub.add_parser(
        "eval", help="score a model (or saved depth maps) on a depth dataset with the papers' metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="abs_rel, sq_rel, rmse, rmse_log, log10, delta1-3, i_rmse and silog of a model on a dataset, "
                    "by the dataset's protocol (split, crop, depth caps) unless overridden; a table on the terminal "
                    "and a JSON file with the settings and one row per picture. See README, Evaluate.",
        epilog="Datasets (--dataset) and what --data holds:\n" + "\n".join(
            f"  {d.name:<11} {d.layout}" for d in DATASETS.values()))
    p.add_argument("model", nargs="?", help="checkpoint path, Hugging Face folder, name or repo id (or --predictions)")
    p.add_argument("--dataset", required=True, choices=list(DATASETS), help="which dataset layout and protocol")
    p.add_argument("--data", required=True, metavar="PATH", help="the dataset's folder")
    p.add_argument("--predictions", metavar="DIR",
                   help="score saved depth maps instead of a model: DIR/<name>.npy (or -depth.npy, .pfm, -depth.pfm) "
                        "for each picture's name in the dataset")
    p.add_argument("--kind", choices=["disparity", "depth"],
                   help="--predictions: relative inverse depth (default, as dpt-jax predict writes for relative "
                        "models) or depth in metres")
    p.add_argument("--alignment", choices=["auto", *ALIGNMENTS], default="auto",
                   help="auto (default): a least-squares scale and shift of the disparity per picture for relative "
                        "predictions, none for metric ones; disparity-video: one fit per video (Video Depth "
                        "Anything's protocol); median: scale only")
    p.add_argument("--crop", choices=list(CROPS), help="evaluation crop (default: the dataset's)")
    p.add_argument("--min-eval-depth", type=float, metavar="M",
                   help="ground truth counts where it is above this (default: the dataset's)")
    p.add_argument("--max-eval-depth", type=float, metavar="M",
                   help="ground truth counts where it is below this, and predictions are capped at it "
                        "(default: the dataset's)")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the first N pictures of the dataset")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="the JSON report (default: eval-<dataset>-<model>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the JSON report if it exists")
    p.add_argument("--batch-size", type=_positive, default=4, help="pictures per model call (default 4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32 (exact; default) or bfloat16 matmuls")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="one process per host, joined as predict --distributed does: each scores every n-th picture "
                        "(every n-th video with disparity-video) and process 0 writes the report of all; on by "
                        "itself when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES or JAX_PROCESS_ID is set")
    add_model_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="fine-tune a model on pictures with depth (the original recipe), resumable",
                       description="Depth Anything V2's training recipe (AdamW, encoder lr and 10x for the rest, "
                                   "polynomial decay, flips, 518 crops; SiLog for metric models, the trimmed "
                                   "scale-and-shift-invariant loss for relative ones, Video Depth Anything's "
                                   "VideoDepthLoss on clips for video models) on every local device or, with "
                                   "--distributed, every device of several hosts; Orbax checkpoints; the result as "
                                   "a dpt-jax .safetensors. See README, Fine-tune.")
    p.add_argument("model", help="checkpoint path, Hugging Face folder, name or repo id to start from")
    p.add_argument("--data", required=True, metavar="DIR", help="the training data, in the layout --dataset names")
    p.add_argument("--dataset", choices=list(DATASETS), default="folder",
                   help="the layout of --data, as eval's --dataset (default folder: images/NAME.jpg|png, "
                        "depth/NAME.npy|png in metres (PNG: x 256), optional mask/NAME.png; video models: "
                        "images/CLIP/FRAME.png etc., a folder of frames per clip)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the fine-tuned model (.safetensors)")
    p.add_argument("--val-data", metavar="DIR", help="validation data, scored with the depth metrics")
    p.add_argument("--val-dataset", choices=list(DATASETS), help="the layout of --val-data (default: --dataset's)")
    p.add_argument("--steps", type=_positive, help="optimizer updates (default 1000)")
    p.add_argument("--batch-size", type=_positive,
                   help="pictures (video models: clips) per micro-batch, over all devices (default 2)")
    p.add_argument("--frames", type=_positive,
                   help="video models: frames per training clip (default: the model's window, 32)")
    p.add_argument("--accumulate", type=_positive, help="micro-batches per update (default 1)")
    p.add_argument("--lr", type=float, help="the encoder's learning rate; the rest learns 10x (default 5e-6)")
    p.add_argument("--size", type=_positive, help="the square training crop (default 518)")
    p.add_argument("--loss", choices=["auto", "silog", "ssi", "video"],
                   help="default: silog (metric), ssi (relative), video (VideoDepthLoss; video models)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="matrix products (default float32)")
    p.add_argument("--remat", action="store_true", help="recompute the encoder blocks in the backward pass")
    p.add_argument("--shard-params", action="store_true",
                   help="split the parameters and optimizer state across the devices (FSDP) instead of a copy on each")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train all but the encoder (as Video Depth Anything's paper trains its temporal head)")
    p.add_argument("--seed", type=int, help="the run's random seed (default 0)")
    p.add_argument("--val-every", type=_positive, metavar="N", help="score --val-data every N updates")
    p.add_argument("--save-every", type=_positive, metavar="N", help="Orbax checkpoint every N updates")
    p.add_argument("--checkpoints", metavar="DIR", help="the checkpoint folder (default OUTPUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--hf-output", metavar="DIR",
                   help="the Hugging Face transformers folder also written (default: OUTPUT's stem + '-hf' beside "
                        "it, where transformers has a layout for the model)")
    p.add_argument("--no-hf", action="store_true", help="write no Hugging Face folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="one process per host (jax.distributed: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                        "JAX_PROCESS_ID, or a cluster JAX detects): each batch split over every device of every "
                        "process, process 0 writing the outputs; --checkpoints on a shared file system; on by "
                        "itself when one of those variables is set")
    add_model_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("bench", help="time dpt-jax on a model with random weights (no checkpoint needed)",
                       description="Compile time, median/min latency and images/s of a model with random weights. "
                                   "The side-by-side comparison with PyTorch is benchmarks/ in the repository.")
    p.add_argument("models", nargs="+", metavar="MODEL[@HxW]",
                   help="preset (beit_large_512, swin2_tiny_256, ...) or mini_beit / mini_swin2, optionally "
                        "@S or @HxW for the input size (default: native)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the dtype of the matrix products (default float32)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one (default 1)")
    p.set_defaults(func=cmd_bench)
    return parser


def run_reporting_errors(command: str, fn, *args) -> int:
    """fn(*args), with the errors a user can cause turned into one line on stderr and an exit status."""
    try:
        code = fn(*args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # e.g. `dpt-jax info ... | head`: the reader left; say nothing
        _silence_stdout()
        return 141  # as a process killed by SIGPIPE
    except (ValueError, RuntimeError, OSError) as e:  # CheckpointError and ImageError are ValueErrors
        print(f"dpt-jax {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dpt-jax {command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout():
    """Point stdout at /dev/null, so the interpreter's final flush does not report the broken pipe again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (e.g. captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def cmd_eval(args) -> int:
    from . import evaluate

    return evaluate.run(args)


def cmd_finetune(args) -> int:
    from . import train

    return train.run(args)


def cmd_predict(args) -> int:
    from . import predict_files

    return predict_files.run(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("predict", "eval", "export", "bench", "info"):  # the CLI, not the library, keeps programs
        from . import compile_cache

        compile_cache.enable()
    return run_reporting_errors(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
