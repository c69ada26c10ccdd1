"""The inputs of `dpt-jax predict` and the names of its outputs.

    expand_inputs(args, recursive)   files, folders, globs and URLs -> [Input] (each file once), notes
    output_bases(inputs)             each input's output name, unique across the run
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}

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
    problem: str | None = None  # why it cannot be an input (a glob matching nothing), reported as a failure
    url: str | None = None  # a picture on the web (http:// or https://): fetched, `path` is only its name

    @property
    def name(self) -> str:
        """How messages name it: the URL, or the path."""
        return self.url or str(self.path)


def _url_input(url: str) -> Input:
    """A picture given by URL, named after the last part of the URL's path (made a safe file name)."""
    from urllib.parse import unquote, urlsplit

    last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in last)[:120].lstrip(".") or "picture"
    problem = None
    from .video import is_video

    if is_video(name):
        problem = "videos are read from files: download it first"
    return Input(Path(name), PurePath(name), problem, url)


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


def expand_inputs(args: list[str], recursive: bool = False, outdir=None) -> tuple[list[Input], list[str]]:
    """([Input], notes for the user): files as given, folders as the pictures and videos inside them
    (sub-folders too with `recursive`), globs expanded; sorted within each argument; each file once
    (by resolved path). When `outdir` (the run's output folder) lies inside a folder given, what is in
    it is not an input; a relative path that would climb out of the output folder ("..") is replaced by
    the file's name."""
    import glob

    from .video import VIDEO_SUFFIXES

    found: list[Input] = []
    notes = []
    from .pictures import is_url

    for a in args:
        p = Path(a)
        if is_url(a):  # never a path: "https://host/x.jpg" would become the folder "https:/host"
            found.append(_url_input(a))
        elif p.is_dir():
            files, skipped = _walk_files(p, recursive)
            taken = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            found += [Input(f, f.relative_to(p)) for f in taken]
            if others := [f for f in files if f not in taken]:
                shown = ", ".join(f.name[:40] for f in others[:5]) + (", ..." if len(others) > 5 else "")
                notes.append(f"{a}: {len(others)} file{'s' if len(others) != 1 else ''} without a picture or video "
                             f"suffix skipped ({shown}); name them one by one to process them")
            if skipped:
                notes.append(f"{a}: {skipped} sub-folder{'s' if skipped != 1 else ''} skipped (--recursive "
                             "processes them, keeping their layout)")
        elif not p.exists() and glob.has_magic(a):
            root, files = _glob(a)
            if not files:  # reported as a failed input
                found.append(Input(p, PurePath(p.name), "the pattern matches no file"))
            found += [Input(f, f.relative_to(root)) for f in files]
        else:
            found.append(Input(p, PurePath(p.name)))
    found = [i if ".." not in i.rel.parts else Input(i.path, PurePath(i.path.name), i.problem, i.url) for i in found]
    if outdir is not None:  # an output folder inside a folder being walked: what is in it is not an input
        out = Path(outdir).resolve()
        walked = [Path(a).resolve() for a in args if Path(a).is_dir()]
        if any(w in out.parents for w in walked):
            outputs = [i for i in found if i.url is None and out in i.path.resolve().parents]
            found = [i for i in found if i not in outputs]
            if outputs:
                notes.append(f"{len(outputs)} file{'s' if len(outputs) != 1 else ''} inside the output folder "
                             f"{outdir} left out (outputs are never inputs)")
    unique, seen, repeats = [], set(), 0
    for item in found:
        key = item.url or item.path.resolve()
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
