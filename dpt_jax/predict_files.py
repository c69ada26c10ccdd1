"""The `dpt-jax predict` run: pictures and videos from files, folders and globs to depth files.

    run(args)   1. expand and read the inputs' headers (a bad one is named before any model loads)
                2. plan the output files (never replacing what exists unless --overwrite)
                3. load the model only if there is something to do, then pictures through
                   `pipeline.run` and videos through `video.predict_video`, writing as results come
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import ImageError
from .inputs import Input, expand_inputs, output_bases
from .output import FORMATS


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


#: the variables that make a run distributed (start_distributed)
DISTRIBUTED_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def start_distributed(requested: bool) -> tuple[int, int]:
    """(this process's index, the number of processes) of a run on many hosts (`predict`, `eval`, `finetune`).

    With --distributed, or when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES or JAX_PROCESS_ID is
    set, `jax.distributed.initialize()` joins the processes (the variables are passed on; on
    clusters JAX detects, such as Slurm, Open MPI and TPU pods, none are needed). `predict` then
    runs each process's share on its own local devices: no arrays cross hosts, so a failing
    process cannot leave the others waiting in a collective (`finetune` shares its arrays across
    the processes: train.py). Otherwise (0, 1), and JAX is not touched.
    """
    if not requested and not any(os.environ.get(n) for n in DISTRIBUTED_VARIABLES):
        return 0, 1
    import jax

    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS must be host:port (the port of process 0, e.g. "
                             f"host0:12345); got {address[:80]!r}")
    timeout = os.environ.get("DPT_JAX_DISTRIBUTED_TIMEOUT", "120")
    if not timeout.isdigit() or int(timeout) < 1:
        raise ValueError(f"DPT_JAX_DISTRIBUTED_TIMEOUT must be a positive number of seconds; got {timeout[:40]!r}")
    options = {"initialization_timeout": int(timeout)}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(name):
            try:
                options[key] = int(os.environ[name])
            except ValueError:
                raise ValueError(f"{name} must be an integer; got {os.environ[name]!r}") from None
    try:
        jax.distributed.initialize(**options)
    except (ValueError, TypeError, RuntimeError) as e:
        raise RuntimeError(f"cannot start the distributed run (--distributed) within {timeout} s "
                           f"(DPT_JAX_DISTRIBUTED_TIMEOUT): {str(e)[:300]}; set JAX_COORDINATOR_ADDRESS "
                           "(host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a "
                           "cluster manager JAX detects (Slurm, Open MPI, TPU pods)") from None
    return jax.process_index(), jax.process_count()


def shard(items: list, process: int, processes: int) -> list:
    """This process's share of a run's inputs: picture i goes to process i % processes. Every process
    expands and sorts the inputs the same way, so the shares are disjoint and cover every picture."""
    return items[process::processes]


def unused_options(args, video_flags: list[bool]) -> list[str]:
    """One line for each group of options given that applies to no input of the run."""
    notes = []
    video_only = [name for name, given in (("--normalize", args.normalize != "global"),
                                           ("--smoothing", args.smoothing is not None),
                                           ("--side-by-side", args.side_by_side), ("--frames", args.frames),
                                           ("--input-size", args.input_size is not None),
                                           ("--streaming", args.streaming)) if given]
    if video_only and not any(video_flags):
        notes.append(f"{', '.join(video_only)} {'applies' if len(video_only) == 1 else 'apply'} to videos; this "
                     "run has none")
    picture_only = [name for name, given in (("-f/--format", args.format != ["color"]),
                                             ("--bucket", args.bucket)) if given]
    if picture_only and any(video_flags):
        notes.append(f"{', '.join(picture_only)} {'applies' if len(picture_only) == 1 else 'apply'} to pictures; "
                     "videos write a depth video (and --frames)")
    return notes


def model_tag(model) -> str:
    """The model in output names: a file's or folder's stem, else the name given (None: the default model)."""
    from .hub import DEFAULT_MODEL

    text = str(model) if model is not None else DEFAULT_MODEL
    tag = Path(text).stem if os.path.exists(text) else text.replace("/", "--")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)[:80]


def camera_options(args) -> dict:
    """The camera the point clouds use, as `geometry.save_point_cloud` keywords: {} (its default, a 60 degree
    field of view), {"fov": deg}, or {"intrinsics": (fx, fy, cx, cy) or a function of the picture size}."""
    explicit = {k: getattr(args, k) for k in ("fx", "fy", "cx", "cy")}
    given = [k for k, v in explicit.items() if v is not None]
    chosen = [name for name, on in (("--fov", args.fov is not None), ("--focal", args.focal is not None),
                                    ("--fx ...", bool(given))) if on]
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} each give the camera: choose one")
    if given and len(given) != 4:
        missing = ", ".join(f"--{k}" for k in explicit if k not in given)
        raise ValueError(f"--fx, --fy, --cx and --cy go together; missing {missing}")
    if given:
        return {"intrinsics": tuple(explicit[k] for k in ("fx", "fy", "cx", "cy"))}
    if args.focal is not None:
        f = args.focal
        return {"intrinsics": lambda h, w: (f, f, w / 2, h / 2)}
    return {"fov": args.fov} if args.fov is not None else {}


def _check_3d_options(args, pictures: list[Input]) -> None:
    """--fov, --align, --robust and --far belong to --format ply; --align to exactly one picture."""
    camera_options(args)  # a valid camera choice
    # --fov and --focal also give Depth Anything 3 metric its metres: checked once the model is known
    options = [("--fx", args.fx), ("--fy", args.fy), ("--cx", args.cx),
               ("--cy", args.cy), ("--align", args.align), ("--robust", args.robust), ("--far", args.far)]
    given = [name for name, value in options if value not in (None, False)]
    if given and "ply" not in args.format:
        raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to point clouds: add ply "
                         "to -f/--format")
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


def run(args) -> int:
    process, processes = start_distributed(args.distributed)
    # The folders this run creates for its outputs are removed again if it ends with nothing in them (a run
    # on many hosts leaves them: another process may still be writing there).
    created = _missing_folders(Path(args.output)) if processes == 1 else []
    try:
        return _run(args, process, processes)
    finally:
        for folder in created:  # deepest first; a folder with anything in it stays
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    folder = folder.absolute()
    while not folder.exists() and not folder.is_symlink() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


def _run(args, process: int, processes: int) -> int:
    from . import geometry, pictures
    from .atomic import clean_stale_partials
    from .video import is_video

    if args.camera is not None:
        return _run_camera(args, Status(args.quiet, args.verbose))
    if not args.inputs:
        raise ValueError("give the inputs (picture or video files, folders, globs, URLs) or --camera")
    status = Status(args.quiet, args.verbose, prefix=f"[process {process}/{processes}] " if processes > 1 else "")
    args.size = args.size or args.height
    found, notes = expand_inputs(args.inputs, recursive=args.recursive, outdir=args.output)
    for note in notes if process == 0 else []:
        status.info(f"note: {note}")
    if not found:
        from .inputs import IMAGE_SUFFIXES
        from .video import VIDEO_SUFFIXES

        given = ", ".join(args.inputs[:5]) + (", ..." if len(args.inputs) > 5 else "")
        raise ValueError(f"no input pictures or videos found in {given} (taken by suffix: "
                         f"{' '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}"
                         f"{'; sub-folders need --recursive' if not args.recursive else ''})")
    _check_3d_options(args, [i for i in found if not is_video(i.path)])
    if args.views and (processes > 1 or any(is_video(i.path) for i in found) or len(found) < 2):
        raise ValueError("--views: the pictures of one scene, at least two, in one process (no videos, no "
                         "--distributed)")
    if getattr(args, "cameras", None) is not None:  # read and checked before any model loads
        if not args.views:
            raise ValueError("--cameras gives the known cameras of a scene's views: add --views")
        from .views import load_cameras

        args.known_cameras = dict(zip((i.name for i in found),
                                      zip(*load_cameras(args.cameras, [i.name for i in found]))))
    if process == 0:
        for note in unused_options(args, [is_video(i.path) for i in found]):
            status.info(f"note: {note}")
    # Names come from the whole list, the same in every process; then each process takes its share.
    bases = dict(zip((id(i) for i in found), output_bases(found)))
    if args.suffix_model:  # <stem>-<model>: the model as the user named it (a file's stem, or the name)
        tag = model_tag(args.model)
        bases = {k: b.with_name(f"{b.name}-{tag}") for k, b in bases.items()}
    mine = shard(found, process, processes)
    if processes > 1:
        status.info(f"{len(mine)} of {len(found)} pictures are this process's share")

    # 1. Inputs: read every header now, so that a missing or unreadable picture is named before any model loads.
    failed = 0
    sources, items, videos = [], [], []
    for i, item in enumerate(mine):
        if item.problem is not None:
            status.error(f"{item.name}: {item.problem}")
            failed += 1
            continue
        if is_video(item.path):  # its frames are read when it is processed; here only that it is there
            if item.path.is_file():
                videos.append(item)
            else:
                status.error(f"{item.path}: {'no such file' if not item.path.exists() else 'not a file'}")
                failed += 1
            continue
        try:
            sources.append(pictures.open_source(item.url or item.path, i))
            items.append(item)
            if sources[-1].note is not None:
                status.info(f"note: {item.name}: {sources[-1].note}")
        except ImageError as e:
            status.error(f"{e.name}: {e.message}")
            failed += 1
    if args.align is not None and sources:  # the file of known depths is checked before any model loads
        geometry.load_known_depths(args.align, sources[0].size)
    prompt = _read_prompt(args, sources, videos) if args.prompt_depth is not None else None

    # 2. The output folder: writable, stale temporary files of killed runs removed.
    outdir = Path(args.output)
    _check_writable(outdir)
    resolved_inputs = {i.path.resolve() for i in found if i.url is None}
    plan, todo = {}, []  # source name -> {format: target}; sources with something to write
    skipped = 0
    endings = {name: f.ending for name, f in FORMATS.items()}
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
            targets["frames"] = base.with_name(base.name + FORMATS[args.frames].frames_ending)
        if clash := [str(t) for t in targets.values() if t.resolve() in resolved_inputs]:
            raise ValueError(f"refusing to overwrite input files with outputs: {', '.join(clash)}")
        targets = _keep_missing(targets, str(item.path), args.overwrite, status)
        if targets is None:
            skipped += 1
            continue
        video_todo.append((item, targets))
    folders = ({t.parent for ts in plan.values() for t in ts.values()}
               | {t.parent for _, ts in video_todo for t in ts.values()})
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
        if todo and model.config.is_temporal:  # each picture is reported; the videos go on
            for src in todo:
                status.error(f"{src.name}: {model.config.name} is a video model (its frames attend to each other); "
                             "give it videos, and pictures to a picture model")
            failed, todo = failed + len(todo), []
        if args.streaming and not model.config.is_temporal:
            raise ValueError(f"--streaming applies to video models; {model.config.name} runs each frame alone")
        if model.config.prompt and args.prompt_depth is None:
            raise ValueError(f"{model.config.name} is a Prompt Depth Anything model: give the picture's metric depth "
                             "with --prompt-depth FILE (16-bit PNG in millimetres, .npy in metres)")
        if prompt is not None and not model.config.prompt:
            raise ValueError(f"--prompt-depth: {model.config.name} takes no depth prompt (Prompt Depth Anything "
                             "models do)")
        if todo and args.views:
            written, done = _predict_scene(args, model, todo, plan, outdir, status)
        elif todo:
            written, done = _predict(args, model, todo, plan, status, prompt)
        if video_todo:
            video_written, videos_done = _predict_videos(args, model, video_todo, status)
            written, done = written + video_written, done + videos_done
    failed += len(todo) + len(video_todo) - done
    if len(written) == 1:
        summary = f"1 file written: {written[0]}"
    elif written:
        summary = f"{done} {what}{'s' if done != 1 else ''} done, {len(written)} files written under {outdir}"
    else:
        summary = f"nothing written to {outdir}"
    extras = ([f"{skipped} skipped"] if skipped else []) + ([f"{failed} failed"] if failed else [])
    status.info(summary + (f" ({', '.join(extras)})" if extras else ""))
    return 1 if failed else 0


def _run_camera(args, status: Status) -> int:
    """predict --camera N: the camera is opened before the model loads; frames until Ctrl-C (or the camera ends)."""
    from . import camera

    if args.inputs:
        raise ValueError("--camera takes no inputs: its frames are the input")
    if args.distributed:
        raise ValueError("--camera runs on one host; leave out --distributed")
    device = camera.Device(args.camera)
    try:
        model = _load_model(args, status)
        show = camera.window()
        status.info(f"camera {args.camera}: depth " + ("in a window (Esc or q ends)" if show is not None else
                                                         f"frames written to {args.output} (Ctrl-C ends)"))
        done = camera.run(model, device, None if show is not None else args.output, show=show, cmap=args.cmap,
                          on_status=status.info)
    finally:
        device.close()
    status.info(f"{done} camera frame{'s' if done != 1 else ''} done" +
                ("" if show is not None else f", written to {args.output}"))
    return 0


def _read_prompt(args, sources: list, videos: list):
    """The checked depth prompt of --prompt-depth, for the one picture of the run (before any model loads)."""
    from .prompt_input import check_fits, read_prompt

    if videos or len(sources) != 1:
        raise ValueError(f"--prompt-depth {args.prompt_depth}: a depth prompt belongs to one picture; this run has "
                         f"{len(sources)} picture(s) and {len(videos)} video(s) (run each picture with its own prompt)")
    prompt = read_prompt(args.prompt_depth)
    check_fits(prompt, sources[0].size, args.prompt_depth)
    return prompt


def _load_model(args, status: Status):
    import time

    from .model import load
    from .options import model_options

    t0 = time.perf_counter()
    model = load(args.model, dtype=args.dtype, progress=not args.quiet, **model_options(args))
    c = model.config
    devices = describe_devices(model.devices or None)
    status.info(f"model {c.name} ({c.family.title}) from {model.source}, {args.dtype}, "
                f"on {devices if args.verbose else devices.split(' (')[0]}; loaded in {time.perf_counter() - t0:.1f} s")
    if args.align is not None and c.is_metric:
        raise ValueError(f"--align: {c.name} is a metric model; its point clouds are in metres without alignment")
    _check_model_options(args, c)
    return model


def _predict_scene(args, model, todo, plan, outdir: Path, status: Status) -> tuple[list[Path], int]:
    """--views: the pictures as one scene (views.py); each view's depth formats at the network's size, the
    cameras as JSON beside the first view's outputs and, with -f ply, one merged point cloud there."""
    import json

    import numpy as np

    from . import geometry, output, views
    from .atomic import atomic_write

    known = getattr(args, "known_cameras", None)
    cameras = {}
    if known is not None:
        cameras = {"extrinsics": np.stack([known[src.name][0] for src in todo]),
                   "intrinsics": np.stack([known[src.name][1] for src in todo])}
    scene = views.predict_views(model, [src.name for src in todo], **cameras)
    written: list[Path] = []
    first = plan[todo[0].name]
    anchor = next(iter(first.values()))
    stem = anchor.name[:-len(FORMATS[next(iter(first))].ending)]
    cameras = anchor.with_name(f"{stem}-cameras.json")
    record = {"views": [{"picture": name, "network_size": list(scene.depth.shape[1:]),
                         "world_to_camera": e.tolist(), "intrinsics": k.tolist()}
                        for name, e, k in zip(scene.names, scene.extrinsics.astype(float),
                                              scene.intrinsics.astype(float))],
              "frame": ("world_to_camera (3x4) as given (--cameras), OpenCV camera axes; intrinsics the given ones "
                        "in pixels of the network's size; depth in the scale of the given poses" if known is not None
                        else "world_to_camera (3x4) as the model estimates the poses, OpenCV camera axes; intrinsics "
                        "in pixels of the network's size; depth and translations share one unknown scale")}
    try:
        with atomic_write(cameras, ".json", replace=args.overwrite) as f:
            f.write((json.dumps(record, indent=1) + "\n").encode())
    except FileExistsError:
        raise ValueError(f"{cameras} exists; not replaced (--overwrite replaces it)") from None
    written.append(cameras)
    for i, src in enumerate(todo):
        for fmt, path in plan[src.name].items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "ply":
                if i == 0:
                    points, colours, threshold = views.scene_points(scene)
                    comments = [f"dpt-jax point cloud of a scene of {len(todo)} views (see {cameras.name})",
                                "axes: the first view's camera, x right, y down, z forward (OpenCV); units: "
                                + ("those of the given poses" if known is not None else "the scene's relative depth"),
                                f"confidence threshold {threshold:.6g}"]
                    written.append(geometry.write_ply(path, points, colours, comments, replace=args.overwrite))
                continue
            written.append(output.write_depth(path, scene.depth[i], fmt, picture=scene.images[i],
                                              replace=args.overwrite, metric=output.units_of(model.config),
                                              cmap=args.cmap))
        status.info(f"[{i + 1}/{len(todo)}] {src.name}: view {i + 1} of the scene")
    return written, len(todo)


def _scene_ply(model, name: str, path: Path, args) -> Path:
    """-f ply of one picture with a DA3 any-view model: the picture as a scene of one view (views.py), so the point
    cloud takes the field of view the model estimates; points at the network's size, in relative depth."""
    from . import geometry, views

    scene = views.predict_views(model, [name])
    points, colours, threshold = views.scene_points(scene)
    k = scene.intrinsics[0]
    comments = ["dpt-jax point cloud of one view, with the camera the model estimates",
                "axes: camera coordinates, x right, y down, z forward (OpenCV); units: relative depth",
                f"intrinsics: fx {k[0, 0]:.9g} fy {k[1, 1]:.9g} cx {k[0, 2]:.9g} cy {k[1, 2]:.9g} pixels of the "
                f"{scene.depth.shape[2]}x{scene.depth.shape[1]} network input", f"confidence threshold {threshold:.6g}"]
    return geometry.write_ply(path, points, colours, comments, replace=args.overwrite)


def _check_model_options(args, c) -> None:
    """The options that depend on the model: the sky mask, the focal length, point clouds of relative depth."""
    camera = [name for name, value in (("--fov", args.fov), ("--focal", args.focal)) if value is not None]
    if camera and "ply" not in args.format and not c.focal_metric_divisor:
        raise ValueError(f"{' and '.join(camera)} {'applies' if len(camera) == 1 else 'apply'} to point clouds "
                         f"(-f ply) and to models whose metres need the focal length (da3_metric_large); "
                         f"{c.name} is neither")
    if "sky" in args.format and not c.sky_head:
        raise ValueError(f"-f sky: {c.name} has no sky output (Depth Anything 3 monocular and metric have)")
    if args.views and c.head != "dualdpt":
        raise ValueError(f"--views: {c.name} sees one picture at a time; a scene needs a Depth Anything 3 any-view "
                         "model (da3_small, da3_base, da3_large, da3_giant)")
    if "ply" in args.format and c.sky_head and not c.is_metric:
        raise ValueError(f"-f ply: {c.name} gives depth of unknown scale; its metric sibling gives metres "
                         "(da3_metric_large)")


def _focal_given(args) -> float | None:
    """The focal length (pixels) the user gave: --focal, or the mean of --fx and --fy."""
    if args.focal is not None:
        return args.focal
    return (args.fx + args.fy) / 2 if args.fx is not None and args.fy is not None else None


def _predict(args, model, todo, plan, status: Status, prompt=None) -> tuple[list[Path], int]:
    """Run the model over `todo`, writing each picture's outputs as soon as its depth is known.
    `prompt`: the checked depth prompt of the one picture, for a prompted model.
    Returns (the files written, how many pictures got all theirs)."""
    from tqdm import tqdm

    from . import geometry, output, pipeline
    from .model import PromptedModel

    c = model.config
    total = len(todo)
    tty = sys.stderr.isatty() and not args.no_progress and not args.quiet
    if tty:
        status.bar = tqdm(total=total, unit="img", file=sys.stderr)
    written: list[Path] = []
    count = done = 0
    by_name = {src.name: src for src in todo}

    def write_all(r: pipeline.Result) -> list[Path]:
        targets = {fmt: path for fmt, path in plan[r.name].items() if fmt != "sky"}  # the sky: its own pass
        needs_picture = any(FORMATS[fmt].needs_picture for fmt in targets)
        picture = by_name[r.name].load() if needs_picture else None  # decoded again (a URL is not fetched again)
        paths = []
        for fmt, path in targets.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if fmt == "ply" and c.head == "dualdpt" and not (args.fov or args.focal or args.fx):
                    _scene_ply(model, r.name, path, args)  # any-view: the camera it estimates (a second pass)
                elif fmt == "ply":  # metric models: metres; relative: metres with --align, else arbitrary units
                    camera = camera_options(args)
                    if r.focal is not None and not camera:  # the focal length that gave the metres (EXIF, default)
                        camera = {"intrinsics": (r.focal, r.focal, r.depth.shape[1] / 2, r.depth.shape[0] / 2)}
                    if callable(camera.get("intrinsics")):
                        camera["intrinsics"] = camera["intrinsics"](*r.depth.shape)
                    geometry.save_point_cloud(path, r.depth, picture, **camera, known=args.align,
                                              robust=args.robust, metric=c.is_metric, max_depth=args.far,
                                              source=r.name, replace=args.overwrite, stride=args.ply_stride)
                else:
                    output.write_depth(path, r.depth, fmt, picture=picture, replace=args.overwrite,
                                       metric=output.units_of(c), cmap=args.cmap)
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
            failed_names.add(r.name)
        else:
            if r.focal is not None:  # always said: the metres depend on it
                status.info(f"{r.name}: focal length {r.focal:.1f} px ({r.focal_source})")
            if not tty:
                status.info(f"[{count}/{total}] {r.name} -> {', '.join(map(str, paths))}")
        if status.bar is not None:
            status.bar.update(1)

    options = dict(batch_size=args.batch_size, keep_aspect_ratio=args.keep_aspect_ratio, size=args.size,
                   bucket=args.bucket, keep_depth=False, on_status=status.info)
    sky_only = all(set(plan[src.name]) == {"sky"} for src in todo)
    failed_names: set[str] = set()
    try:
        if sky_only:
            done = total
        else:
            runner = model if prompt is None else PromptedModel(model, prompt)  # the one picture's prompt with it
            pipeline.run(runner, todo, on_result=on_result, focal=_focal_given(args), fov=args.fov, **options)
        if any("sky" in plan[src.name] for src in todo):
            skies = [src for src in todo if "sky" in plan[src.name]]
            done -= len(_write_skies(model, skies, plan, args, written, status, options) - failed_names)
    finally:
        if status.bar is not None:
            status.bar.close()
            status.bar = None
    return written, done


def _write_skies(model, todo, plan, args, written: list[Path], status: Status, options) -> set[str]:
    """The sky masks (-f sky) of `todo`, a second pass through the sky branch; returns the names that failed."""
    from . import output, pipeline
    from .dpt import SKY_MASK_FROM

    failed: set[str] = set()

    def on_result(r: pipeline.Result):
        path = plan[r.name]["sky"]
        if r.error is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                output.write_sky(path, r.depth >= SKY_MASK_FROM, replace=args.overwrite)
                written.append(path)
                status.detail(f"{r.name} -> {path}")
                return
            except FileExistsError:
                r.error = f"{path} appeared meanwhile; not replaced (--overwrite replaces it)"
            except OSError as e:
                r.error = f"cannot write {path}: {e.strerror or e}"
        failed.add(r.name)
        status.error(f"{r.name}: {r.error}")

    pipeline.run(model.sky_score(), todo, on_result=on_result, **options)
    return failed


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
            r = video.predict_video(model, item.path, targets.get("video"), batch_size=args.batch_size, cmap=args.cmap,
                                    on_status=status.info, replace=args.overwrite,
                                    normalize=args.normalize, smoothing=args.smoothing,
                                    side_by_side=args.side_by_side,
                                    frames_format=args.frames if "frames" in targets else None,
                                    frames_path=targets.get("frames"), keep_aspect_ratio=args.keep_aspect_ratio,
                                    size=args.input_size or args.size, streaming=args.streaming,
                                    progress=status.bar.update if status.bar is not None else None)
        except FileExistsError as e:  # another run wrote it meanwhile: kept
            status.error(f"{item.path}: {e.filename or e} appeared meanwhile; not replaced (--overwrite replaces it)")
            continue
        except (ValueError, OSError) as e:  # VideoError included: this video is reported, the next one goes on
            message = str(e)
            status.error(message if message.startswith(str(item.path)) else f"{item.path}: {message}")
            if getattr(e, "kept", None) is not None:  # the frames decoded before a failure, written as asked
                written.append(e.kept)
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


def describe_devices(devices=None) -> str:
    import jax

    devices = list(devices or jax.local_devices())
    kinds = sorted({d.device_kind for d in devices})
    return f"{len(devices)} x {', '.join(kinds)} ({', '.join(str(d) for d in devices)})"
