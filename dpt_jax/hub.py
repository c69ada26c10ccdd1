"""Model names to local files: the released checkpoints, a cache of them, Hugging Face Hub repositories.

    >>> from dpt_jax import hub
    >>> path = hub.resolve("swin2_tiny_256")   # downloaded on first use, then taken from the cache
    >>> path = hub.resolve("my/own/file.pt")   # an existing file is returned as it is

The hub fetches bytes and returns paths; it reads no checkpoint. Whether a file holds the model
its name promises is the checkpoint service's question (`checkpoint.load_checkpoint`), which
passes its check to `download(name, check=...)`: a file is kept (and stamped) only once the
check passed, and the check's own reading of the file is the load's (the file is read once).

Names
-----
``REGISTRY`` maps each released model (a preset name of ``registry.PRESETS``) to its
``family.Release``, gathered from every encoder family: where it is published, its licence and
its approximate size (the byte total of its tensors, for messages and progress only).
Other spellings of a name (``beit_large_512``, ``da2_metric_indoor_vits``) are resolved by
``registry.canonical_name``; ``<name>_hf`` is the model's Hugging Face transformers-layout repo.
``register()`` adds an entry (a mirror, a fine-tuned checkpoint, a test fixture).

Transports, one per source
--------------------------
- a ``Release`` with a ``url`` (the MiDaS v3.1 GitHub release assets): dpt-jax's own resumable
  download (``download.fetch``) into its cache;
- a ``Release`` with a ``repo`` (Depth Anything's files on the Hub) and any Hub repository in the
  transformers layout (``<name>_hf``, or a repo id "org/name"): ``huggingface_hub``, with its
  cache (``$HF_HUB_CACHE``), its checksum-verified downloads, tokens and offline mode
  (``HF_HUB_OFFLINE=1``: the cache only, no network).

Cache
-----
``cache_dir()`` is ``$DPT_JAX_CACHE`` when set, else ``$XDG_CACHE_HOME/dpt-jax`` (when that is
an absolute path), else ``~/.cache/dpt-jax``. It holds, per model:

- ``<file>``: the checkpoint (the release's file name); only ever a complete file that passed
  the SHA-256 pin of its release (``Release.sha256``; else the archive check, CRC-32 of every
  member) and the caller's check;
- ``<file>.verified``: a small stamp (size and modification time of the checked file, and the
  hash it was found to have), so later uses skip the checks; a file that changed since is
  checked again;
- ``hub/<name>.verified``: the same stamp for a release file in huggingface_hub's cache, whose
  bytes were checked against the pin, else against the content hash its blob is named by;
- while downloading, ``<file>.partial`` and ``<file>.partial.json`` (see ``download.fetch``),
  and ``<file>.lock``, which serialises the processes downloading one model (removed as it is let go).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Callable

from . import registry
from .download import (
    LOCK_TIMEOUT,
    STALL_BYTES,
    STALL_TIMEOUT,
    fetch,
    file_digest,
    human_size,
    locked,
    unlink,
    write_text,
)
from .errors import CheckpointError, DownloadError, UnknownModelError
from .family import Release

DEFAULT_MODEL = "dpt_swin2_tiny_256"  # the smallest (about 172 MB) and fastest MiDaS model
HF_SUFFIX = "_hf"  # "<model>_hf": the model's transformers-layout repository on the Hub

REGISTRY: dict[str, Release] = {r.name: r for f in registry.FAMILIES.values() for r in f.releases}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
_NAME_RX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

Check = Callable[[Path], object]  # raises CheckpointError when the file is not the model's


# ---------------------------------------------------------------------------------------------
# Names


def register(entry: Release, *, replace: bool = False) -> Release:
    """Add `entry` to the registry (`replace=True` to overwrite an entry of the same name)."""
    if not _NAME_RX.fullmatch(entry.name):
        raise ValueError(f"model names are letters, digits, '_', '.' and '-'; got {entry.name!r}")
    if (entry.url is None) == (entry.repo is None):
        raise ValueError(f"{entry.name}: a release has a url or a repo (one of them)")
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"{entry.name!r} is already registered (pass replace=True to overwrite it)")
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def lookup(name: str) -> Release | None:
    """The release called `name` (any spelling `registry.canonical_name` knows), or None.

    Releases of families registered after this module was imported are found too.
    """
    canonical = registry.canonical_name(name) or name
    found = REGISTRY.get(name) or REGISTRY.get(canonical)
    if found is None and canonical in registry.PRESETS:
        found = next((r for r in registry.PRESETS[canonical].family.releases if r.name == canonical), None)
    return found


def get_entry(name: str) -> Release:
    """The release of `name`; UnknownModelError lists the known names."""
    entry = lookup(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}; {known_names_text()}")
    return entry


def hf_repo(name: str) -> str | None:
    """The transformers-layout Hub repository `name` stands for ("<model>_hf"), or None."""
    if not name.endswith(HF_SUFFIX):
        return None
    model = registry.canonical_name(name[:-len(HF_SUFFIX)])
    return registry.PRESETS[model].family.hf_repos.get(model) if model in registry.PRESETS else None


def known_names_text() -> str:
    """The downloadable names, each once, grouped by family (for messages)."""
    groups = []
    for family in registry.FAMILIES.values():
        names = [r.name for r in REGISTRY.values() if r.name in registry.PRESETS
                 and registry.PRESETS[r.name].family is family]
        if names:
            groups.append(f"{family.title}: {', '.join(names)}")
    others = [n for n in REGISTRY if n not in registry.PRESETS]
    if others:
        groups.append(f"registered: {', '.join(others)}")
    return ("known models: " + "; ".join(groups) + f" (each also as <name>{HF_SUFFIX}, its transformers-layout "
            "repository; the 'dpt_' prefix of MiDaS names may be left out)")


# ---------------------------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    """`$DPT_JAX_CACHE`, else `$XDG_CACHE_HOME/dpt-jax` (absolute paths only), else `~/.cache/dpt-jax`."""
    explicit = os.environ.get("DPT_JAX_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "dpt-jax"
    return Path.home() / ".cache" / "dpt-jax"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_ok(path: Path, entry: Release, *, digest: str | None = None, stamp_path: Path | None = None) -> bool:
    """Whether `path` is unchanged since it was checked as `entry` (and, when `digest`, found to have that hash)."""
    try:
        st = path.stat()
        stamp = json.loads((stamp_path or _stamp_path(path)).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("model") == entry.name
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and stamp.get("path", str(path)) == str(path)
        and (digest is None or stamp.get("digest") == digest)
    )


def _write_stamp(path: Path, entry: Release, url: str | None, digest: str | None = None, *,
                 stamp_path: Path | None = None) -> None:
    st = path.stat()
    stamp = {"model": entry.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "url": url, "digest": digest}
    if stamp_path is not None:  # a stamp kept apart from its file (Hub files: their cache is huggingface_hub's)
        stamp["path"] = str(path)
    write_text(stamp_path or _stamp_path(path), json.dumps(stamp, indent=1))


def _digest_of(path: Path, digest: str) -> str:
    """The hash of `path` in the form of `digest`: "sha256:<hex>" or "git-sha1:<hex>" (a git blob's id)."""
    kind = digest.split(":", 1)[0]
    if kind == "git-sha1":
        return "git-sha1:" + file_digest(path, "sha1", b"blob %d\0" % path.stat().st_size)
    return "sha256:" + file_digest(path)


def _pinned(entry: Release) -> str | None:
    return None if entry.sha256 is None else f"sha256:{entry.sha256}"


def _way_out(entry: Release, delete: str) -> str:
    return (f"Delete {delete} to download {entry.name} again, or pass the file's path instead of the name "
            "(-m PATH, dpt_jax.load(PATH)) to load it as your own file")


def cached_path(name: str, *, cache=None) -> Path | None:
    """The cached file of model `name` if the cache holds a checked copy, else None (no network, no check run)."""
    entry = get_entry(name)
    path = (Path(cache) if cache is not None else cache_dir()) / entry.file
    return path if _stamp_ok(path, entry, digest=_pinned(entry)) else None


def check_archive(path) -> None:
    """A zip checkpoint's members against their CRC-32s (CheckpointError); other files pass."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
            raise CheckpointError(path, f"damaged zip archive: {e}") from None
        if bad is not None:
            raise CheckpointError(path, f"damaged data: archive member {bad!r} does not match its CRC-32")


def _checked(path: Path, check: Check | None, *, hashed: bool = False) -> None:
    """The archive's CRC-32s (unless `hashed`: its SHA-256 already covered every byte), then `check`."""
    if not hashed:
        check_archive(path)
    if check is not None:
        check(path)


def _pin_mismatch(path: Path, entry: Release) -> str | None:
    """The message for a file that is not the pinned one (its hash differs), else None; unpinned files pass."""
    expected = _pinned(entry)
    if expected is None:
        return None
    actual = _digest_of(path, expected)
    if actual == expected:
        return None
    return (f"is not the published {entry.file} of {entry.name}: its SHA-256 is {actual.split(':')[1]}, the "
            f"published file's is {entry.sha256}")


# ---------------------------------------------------------------------------------------------
# Downloads


def download(name: str, *, check: Check | None = None, cache=None, progress: bool = True, url: str | None = None,
             timeout: float = 60.0, retries: int = 3, stall_timeout: float = STALL_TIMEOUT,
             stall_bytes: int = STALL_BYTES, lock_timeout: float = LOCK_TIMEOUT) -> Path:
    """The path of the checkpoint of model `name`, downloading it if needed.

    - `check(path)`: raises CheckpointError when the file is not the model's (the checkpoint
      service passes one that reads the file as the model); run on a new or changed file before
      it is kept, after the archive's own CRC check. A failing file is deleted.
    - `cache`: the cache directory (default: `cache_dir()`).
    - `progress`: report on stderr (a progress bar when stderr is a terminal, one line otherwise).
    - `url`: download from here instead of the registry's URL (a mirror); the file must still
      be the registry's model. A cached copy is used without any network access, whatever `url`.
    - `timeout`, `retries`, `stall_timeout`, `stall_bytes`, `lock_timeout`: see `download.fetch`
      and `download.locked`.

    A pinned release (`Release.sha256`) must have that SHA-256: checked once the file is complete
    (a resumed download too) and on every new or changed cached file; a cached file that differs
    is refused and kept (it may be the user's own file; the error says how to go on).
    Releases published in a Hub repository are fetched with huggingface_hub into its cache; their
    bytes are checked against the pin, else against the content hash huggingface_hub names the
    cached blob by (`_hub_content_checked`), once per changed file; `check` runs on every call.
    Raises DownloadError (naming the URL) when the file cannot be fetched (partial bytes are
    kept for the next attempt to resume from), and CheckpointError when the fetched file is not
    the model's checkpoint (it is then deleted).
    """
    entry = get_entry(name)
    directory = Path(cache) if cache is not None else cache_dir()
    if entry.repo is not None and url is None:
        return _hub_file(entry, check, progress, directory)
    url = url or entry.url
    dest = directory / entry.file
    pin = _pinned(entry)
    if _stamp_ok(dest, entry, digest=pin):
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with locked(dest.with_name(dest.name + ".lock"), partial, url, progress, lock_timeout):
        if _stamp_ok(dest, entry, digest=pin):  # another process finished it while we waited
            return dest
        if dest.is_file():  # put there by hand, or the stamp is stale: check it instead of fetching
            if (wrong := _pin_mismatch(dest, entry)) is not None:  # kept: it may be the user's own file
                unlink(_stamp_path(dest))
                raise CheckpointError(dest, f"{wrong}. {_way_out(entry, str(dest))}")
            try:
                _checked(dest, check, hashed=pin is not None)
                _write_stamp(dest, entry, None, pin)
                return dest
            except CheckpointError as e:
                if progress:
                    print(f"dpt-jax: the cached {dest} is damaged ({e.message.splitlines()[0]}); "
                          "downloading it again", file=sys.stderr)
                unlink(dest, _stamp_path(dest))
        unlink(_stamp_path(dest))

        print(f"dpt-jax: {entry.name} is published under the licence {entry.licence}", file=sys.stderr)
        if progress and not sys.stderr.isatty():
            print(f"dpt-jax: downloading {entry.name} (about {human_size(entry.approx_bytes)}) from {url} to {dest}",
                  file=sys.stderr)
        fetch(url, partial, desc=entry.name, approx=entry.approx_bytes, progress=progress,
              timeout=timeout, retries=retries, stall_timeout=stall_timeout, stall_bytes=stall_bytes)
        if (wrong := _pin_mismatch(partial, entry)) is not None:  # complete now: resumed bytes are hashed too
            unlink(partial)
            raise CheckpointError(
                dest, f"the file downloaded from {url} {wrong}; it was deleted. Run the download again; if it fails "
                f"the same way, that URL now serves another file: download it yourself and pass its path instead "
                f"of the name (-m PATH, dpt_jax.load(PATH)) to load it as your own file")
        try:
            _checked(partial, check, hashed=pin is not None)
        except CheckpointError as e:
            unlink(partial)
            raise CheckpointError(
                dest,
                f"the file downloaded from {url} is not a valid {entry.name} checkpoint and was deleted: "
                f"{e.message}\nRun the download again; if it fails the same way, the file at that URL is not "
                f"the {entry.name} checkpoint.",
            ) from None
        os.replace(partial, dest)
        _write_stamp(dest, entry, url, pin)
    return dest


def _hub_file(entry: Release, check: Check | None, progress: bool, directory: Path) -> Path:
    """A release file of a Hub repository, through huggingface_hub (its cache, offline mode, tokens)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"{entry.subfolder}/{entry.file}" if entry.subfolder else entry.file
    url = f"{constants.ENDPOINT}/{'spaces/' if entry.repo_type == 'space' else ''}{entry.repo}/{where}"
    if not constants.HF_HUB_OFFLINE:
        print(f"dpt-jax: {entry.name} is published under the licence {entry.licence}", file=sys.stderr)
    try:
        path = Path(hf_hub_download(entry.repo, entry.file, subfolder=entry.subfolder or None,
                                    repo_type=entry.repo_type))
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise DownloadError(url, f"not found on the Hub ({type(e).__name__})") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise DownloadError(url, f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; download "
                                 f"it where the network is reachable, or pass the file's path instead of the "
                                 f"name (-m PATH)") from None
    except OSError as e:
        raise DownloadError(url, f"{type(e).__name__}: {str(e)[:300]}") from None
    hashed = _hub_content_checked(path, entry, directory, progress)
    _checked(path, check, hashed=hashed)
    return path


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_HEX = re.compile(r"[0-9a-f]{40}")


def _hub_content_checked(path: Path, entry: Release, directory: Path, progress: bool) -> bool:
    """Check the cached Hub file `path` against its pin, else against the content hash its cache entry is named by.

    huggingface_hub keeps each file as `blobs/<etag>` with `snapshots/<revision>/<file>` a link to it; the
    etag is the file's SHA-256 for LFS files (every checkpoint), the git blob id for small files. A file
    whose bytes do not have that hash (replaced or damaged in the cache) is refused, offline too. The
    result is remembered in `<cache>/hub/<name>.verified` (with the file's size and mtime). Returns
    whether the content was checked (False: a cache without links, where no hash is known and only the
    structure is checked).
    """
    blob = os.readlink(path) if path.is_symlink() else None
    blob_name = os.path.basename(blob) if blob is not None else ""
    where = os.path.normpath(os.path.join(path.parent, blob)) if blob is not None else str(path)
    expected = _pinned(entry)
    if expected is None and _SHA256_HEX.fullmatch(blob_name):
        expected = f"sha256:{blob_name}"
    elif expected is None and _GIT_SHA1_HEX.fullmatch(blob_name):
        expected = f"git-sha1:{blob_name}"
    if expected is None:
        if progress:
            print(f"dpt-jax: {path} is not a link to a blob named by its hash (a cache without symbolic links): "
                  "only its structure is checked", file=sys.stderr)
        return False
    stamp = directory / "hub" / f"{entry.name}.verified"
    if _stamp_ok(path, entry, digest=expected, stamp_path=stamp):
        return True
    actual = _digest_of(path, expected)
    if actual != expected:
        kind, want = expected.split(":")
        whose = (f"the published file's is {want}" if entry.sha256 is not None else
                 f"its Hugging Face cache entry {where} is named by the Hub's content hash {want} "
                 "(replaced or damaged in the cache)")
        what = "SHA-256" if kind == "sha256" else "git blob id"
        files = f"{where} (and the link {path})" if blob is not None else str(path)
        raise CheckpointError(path, f"is not the published {entry.file} of {entry.name}: its {what} is "
                                    f"{actual.split(':')[1]}, {whose}. {_way_out(entry, files)}")
    with contextlib.suppress(OSError):  # a read-only cache: checked again next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        _write_stamp(path, entry, None, expected, stamp_path=stamp)
    return True


def hf_snapshot(repo_id: str, *, revision: str | None = None, progress: bool = True) -> Path:
    """The local folder of Hub repository `repo_id` (config.json + safetensors weights), via huggingface_hub.

    Offline (HF_HUB_OFFLINE=1, or no network) a cached snapshot is used without any network
    access; without one, DownloadError says where the files are expected and how to pass a folder.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    from .convert import hf

    url = f"{constants.ENDPOINT}/{repo_id}"
    cache = Path(constants.HF_HUB_CACHE)
    expected = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / (revision or "<revision>")
    local = ("download it where the network is reachable (huggingface-cli download "
             f"{repo_id}) into that cache, or pass the path of a local folder holding config.json and "
             "model.safetensors instead of the name")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HF_FILES,
                                        tqdm_class=None if progress else _SilentBar))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise UnknownModelError(f"{repo_id!r}: no such Hugging Face Hub repository, or it needs a token you do not "
                                f"have ({type(e).__name__}); {known_names_text()}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise DownloadError(url, f"not in the Hugging Face cache and {why}: the files are expected in {expected}/; "
                                 f"{local}") from None
    except OSError as e:
        raise DownloadError(url, f"{type(e).__name__}: {str(e)[:300]}; {local}") from None
    if not hf.is_hf_folder(folder):
        raise DownloadError(url, f"the cached snapshot {folder} holds no config.json (incomplete download?); {local}")
    return folder


class _SilentBar:
    """A tqdm stand-in that shows nothing (progress=False)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args):
        pass

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------
# Names or paths


def resolve(model=None, *, check: Check | None = None, cache=None, progress: bool = True) -> Path:
    """The local file or folder for `model`: an existing file or Hugging Face folder (returned as it
    is), a registry name (downloaded on first use, from the cache afterwards; `check` as for
    `download`), "<name>_hf" or a Hub repo id "org/name" (a transformers-layout snapshot).

    `None` means DEFAULT_MODEL. Anything else raises UnknownModelError listing the known names.
    """
    from .convert import hf

    if model is None:
        model = DEFAULT_MODEL
    text = os.fspath(model)
    if os.path.isfile(text) or hf.is_hf_folder(text):
        return Path(text)
    if os.path.exists(text):
        raise UnknownModelError(f"{text!r} is not a checkpoint file (it is a directory without a config.json, "
                                "or a special file)")
    if isinstance(model, str) and lookup(model) is not None:
        return download(model, check=check, cache=cache, progress=progress)
    if isinstance(model, str) and (repo := hf_repo(model)) is not None:
        return hf_snapshot(repo, progress=progress)
    if isinstance(model, str) and _REPO_ID.fullmatch(model) and not model.endswith((".pt", ".pth", ".safetensors",
                                                                                      ".bin")):
        return hf_snapshot(model, progress=progress)
    looks_like_path = os.sep in text or "/" in text or text.endswith((".pt", ".pth", ".safetensors"))
    what = "no such file, and not" if looks_like_path else "neither an existing file nor"
    raise UnknownModelError(f"{text!r}: {what} a known model name ({known_names_text()}), or a Hugging Face "
                            "Hub repo id such as depth-anything/Depth-Anything-V2-Small-hf")
