"""The `dpt-jax` command line."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

from . import __version__
from .errors import ImageError


def _windows(text: str | None):
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 12,12,12,6; got {text!r}")
    if any(s < 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"window sizes cannot be negative; got {text!r}")
    return sizes


def cmd_convert(args) -> int:
    from . import hub
    from .checkpoint import read_checkpoint, write_converted
    from .convert import hf

    if os.path.exists(args.output) and os.path.exists(args.src) and os.path.samefile(args.src, args.output):
        raise ValueError(f"{args.output}: is the checkpoint being converted; choose another output file")
    options = {"pretrained_window_sizes": args.pretrained_window_sizes, "variant": args.variant,
               "max_depth": args.max_depth}
    checkpoint = read_checkpoint(hub.resolve(args.src), **{k: v for k, v in options.items() if v is not None})
    config = checkpoint.config
    if args.to == "hf":  # a transformers folder: config.json + model.safetensors
        hf.write(args.output, config, checkpoint.params, overwrite=args.overwrite)
    else:
        write_converted(args.output, config, checkpoint.params)
    print(f"variant:    {config.name} ({config.family.name})")
    print(f"output:     {output_kind(config)}")
    print(f"parameters: {checkpoint.num_params:,}")
    for option in config.family.options:
        if hasattr(config.encoder, option):
            print(f"{option.replace('_', ' ')}: {getattr(config.encoder, option)}")
    print(f"skipped:    {len(checkpoint.skipped)} keys the original forward does not use")
    for k in checkpoint.skipped if args.verbose else []:
        print(f"  {k}")
    print(f"wrote       {args.output}")
    return 0


def cmd_info(args) -> int:
    from . import load

    from . import hub

    path = hub.resolve(args.model)
    model = load(path, pretrained_window_sizes=args.pretrained_window_sizes, variant=args.variant,
                 max_depth=args.max_depth)
    c = model.config
    h, w = c.native_size
    print(f"model:      {c.name} ({c.family.name})")
    print(f"output:     {output_kind(c)}")
    print(f"source:     {model.source}")
    print(f"parameters: {model.num_params:,}")
    print(f"input:      native {h}x{w} (HxW), sides multiples of {c.input_multiple}, "
          f"{'keeps' if c.keep_aspect_ratio else 'ignores'} the aspect ratio by default")
    print(f"devices:    {describe_devices(model.devices or None)}")
    print(f"config:     {c.to_json()}")
    return 0


def describe_devices(devices=None) -> str:
    import jax

    devices = list(devices or jax.local_devices())
    kinds = sorted({d.device_kind for d in devices})
    return f"{len(devices)} x {', '.join(kinds)} ({', '.join(str(d) for d in devices)})"


def output_kind(config) -> str:
    """What the model's numbers are: relative inverse depth, or metres."""
    if config.is_metric:
        return f"metric depth in metres (max {config.max_depth:g} m)"
    return "relative inverse depth (larger is nearer; unknown scale and shift)"


def add_variant_arguments(p) -> None:
    p.add_argument("--variant", metavar="NAME",
                   help="which model the file holds, where its keys cannot tell: Depth Anything da2_vits, "
                        "da2_metric_hypersim_vitl, da2_metric_vkitti_vitb, da1_vitl, ... (official release file "
                        "names are recognised); a MiDaS preset name must match what the keys say")
    p.add_argument("--max-depth", type=float, metavar="METRES",
                   help="metric Depth Anything models: override the largest depth (20 Hypersim, 80 VKITTI)")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}

NAMING = """\
Output files: OUTDIR/<relative path>/<stem><ending>, one per format:
  color -depth.png   gray8 -depth-gray8.png   png16 -depth-16.png
  npy   -depth.npy   pfm   -depth.pfm         side  -side.png     ply -points.ply
Videos (by suffix: .mp4, .mov, .mkv, .webm, .avi, ...) ignore -f and write the depth video
-depth.mp4 (-side.mp4 with --side-by-side), and with --frames npy the stack -depth.npy, with
--frames png16 the folder -depth-16/ of 16-bit PNGs 000000.png, 000001.png, ...
<relative path> is the picture's folder relative to the folder (or the fixed part of the glob)
it was found under: empty for files named one by one and for pictures directly in a folder
given. Two pictures that would get the same name (case-insensitively) are told apart by
-2, -3, ... after the stem of the later one, skipping any name another picture has anyway.
A file that exists already is never replaced unless --overwrite: the picture is skipped
(so a second run into the same folder does only what is missing)."""


@dataclass
class Input:
    """A picture to process: its path, and where its outputs go relative to OUTDIR (without the ending)."""

    path: Path
    rel: PurePath  # e.g. sub/holiday.jpg


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(root: Path, recursive: bool):
    """(files, skipped sub-folders) under root, sorted; never follows directory links; hidden entries skipped."""
    files, skipped = [], 0
    if not recursive:
        for f in sorted(root.iterdir()):
            if _is_hidden(f.name):
                continue
            if f.is_dir():
                skipped += 1
            elif f.is_file():
                files.append(f)
        return files, skipped
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        files += [Path(folder) / n for n in sorted(names) if not _is_hidden(n) and (Path(folder) / n).is_file()]
    return files, skipped


def _match_parts(parts, pattern) -> bool:
    """Path components against glob components; "**" matches any number of folders; wildcards skip hidden names."""
    import fnmatch

    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(parts[k:], rest) for k in range(len(parts) + 1)
                   if not any(_is_hidden(p) for p in parts[:k]))
    if not parts:
        return False
    if _is_hidden(parts[0]) and not _is_hidden(head):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _match_parts(parts[1:], rest)


def _glob(pattern: str) -> tuple[Path, list[Path]]:
    """(the fixed folder the pattern starts with, the files matching it, sorted). Directory links are
    not followed under "**" (so link loops cannot make it run forever)."""
    import glob

    parts = PurePath(pattern).parts
    k = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root = Path(*parts[:k]) if k else Path(".")
    if "**" not in parts[k:]:
        return root, sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
    if not root.is_dir():
        return root, []
    files, _ = _walk_files(root, recursive=True)
    return root, sorted(f for f in files if _match_parts(f.relative_to(root).parts, parts[k:]))


def expand_inputs(args: list[str], recursive: bool = False) -> tuple[list[Input], list[str]]:
    """([Input], notes for the user): files as given, folders as the pictures and videos inside them
    (sub-folders too with `recursive`), globs expanded; sorted within each argument; each file once
    (by resolved path)."""
    import glob

    from .video import VIDEO_SUFFIXES

    found: list[Input] = []
    notes = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            files, skipped = _walk_files(p, recursive)
            found += [Input(f, f.relative_to(p)) for f in files if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            if skipped:
                notes.append(f"{a}: {skipped} sub-folder{'s' if skipped != 1 else ''} skipped (--recursive "
                             "processes them, keeping their layout)")
        elif not p.exists() and glob.has_magic(a):
            root, files = _glob(a)
            if not files:
                found.append(Input(p, PurePath(p.name)))  # a glob matching nothing is reported as missing
            found += [Input(f, f.relative_to(root)) for f in files]
        else:
            found.append(Input(p, PurePath(p.name)))
    unique, seen, repeats = [], set(), 0
    for item in found:
        key = item.path.resolve()
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        unique.append(item)
    if repeats:
        notes.append(f"{repeats} repeated picture{'s' if repeats != 1 else ''} (the same file found again) "
                     "processed once")
    return unique, notes


def output_bases(inputs: list[Input]) -> list[PurePath]:
    """<relative folder>/<stem> of each input's outputs, unique across the run (case-insensitively):
    a name taken by an earlier picture gets -2, -3, ... (skipping names any picture has naturally)."""
    natural = [i.rel.parent / i.rel.stem for i in inputs]
    key = lambda p: str(p).casefold()  # noqa: E731
    reserved = {key(p) for p in natural}
    assigned: set[str] = set()
    bases = []
    for base in natural:
        candidate, n = base, 1
        while key(candidate) in assigned or (n > 1 and key(candidate) in reserved):
            n += 1
            candidate = base.parent / f"{base.name}-{n}"
        assigned.add(key(candidate))
        bases.append(candidate)
    return bases


def picture_formats() -> dict[str, str]:
    """format -> the file name ending of a picture's output: output.FORMATS and the point cloud."""
    from .output import FORMATS

    return {**FORMATS, "ply": "-points.ply"}


def _formats(text: str) -> list[str]:
    FORMATS = picture_formats()
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


def _degrees(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 180:
        raise argparse.ArgumentTypeError(f"expected a field of view in degrees between 0 and 180; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


class Status:
    """Status lines on stderr: errors always; the rest unless quiet; details only when verbose."""

    def __init__(self, quiet: bool, verbose: bool, prefix: str = ""):
        self.quiet, self.verbose, self.prefix = quiet, verbose, prefix
        self.bar = None

    def _print(self, line: str):
        line = self.prefix + line
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def error(self, line: str):
        self._print(line)

    def info(self, line: str):
        if not self.quiet:
            self._print(line)

    def detail(self, line: str):
        if self.verbose and not self.quiet:
            self._print(line)


def _check_writable(outdir: Path) -> None:
    """Create OUTDIR and prove a file can be written there, before any model is loaded."""
    import tempfile

    from .atomic import PARTIAL_PREFIX

    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output folder {outdir}: exists and is not a folder")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir, prefix=f"{PARTIAL_PREFIX}probe-"):
            pass
    except OSError as e:
        raise ValueError(f"output folder {outdir}: cannot write there ({e.strerror or e})") from None


def start_distributed(requested: bool) -> tuple[int, int]:
    """(this process's index, the number of processes) of a `predict` run on many hosts.

    With --distributed, or when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES or JAX_PROCESS_ID is
    set, `jax.distributed.initialize()` joins the processes (the variables are passed on; on
    clusters JAX detects, such as Slurm, Open MPI and TPU pods, none are needed). Each process
    then runs its share on its own local devices: no arrays cross hosts, so a failing process
    cannot leave the others waiting in a collective. Otherwise (0, 1), and JAX is not touched.
    """
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    if not requested and not any(os.environ.get(n) for n in names):
        return 0, 1
    import jax

    options = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            try:
                options[key] = int(os.environ[name])
            except ValueError:
                raise ValueError(f"{name} must be an integer; got {os.environ[name]!r}") from None
    try:
        jax.distributed.initialize(**options)
    except (ValueError, TypeError, RuntimeError) as e:
        raise RuntimeError(f"cannot start the distributed run (--distributed): {e}; set JAX_COORDINATOR_ADDRESS "
                           "(host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a "
                           "cluster manager JAX detects (Slurm, Open MPI, TPU pods)") from None
    return jax.process_index(), jax.process_count()


def shard(items: list, process: int, processes: int) -> list:
    """This process's share of a run's inputs: picture i goes to process i % processes. Every process
    expands and sorts the inputs the same way, so the shares are disjoint and cover every picture."""
    return items[process::processes]


def _check_3d_options(args, pictures: list[Input]) -> None:
    """--fov, --align, --robust and --far belong to --format ply; --align to exactly one picture."""
    given = [name for name, value in (("--fov", args.fov), ("--align", args.align), ("--robust", args.robust),
                                      ("--far", args.far)) if value not in (None, False)]
    if given and "ply" not in args.format:
        raise ValueError(f"{', '.join(given)} apply to point clouds: add ply to -f/--format")
    if args.robust and args.align is None:
        raise ValueError("--robust applies to --align (a robust fit to the known depths)")
    if args.align is not None and len(pictures) != 1:
        raise ValueError(f"--align {args.align}: known depths belong to one picture; this run has "
                         f"{len(pictures)} pictures (run each picture with its own file)")
    if args.smoothing is not None and args.normalize != "running":
        raise ValueError("--smoothing applies to --normalize running (a global mapping has nothing to smooth)")
    if args.smoothing is not None and not 0 <= args.smoothing < 1:
        raise ValueError(f"--smoothing must be in [0, 1); got {args.smoothing:g}")


def _keep_missing(targets: dict, name: str, overwrite: bool, status: Status) -> dict | None:
    """The targets to write for one input: all with --overwrite; else those that do not exist (None: none)."""
    if overwrite:
        return targets
    there = [t for t in targets.values() if t.exists() or t.is_symlink()]
    if len(there) == len(targets):
        status.detail(f"{name}: skipped, {', '.join(map(str, there))} exist{'s' if len(there) == 1 else ''}")
        return None
    if there:
        status.info(f"{name}: {', '.join(map(str, there))} exist{'s' if len(there) == 1 else ''}, "
                    "not replaced (--overwrite replaces)")
    return {f: t for f, t in targets.items() if t not in there}


def cmd_predict(args) -> int:
    from . import geometry, pipeline
    from .atomic import clean_stale_partials
    from .video import is_video

    process, processes = start_distributed(args.distributed)
    status = Status(args.quiet, args.verbose, prefix=f"[process {process}/{processes}] " if processes > 1 else "")
    args.size = args.size or args.height
    found, notes = expand_inputs(args.inputs, recursive=args.recursive)
    for note in notes if process == 0 else []:
        status.info(f"note: {note}")
    if not found:
        raise ValueError("no input pictures found")
    _check_3d_options(args, [i for i in found if not is_video(i.path)])
    # Names come from the whole list, the same in every process; then each process takes its share.
    bases = dict(zip((id(i) for i in found), output_bases(found)))
    mine = shard(found, process, processes)
    if processes > 1:
        status.info(f"{len(mine)} of {len(found)} pictures are this process's share")

    # 1. Inputs: read every header now, so that a missing or unreadable picture is named before any model loads.
    failed = 0
    sources, items, videos = [], [], []
    for i, item in enumerate(mine):
        if is_video(item.path):  # its frames are read when it is processed; here only that it is there
            if item.path.is_file():
                videos.append(item)
            else:
                status.error(f"{item.path}: {'no such file' if not item.path.exists() else 'not a file'}")
                failed += 1
            continue
        try:
            sources.append(pipeline.open_source(item.path, i))
            items.append(item)
        except ImageError as e:
            status.error(f"{e.name}: {e.message}")
            failed += 1
    if args.align is not None and sources:  # the file of known depths is checked before any model loads
        geometry.load_known_depths(args.align, sources[0].size)

    # 2. The output folder: writable, stale temporary files of killed runs removed.
    outdir = Path(args.output)
    _check_writable(outdir)
    resolved_inputs = {i.path.resolve() for i in found}
    plan, todo = {}, []  # source name -> {format: target}; sources with something to write
    skipped = 0
    endings = picture_formats()
    for src, item in zip(sources, items):
        base = bases[id(item)]
        targets = {fmt: outdir / base.parent / f"{base.name}{endings[fmt]}" for fmt in args.format}
        if clash := [str(t) for t in targets.values() if t.resolve() in resolved_inputs]:
            raise ValueError(f"refusing to overwrite input pictures with outputs: {', '.join(clash)}")
        targets = _keep_missing(targets, src.name, args.overwrite, status)
        if targets is None:
            skipped += 1
            continue
        plan[src.name] = targets
        todo.append(src)
    video_todo = []  # (video, {"video" | "frames": target})
    for item in videos:
        base = outdir / bases[id(item)].parent / bases[id(item)].name
        targets = {"video": base.with_name(base.name + ("-side.mp4" if args.side_by_side else "-depth.mp4"))}
        if args.frames:
            targets["frames"] = base.with_name(base.name + ("-depth.npy" if args.frames == "npy" else "-depth-16"))
        if clash := [str(t) for t in targets.values() if t.resolve() in resolved_inputs]:
            raise ValueError(f"refusing to overwrite input files with outputs: {', '.join(clash)}")
        targets = _keep_missing(targets, str(item.path), args.overwrite, status)
        if targets is None:
            skipped += 1
            continue
        video_todo.append((item, targets))
    folders = {t.parent for ts in plan.values() for t in ts.values()} | {t.parent for _, ts in video_todo for t in ts.values()}
    for folder in sorted({outdir} | folders):
        for stale in clean_stale_partials(folder):
            status.detail(f"removed {stale}, left by a killed run")
    what = "input" if videos else "picture"
    if skipped:
        status.info(f"{skipped} {what}{'s' if skipped != 1 else ''} skipped: their outputs exist "
                    "(--overwrite replaces them)")

    # 3. The model, only when there is something to do.
    written, done = [], 0
    if todo or video_todo:
        model = _load_model(args, status)
        if todo:
            written, done = _predict(args, model, todo, plan, status)
        if video_todo:
            video_written, videos_done = _predict_videos(args, model, video_todo, status)
            written, done = written + video_written, done + videos_done
    failed += len(todo) + len(video_todo) - done
    if len(written) == 1:
        summary = f"1 {'depth map' if todo else 'file'} written: {written[0]}"
    elif written:
        summary = f"{done} {what}{'s' if done != 1 else ''} done, {len(written)} files written under {outdir}"
    else:
        summary = f"nothing written to {outdir}"
    extras = ([f"{skipped} skipped"] if skipped else []) + ([f"{failed} failed"] if failed else [])
    status.info(summary + (f" ({', '.join(extras)})" if extras else ""))
    return 1 if failed else 0


def _load_model(args, status: Status):
    import time

    from . import hub, load

    t0 = time.perf_counter()
    model = load(hub.resolve(args.model, progress=not args.quiet), dtype=args.dtype, variant=args.variant,
                 max_depth=args.max_depth)
    c = model.config
    devices = describe_devices(model.devices or None)
    status.info(f"model {c.name} ({c.family.name}) from {model.source}, {args.dtype}, "
                f"on {devices if args.verbose else devices.split(' (')[0]}; loaded in {time.perf_counter() - t0:.1f} s")
    if args.align is not None and c.is_metric:
        raise ValueError(f"--align: {c.name} is a metric model; its point clouds are in metres without alignment")
    return model


def _predict(args, model, todo, plan, status: Status) -> tuple[list[Path], int]:
    """Run the model over `todo`, writing each picture's outputs as soon as its depth is known.
    Returns (the files written, how many pictures got all theirs)."""
    from tqdm import tqdm

    from . import geometry, output, pipeline

    c = model.config
    total = len(todo)
    tty = sys.stderr.isatty() and not args.no_progress and not args.quiet
    if tty:
        status.bar = tqdm(total=total, unit="img", file=sys.stderr)
    written: list[Path] = []
    count = done = 0

    def write_all(r: pipeline.Result) -> list[Path]:
        targets = plan[r.name]
        picture = pipeline.open_source(r.name).load() if {"side", "ply"} & targets.keys() else None
        paths = []
        for fmt, path in targets.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if fmt == "ply":  # metric models: metres; relative: metres with --align, else arbitrary units
                    geometry.save_point_cloud(path, r.depth, picture, fov=args.fov or 60.0, known=args.align,
                                              robust=args.robust, metric=c.is_metric, max_depth=args.far,
                                              source=r.name)
                else:
                    output.write_depth(path, r.depth, fmt, picture=picture, replace=args.overwrite,
                                       metric=c.is_metric)
            except FileExistsError:
                raise ValueError(f"{path} appeared meanwhile; not replaced (--overwrite replaces it)") from None
            except OSError as e:
                raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
            written.append(path)
            paths.append(path)
        return paths

    def on_result(r: pipeline.Result):
        nonlocal count, done
        count += 1
        if r.error is None:
            try:
                paths = write_all(r)
                done += 1
            except ValueError as e:  # ImageError included
                r.error = getattr(e, "message", str(e))
        if r.error is not None:
            status.error(f"{r.name}: {r.error}")
        elif not tty:
            status.info(f"[{count}/{total}] {r.name} -> {', '.join(map(str, paths))}")
        if status.bar is not None:
            status.bar.update(1)

    try:
        pipeline.run(model, todo, batch_size=args.batch_size, keep_aspect_ratio=args.keep_aspect_ratio,
                     size=args.size, bucket=args.bucket, on_result=on_result, keep_depth=False,
                     on_status=status.info)
    finally:
        if status.bar is not None:
            status.bar.close()
            status.bar = None
    return written, done


def _predict_videos(args, model, todo, status: Status) -> tuple[list[Path], int]:
    """Write each video's depth video (and frames) one after the other; a video that fails is reported
    and the next one goes on. Returns (the files and folders written, how many videos got all theirs)."""
    from tqdm import tqdm

    from . import video

    tty = sys.stderr.isatty() and not args.no_progress and not args.quiet
    written: list[Path] = []
    done = 0
    for k, (item, targets) in enumerate(todo, 1):
        for target in targets.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        if tty:
            status.bar = tqdm(unit="frame", file=sys.stderr, desc=item.path.name)
        try:
            r = video.predict_video(model, item.path, targets.get("video"), batch_size=args.batch_size,
                                    normalize=args.normalize, smoothing=args.smoothing,
                                    side_by_side=args.side_by_side,
                                    frames_format=args.frames if "frames" in targets else None,
                                    frames_path=targets.get("frames"), keep_aspect_ratio=args.keep_aspect_ratio,
                                    progress=status.bar.update if status.bar is not None else None)
        except (ValueError, OSError) as e:  # VideoError included: this video is reported, the next one goes on
            message = str(e)
            status.error(message if message.startswith(str(item.path)) else f"{item.path}: {message}")
            continue
        finally:
            if status.bar is not None:
                status.bar.close()
                status.bar = None
        paths = [p for p in (r.video, r.frames_path) if p is not None]
        written += paths
        done += 1
        status.info(f"[{k}/{len(todo)}] {item.path} -> {', '.join(map(str, paths))}: {r.frames} frames "
                    f"{r.size[1]}x{r.size[0]} (model at {r.processed_size[1]}x{r.processed_size[0]}), "
                    f"{r.seconds:.1f} s, {r.frames_per_second:.1f} frames/s")
    return written, done


def cmd_download(args) -> int:
    from . import hub

    path = hub.resolve(args.name, progress=not args.no_progress)  # a release name, or a Hugging Face repo
    print(path)
    return 0


def cmd_bench(args) -> int:
    from . import timing

    return timing.run(args)


def cmd_export(args) -> int:
    from . import export, hub, load

    model = load(hub.resolve(args.model), pretrained_window_sizes=args.pretrained_window_sizes,
                 variant=args.variant, max_depth=args.max_depth)
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
        print(f"verified:  max|exported - dpt-jax| / max|dpt-jax| = {err:.1e} on a random input")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpt-jax", description="MiDaS v3.1 DPT depth models in JAX")
    parser.add_argument("--version", action="version", version=f"dpt-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an original MiDaS checkpoint to a dpt-jax safetensors file")
    p.add_argument("src", help="original .pt or .safetensors checkpoint, Hugging Face folder, name or repo id")
    p.add_argument("-o", "--output", required=True, help="converted .safetensors file (or, --to hf, folder) to write")
    p.add_argument("--to", choices=["dpt-jax", "hf"], default="dpt-jax",
                   help="dpt-jax: one converted .safetensors file; hf: a Hugging Face transformers folder")
    p.add_argument("--overwrite", action="store_true", help="--to hf: replace a non-empty output folder")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D",
                   help="SwinV2 only: override the pretrained window sizes, one per stage (not stored in checkpoints)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the skipped keys")
    add_variant_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a model's config, parameter count and input size")
    p.add_argument("model", help="checkpoint path (original, converted or Hugging Face folder), name or repo id")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D",
                   help="SwinV2 only: override the pretrained window sizes, one per stage")
    add_variant_arguments(p)
    p.set_defaults(func=cmd_info)

    import textwrap

    from . import hub

    p = sub.add_parser(
        "predict", help="write depth maps for pictures", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Relative inverse depth (MiDaS v3.1) for pictures: files, folders and globs.",
        epilog=textwrap.fill(f"Models (-m): {', '.join(hub.known_names())} (the dpt_ prefix may be left out; "
                             f"default {hub.DEFAULT_MODEL}, downloaded on first use), or a checkpoint file.",
                             92) + f"\n\n{NAMING}")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="picture files, folders (their pictures) or globs ('**' matches sub-folders; quote it)")
    p.add_argument("-m", "--model", default=None,
                   help="checkpoint path, Hugging Face folder, official name or Hugging Face repo id "
                        "(default: the smallest, dpt_swin2_tiny_256)")
    p.add_argument("-o", "--output", default="depth", metavar="OUTDIR", help="output folder (default: ./depth)")
    p.add_argument("-f", "--format", type=_formats, default=["color"], metavar="FMT[,FMT...]",
                   help="one or more of: color (inferno colormap PNG, near is bright), gray8 (8-bit PNG), "
                        "png16 (16-bit PNG; these three scaled to each map's own range; a metric model's png16 holds metres x 256), npy (raw float32: inverse depth, or metres for metric models), "
                        "pfm (raw float32 as MiDaS writes it), side (picture and color depth side by side); "
                        "default color")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="process the sub-folders of folders given too, keeping their layout under OUTDIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that exist (default: skip pictures whose outputs exist)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--height", type=_positive, metavar="N",
                      help="network input target N x N instead of the model's native size, as MiDaS's --height "
                           "(sides rounded to the model's multiple, 32 for MiDaS, 14 for Depth Anything; the aspect ratio is kept as --keep-aspect-ratio says)")
    size.add_argument("--size", type=_size, metavar="N|HxW", help="network input target, N x N or H x W")
    p.add_argument("--bucket", action="store_true",
                   help="snap network input sizes to multiples of 64, so pictures of near sizes share one "
                        "compiled program (fewer compiles for mixed folders); the picture is resized to the "
                        "bucket, which changes the depth slightly (see README)")
    p.add_argument("--batch-size", type=_positive, default=4, help="pictures per model call (default 4)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="float32 (exact; default) or bfloat16 matmuls (faster on GPU/TPU and bf16 CPUs)")
    p.add_argument("--keep-aspect-ratio", action=argparse.BooleanOptionalAction, default=None,
                   help="resize keeping the aspect ratio (default: as the original: on for BEiT and Depth "
                        "Anything, off for SwinV2)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it only shows on a terminal; otherwise one line per picture)")
    p.add_argument("--distributed", action="store_true",
                   help="one process per host: join them with jax.distributed.initialize() (JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES, JAX_PROCESS_ID, or a cluster JAX detects) and let each do every "
                        "n-th picture on its own devices; on by itself when those variables are set")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the devices, skipped pictures and removed temporary files")
    add_variant_arguments(p)
    v = p.add_argument_group("videos", "inputs with a video suffix (.mp4, .mov, .mkv, .webm, .avi, ...)")
    v.add_argument("--normalize", choices=["global", "running"], default="global",
                   help="colour mapping, never per frame: global (one min/max over the whole video; default) "
                        "or running (a moving average of the frames' ranges; follows cuts and zooms)")
    v.add_argument("--smoothing", type=float, metavar="A",
                   help="--normalize running: the average's weight of the past, in [0, 1) (default 0.9)")
    v.add_argument("--side-by-side", action="store_true",
                   help="the video shows input | depth, twice as wide (named -side.mp4)")
    v.add_argument("--frames", choices=["png16", "npy"],
                   help="also write the frames: npy (an (n, h, w) float32 stack of raw inverse depth) or png16 "
                        "(a folder of 16-bit PNGs, mapped as the video)")
    g = p.add_argument_group("point clouds", "-f ply: a coloured binary PLY of each picture, camera coordinates")
    g.add_argument("--fov", type=_degrees, metavar="DEG",
                   help="horizontal field of view of the camera in degrees (default 60)")
    g.add_argument("--align", metavar="FILE",
                   help="known depths in metres for the one picture given (.csv rows x,y,depth, .npy or .npz): "
                        "fits scale and shift so the PLY is in metres (relative models; metric ones are already)")
    g.add_argument("--robust", action="store_true",
                   help="--align: a robust fit that ignores wrong known depths (up to about a third)")
    g.add_argument("--far", type=_positive_float, metavar="DEPTH",
                   help="leave out points deeper than this, in the PLY's units (metres for metric models and "
                        "--align; otherwise the arbitrary units 1 nearest .. 10 farthest)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("download", help="fetch an official MiDaS v3.1 checkpoint (or a Hugging Face repo) into the cache")
    p.add_argument("name", help="dpt_beit_large_512, dpt_beit_large_384, dpt_beit_base_384, dpt_swin2_large_384, "
                                "dpt_swin2_base_384 or dpt_swin2_tiny_256 (the dpt_ prefix is optional)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("export", help="write a model as a StableHLO (.stablehlo) or ONNX (.onnx) program")
    p.add_argument("model", help="checkpoint path (original or converted) or official name")
    p.add_argument("-o", "--output", required=True, help="file to write: NAME.stablehlo or NAME.onnx")
    p.add_argument("--size", metavar="HxW", help="network input size, sides multiples of the model's multiple (16 BEiT, "
                   "32 SwinV2, 14 Depth Anything); with --with-preprocessing the default is the original's size "
                   "for the picture size")
    p.add_argument("--batch", default="dynamic", help="batch size, or 'dynamic' (default) for any batch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16 matmuls (StableHLO only); float32 pins full float32 precision")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="take uint8 RGB pictures of one size (--picture-size, default --size) and return depth at "
                        "that size, with the original's resize and normalisation inside")
    p.add_argument("--picture-size", metavar="HxW", help="picture size taken with --with-preprocessing")
    p.add_argument("--pretrained-window-sizes", type=_windows, metavar="A,B,C,D",
                   help="SwinV2 only: the pretrained window sizes, one per stage")
    add_variant_arguments(p)
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the written file against dpt-jax on a random input")
    p.set_defaults(func=cmd_export)


    p = sub.add_parser("bench", help="time dpt-jax on a model with random weights (no checkpoint needed)",
                       description="Compile time, median/min latency and images/s of a model with random weights. "
                                   "The side-by-side comparison with PyTorch is benchmarks/ in the repository.")
    p.add_argument("models", nargs="+", metavar="MODEL[@HxW]",
                   help="preset (beit_large_512, swin2_tiny_256, ...) or mini_beit / mini_swin2, optionally "
                        "@S or @HxW for the input size (default: native)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
