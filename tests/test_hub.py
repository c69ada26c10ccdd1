"""The checkpoint registry, cache and downloader, against a local HTTP server (loopback only, no internet).

`fetch` downloads as the checkpoint service does: with a check that reads the file as the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest

from dpt_jax import errors, hub
from dpt_jax.checkpoint import read_release
from dpt_jax.convert.files import read_state_dict
from dpt_jax.errors import CheckpointError
from dpt_jax.family import Release
from dpt_jax.registry import PRESETS, detect_config, get_config
from helpers import FIXTURES

BEIT = FIXTURES / "mini_beit.pt"
SWIN = FIXTURES / "mini_swin2.pt"
BEIT_CONFIG = detect_config(read_state_dict(BEIT))


def fetch(name, **kw):
    """hub.download with the check the checkpoint service passes: the file read as the model it must hold
    (the "mini_beit*" entries serve tests/fixtures/mini_beit.pt, whose architecture is its own, not a preset's)."""
    release = hub.get_entry(name)
    expected = BEIT_CONFIG if name.startswith("mini_beit") else get_config(release.holds or release.name)
    return hub.download(name, check=lambda p: read_release(p, expected), **kw)


def files_in(directory: Path) -> list[str]:
    """The cache's files (a download's lock file is removed as the download lets go of it, failed or not)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------------------------------------
# Registry and cache directory


def test_registry_holds_the_six_releases():
    assert sorted(hub.REGISTRY) == sorted(PRESETS)
    for name, entry in hub.REGISTRY.items():
        if PRESETS[name].family.name == "dinov2":
            continue  # Depth Anything: test_registry_holds_the_depth_anything_releases
        assert entry.url == f"https://github.com/isl-org/MiDaS/releases/download/v3_1/{name}.pt"
        assert entry.file == f"{name}.pt" and entry.licence == "MIT"
        assert 1e8 < entry.approx_bytes < 2e9
    assert hub.REGISTRY["dpt_beit_large_512"].approx_bytes == 1_581_777_764
    assert hub.DEFAULT_MODEL == "dpt_swin2_tiny_256" and hub.DEFAULT_MODEL in hub.REGISTRY
    assert hub.get_entry("swin2_tiny_256") is hub.REGISTRY["dpt_swin2_tiny_256"]
    with pytest.raises(errors.UnknownModelError, match="dpt_beit_large_512.*dpt_swin2_tiny_256") as e:
        hub.get_entry("dpt_vit_hybrid_384")
    assert str(e.value).count("da1_vits") == 1  # each name once, grouped by family
    with pytest.raises(ValueError, match="already registered"):
        hub.register(hub.REGISTRY["dpt_beit_base_384"])


def test_release_files_are_pinned_where_a_published_hash_is_known():
    """22 files pinned (as the README says); not the MiDaS assets, DA3MONO-LARGE, PromptDA, Distill-Any-Depth."""
    pinned = {n for n, e in hub.REGISTRY.items() if e.sha256 is not None}
    assert len(pinned) == 22
    assert {n.split("_")[0] for n in pinned} == {"da1", "da2", "vda", "da3"}
    assert {n for n in hub.REGISTRY if n.startswith(("da1_", "da2_", "vda_"))} <= pinned
    assert not {n for n in hub.REGISTRY if n.startswith(("dpt_", "pda_", "dad_"))} & pinned
    assert len({hub.REGISTRY[n].sha256 for n in pinned}) == 22  # no hash copied onto a second file
    assert hub.REGISTRY["da2_vits"].sha256 == "715fade13be8f229f8a70cc02066f656f2423a59effd0579197bbf57860e1378"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Release("x", "x.pt", 1, "MIT", url="http://x", sha256="715FADE1")


def test_registry_holds_the_depth_anything_releases():
    from dpt_jax.convert.dinov2 import RELEASE_FILES

    entries = {n: e for n, e in hub.REGISTRY.items() if PRESETS[n].family.name == "dinov2"}
    # Depth Anything V1, V2; Video Depth Anything; PromptDA; Distill-Any-Depth; Depth Anything 3 (test_da3.py)
    assert len(entries) == 12 + 6 + 3 + 4 + 6
    assert len(RELEASE_FILES) == 18  # PromptDA's, Distill-Any-Depth's and DA3's files share one name each
    for file, name in RELEASE_FILES.items():
        entry = entries[name]
        assert entry.file == file and entry.url is None and entry.repo  # a Hub repository's file: huggingface_hub
        small = name.endswith("vits")
        assert entry.licence == ("Apache-2.0" if small or name.startswith("da1") else
                                 "CC-BY-NC-4.0 (non-commercial use only)")
    assert (entries["da2_vits"].repo, entries["da2_vits"].file) == ("depth-anything/Depth-Anything-V2-Small",
                                                                    "depth_anything_v2_vits.pth")
    assert (entries["da1_vitb"].repo, entries["da1_vitb"].repo_type, entries["da1_vitb"].subfolder) == \
        ("LiheYoung/Depth-Anything", "space", "checkpoints")
    assert entries["da2_metric_vkitti_vitl"].approx_bytes == 1_341_262_596
    # Prompt Depth Anything: one model.ckpt per Hub repo; Distill-Any-Depth: sub-folders of one repo
    assert (entries["pda_vits_transparent"].repo, entries["pda_vits_transparent"].file) == (
        "depth-anything/prompt-depth-anything-vits-transparent", "model.ckpt")
    assert entries["pda_vitl"].licence == "Apache-2.0"
    assert (entries["dad_vitb"].repo, entries["dad_vitb"].subfolder, entries["dad_vitb"].file) == (
        "xingyang1/Distill-Any-Depth", "base", "model.safetensors")
    assert "MIT" in entries["dad_vitl"].licence and "Apache-2.0" in entries["dad_vitl"].licence


def test_cache_dir_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DPT_JAX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "dpt-jax"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "dpt-jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "dpt-jax"
    monkeypatch.setenv("DPT_JAX_CACHE", str(tmp_path / "mine"))
    assert hub.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("DPT_JAX_CACHE", "~/models")
    assert hub.cache_dir() == tmp_path / "home" / "models"


# ---------------------------------------------------------------------------------------------
# Downloads


def test_download_checks_and_caches(server, mini, cache, monkeypatch):
    path = fetch("mini_beit", cache=cache, progress=False)
    assert path == cache / "mini_beit.pt"
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]
    assert hub.cached_path("mini_beit", cache=cache) == path
    assert len(server.requests) == 1 and "range" not in server.requests[0][1]

    # A second use neither asks the server nor checks the file again.
    assert hub.download("mini_beit", cache=cache, progress=False,
                        check=lambda p: pytest.fail("a stamped file must not be checked again")) == path
    assert len(server.requests) == 1


def test_default_cache_is_the_environment_one(server, mini, tmp_path, monkeypatch):
    monkeypatch.setenv("DPT_JAX_CACHE", str(tmp_path / "from-env"))
    assert fetch("mini_beit", progress=False) == tmp_path / "from-env" / "mini_beit.pt"


def test_interrupted_download_resumes(server, mini, cache):
    size = BEIT.stat().st_size
    server.cut_after, server.cuts = 500_000, 1
    with pytest.raises(errors.DownloadError, match=re.escape(mini.url)) as err:
        fetch("mini_beit", cache=cache, progress=False, retries=0)
    assert "500000 of" in str(err.value) and "resumes" in str(err.value)
    assert (cache / "mini_beit.pt.partial").stat().st_size == 500_000
    assert not (cache / "mini_beit.pt").exists()

    path = fetch("mini_beit", cache=cache, progress=False)
    headers = server.requests[1][1]
    assert headers["range"] == "bytes=500000-"
    assert headers["if-range"] == server.etags["/mini_beit.pt"]
    assert server.sent == [500_000, size - 500_000]  # nothing was fetched twice
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]


def test_lost_connections_are_resumed_within_one_call(server, mini, cache):
    server.cut_after, server.cuts = 300_000, 2
    path = fetch("mini_beit", cache=cache, progress=False, retries=3)
    assert [h.get("range") for _, h in server.requests] == [None, "bytes=300000-", "bytes=600000-"]
    assert sum(server.sent) == BEIT.stat().st_size
    assert path.read_bytes() == BEIT.read_bytes()


def test_server_ignoring_range_restarts_from_zero(server, mini, cache):
    size = BEIT.stat().st_size
    server.cut_after, server.cuts = 400_000, 1
    with pytest.raises(errors.DownloadError):
        fetch("mini_beit", cache=cache, progress=False, retries=0)
    server.ignore_range = True
    path = fetch("mini_beit", cache=cache, progress=False)
    assert server.requests[1][1]["range"] == "bytes=400000-"
    assert server.sent == [400_000, size]  # the server answered 200 with everything: no splice
    assert path.read_bytes() == BEIT.read_bytes()


def test_file_changed_on_the_server_is_fetched_again(server, mini, cache):
    server.cut_after, server.cuts = 400_000, 1
    with pytest.raises(errors.DownloadError):
        fetch("mini_beit", cache=cache, progress=False, retries=0)
    old_etag = server.etags["/mini_beit.pt"]
    server.etags["/mini_beit.pt"] = '"republished"'
    path = fetch("mini_beit", cache=cache, progress=False)
    assert server.requests[1][1]["if-range"] == old_etag
    assert server.sent[1] == BEIT.stat().st_size
    assert path.read_bytes() == BEIT.read_bytes()


def test_complete_partial_is_finished_without_refetching(server, mini, cache):
    # A process killed after the last byte but before the check left a complete partial file.
    cache.mkdir()
    (cache / "mini_beit.pt.partial").write_bytes(BEIT.read_bytes())
    meta = {"url": mini.url, "total": BEIT.stat().st_size, "etag": server.etags["/mini_beit.pt"]}
    (cache / "mini_beit.pt.partial.json").write_text(json.dumps(meta))
    path = fetch("mini_beit", cache=cache, progress=False)
    assert server.sent == [0]  # 416: nothing left to send
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]


def test_partial_of_another_origin_is_not_continued(server, mini, cache):
    cache.mkdir()
    (cache / "mini_beit.pt.partial").write_bytes(b"x" * 1000)  # no record of where it came from
    path = fetch("mini_beit", cache=cache, progress=False)
    assert "range" not in server.requests[0][1]
    assert path.read_bytes() == BEIT.read_bytes()


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_name_the_url_and_leave_nothing(server, mini, cache, code):
    server.status["/mini_beit.pt"] = code
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*HTTP {code}") as err:
        fetch("mini_beit", cache=cache, progress=False)
    assert err.value.url == mini.url
    assert len(server.requests) == 1  # HTTP errors are not retried
    assert files_in(cache) == []


def test_unreachable_server(server, mini, cache):
    server.stop()
    with pytest.raises(errors.DownloadError, match=re.escape(mini.url)):
        fetch("mini_beit", cache=cache, progress=False, timeout=5)
    assert files_in(cache) == []


def test_timeout_names_the_url(server, mini, cache):
    server.stall = 3.0
    t0 = time.monotonic()
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*no data for 0.3 s"):
        fetch("mini_beit", cache=cache, progress=False, timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 2.5
    assert not (cache / "mini_beit.pt").exists()


def test_trickling_server_is_abandoned_as_stalled(server, mini, cache):
    server.trickle = 0.05  # 20 bytes a second: every read returns data, so no per-read timeout ever fires
    t0 = time.monotonic()
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*stalled") as err:
        fetch("mini_beit", cache=cache, progress=False, timeout=30, retries=0,
                     stall_timeout=0.5, stall_bytes=10_000)
    assert time.monotonic() - t0 < 5
    assert "at least 10000 expected within 0.5 s" in str(err.value)
    kept = (cache / "mini_beit.pt.partial").stat().st_size
    assert 1000 <= kept < 10_000 and f"{kept} bytes received are kept" in str(err.value)

    server.trickle = 0.0  # the next attempt resumes from the kept bytes
    assert fetch("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()
    assert server.requests[-1][1]["range"] == f"bytes={kept}-"


def hold_lock(path: Path) -> int:
    import fcntl
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_lock_wait_ends_with_a_message_naming_the_lock_file(server, mini, cache):
    import os

    lock = cache / "mini_beit.pt.lock"
    fd = hold_lock(lock)  # another download of the same model that makes no progress
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.DownloadError) as err:
            fetch("mini_beit", cache=cache, progress=False, lock_timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        os.close(fd)
    message = str(err.value)
    assert str(lock) in message and "no progress" in message and "stop it" in message and mini.url in message
    assert server.requests == []  # nothing was fetched behind the holder's back
    assert fetch("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()


def test_lock_wait_lasts_while_the_holder_makes_progress(server, mini, cache):
    import os

    fd = hold_lock(cache / "mini_beit.pt.lock")
    partial = cache / "mini_beit.pt.partial"

    def holder():  # grows its partial file for 1.5 s (3x the waiter's lock_timeout), then gives up
        for _ in range(15):
            with open(partial, "ab") as f:
                f.write(b"\0")
            time.sleep(0.1)
        partial.unlink()
        os.close(fd)

    thread = threading.Thread(target=holder)
    t0 = time.monotonic()
    thread.start()
    try:
        path = fetch("mini_beit", cache=cache, progress=False, lock_timeout=0.5)
    finally:
        thread.join(10)
    assert time.monotonic() - t0 >= 1.4
    assert path.read_bytes() == BEIT.read_bytes()
    assert not (cache / "mini_beit.pt.lock").exists()  # removed by the waiter as it let go


def test_url_override(server, mini, cache):
    mirror = server.serve("/mirror/mini_beit.pt", BEIT.read_bytes())
    server.status["/mini_beit.pt"] = 500
    path = fetch("mini_beit", cache=cache, progress=False, url=mirror)
    assert [p for p, _ in server.requests] == ["/mirror/mini_beit.pt"]
    assert json.loads((cache / "mini_beit.pt.verified").read_text())["url"] == mirror
    assert path.read_bytes() == BEIT.read_bytes()


def test_progress_line_when_stderr_is_not_a_terminal(server, mini, cache, capsys):
    fetch("mini_beit", cache=cache)
    err = capsys.readouterr().err
    assert "downloading mini_beit" in err and mini.url in err


# ---------------------------------------------------------------------------------------------
# Refusals


def test_wrong_checkpoint_is_refused_and_deleted(server, mini, cache):
    server.serve("/mini_beit.pt", SWIN.read_bytes())  # a SwinV2 file where the BEiT one should be
    with pytest.raises(CheckpointError) as err:
        fetch("mini_beit", cache=cache, progress=False)
    message = str(err.value)
    assert mini.url in message and "swinv2" in message and "deleted" in message and "again" in message
    assert files_in(cache) == []
    assert hub.cached_path("mini_beit", cache=cache) is None

    server.serve("/mini_beit.pt", BEIT.read_bytes())  # fixed on the server: the next try works
    assert fetch("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()


def test_other_architecture_of_the_same_family_is_refused(server, cache):
    url = server.serve("/fake_base.pt", BEIT.read_bytes())
    hub.register(Release("fake_base", "fake_base.pt", 1, "MIT", url=url, holds="dpt_beit_base_384"))
    try:
        with pytest.raises(CheckpointError, match=r"another beit architecture.*embed_dim: 32, expected 768"):
            fetch("fake_base", cache=cache, progress=False)
    finally:
        hub.unregister("fake_base")
    assert files_in(cache) == []


def _flip_tensor_byte(data: bytes) -> bytes:
    """`data` (a torch zip) with one byte of its largest tensor storage changed."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    local = info.header_offset
    start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + int.from_bytes(
        data[local + 28:local + 30], "little")
    pos = start + info.file_size // 2
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


def test_damaged_tensor_data_is_refused(server, mini, cache):
    server.serve("/mini_beit.pt", _flip_tensor_byte(BEIT.read_bytes()))
    with pytest.raises(CheckpointError, match="CRC"):
        fetch("mini_beit", cache=cache, progress=False)
    assert files_in(cache) == []


def test_cached_file_changed_since_its_check_is_fetched_again(server, mini, cache):
    path = fetch("mini_beit", cache=cache, progress=False)
    path.write_bytes(path.read_bytes()[:-100])  # truncated on disk later
    assert hub.cached_path("mini_beit", cache=cache) is None
    assert fetch("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()
    assert len(server.requests) == 2


def test_file_placed_in_cache_by_hand_is_checked_not_fetched(server, mini, cache):
    cache.mkdir()
    (cache / "mini_beit.pt").write_bytes(BEIT.read_bytes())
    assert fetch("mini_beit", cache=cache, progress=False) == cache / "mini_beit.pt"
    assert server.requests == []
    assert (cache / "mini_beit.pt.verified").exists()


# ---------------------------------------------------------------------------------------------
# resolve


def test_resolve_an_existing_path(tmp_path):
    assert hub.resolve(str(BEIT)) == BEIT
    assert hub.resolve(BEIT) == BEIT
    with pytest.raises(errors.UnknownModelError, match="no such file"):
        hub.resolve(str(tmp_path / "missing.pt"))
    with pytest.raises(errors.UnknownModelError, match="not a checkpoint file"):
        hub.resolve(tmp_path)


def test_resolve_a_cached_name_without_network(server, mini, cache):
    path = fetch("mini_beit", cache=cache, progress=False)
    server.stop()
    assert hub.resolve("mini_beit", cache=cache, progress=False) == path
    assert len(server.requests) == 1


def test_resolve_downloads_on_first_use(server, mini, cache):
    assert hub.resolve("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()


def test_resolve_unknown_name_lists_the_known_ones():
    with pytest.raises(errors.UnknownModelError, match="neither an existing file nor.*dpt_swin2_tiny_256"):
        hub.resolve("midas_v21_small")


def test_resolve_default_and_short_names(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(hub, "download", lambda name, **kw: calls.append(name) or tmp_path / "x.pt")
    hub.resolve()
    hub.resolve("beit_large_512")
    assert calls == [hub.DEFAULT_MODEL, "beit_large_512"]


def test_depth_anything_download_shows_licence_and_checks_the_variant(server, cache, capsys):
    """A Depth Anything file is checked as its entry's variant (its keys cannot tell), and its licence is shown."""
    from dpt_jax.registry import MINI_CONFIGS

    da = FIXTURES / "depth_anything" / "mini_da2.pth"
    url = server.serve("/mini_da2.pth", da.read_bytes())
    hub.register(Release("mini_da2", "mini_da2.pth", da.stat().st_size, "Apache-2.0", url=url))
    try:
        path = fetch("mini_da2", cache=cache, progress=False)
        assert path == cache / "mini_da2.pth" and path.read_bytes() == da.read_bytes()
        assert "mini_da2 is published under the licence Apache-2.0" in capsys.readouterr().err
        assert read_release(path, MINI_CONFIGS["mini_da2"]).config is MINI_CONFIGS["mini_da2"]
        # the same keys: only the name tells
        assert read_release(path, MINI_CONFIGS["mini_da2_metric"]).config is MINI_CONFIGS["mini_da2_metric"]
    finally:
        hub.unregister("mini_da2")


def test_a_full_disk_is_reported_at_once_not_retried(server, mini, cache, monkeypatch):
    import builtins

    from dpt_jax import download

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = builtins.open
    monkeypatch.setattr(download, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k))
                        if "partial" in str(path) and "b" in mode and "json" not in str(path)
                        else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(errors.DownloadError, match="cannot write .*No space left on device"):
        fetch("mini_beit", cache=cache, progress=False, retries=3)
    assert len(server.requests) == 1  # not retried as a lost connection


def test_a_transfer_of_unannounced_size_is_capped(server, cache):
    server.no_length = True
    url = server.serve("/big.pt", BEIT.read_bytes())
    hub.register(Release("mini_big", "mini_big.pt", 1000, "MIT", url=url, holds="mini_beit"))
    try:
        with pytest.raises(errors.DownloadError, match="without announcing its size"):
            hub.download("mini_big", cache=cache, progress=False)
    finally:
        hub.unregister("mini_big")
    assert not (cache / "mini_big.pt").exists()


# ---------------------------------------------------------------------------------------------
# Pinned hashes: a release's SHA-256, checked once the file is complete, remembered in the stamp

SHA_BEIT = hashlib.sha256(BEIT.read_bytes()).hexdigest()
OTHER_SHA = hashlib.sha256(b"the published file").hexdigest()  # a pin the BEiT fixture does not match


def pin(entry: Release, sha256: str) -> Release:
    return hub.register(dataclasses.replace(entry, sha256=sha256), replace=True)


def get(name, **kw):
    """hub.download without the model check (the hash is what these tests are about; reading costs a second)."""
    return hub.download(name, progress=False, **kw)


@pytest.fixture
def hashes(monkeypatch):
    """The files hashed (hub's streamed SHA-256 / git-blob hashing), in order."""
    seen = []
    real = hub.file_digest
    monkeypatch.setattr(hub, "file_digest", lambda path, *a, **k: seen.append(Path(path).name) or real(path, *a, **k))
    return seen


def test_pinned_download_is_hashed_once_and_stamped(server, mini, cache, hashes):
    pin(mini, SHA_BEIT)
    path = fetch("mini_beit", cache=cache, progress=False)  # the hash, then the model check
    assert path.read_bytes() == BEIT.read_bytes() and hashes == ["mini_beit.pt.partial"]
    assert json.loads((cache / "mini_beit.pt.verified").read_text())["digest"] == f"sha256:{SHA_BEIT}"
    assert get("mini_beit", cache=cache) == path
    assert hashes == ["mini_beit.pt.partial"] and len(server.requests) == 1  # stamped: neither hashed nor fetched


def test_a_valid_checkpoint_that_is_not_the_pinned_file_is_refused(server, mini, cache):
    """A file that passes every structural check (the BEiT fixture is a sound BEiT) but is not the published one."""
    pin(mini, OTHER_SHA)
    with pytest.raises(CheckpointError) as err:
        fetch("mini_beit", cache=cache, progress=False)
    message = str(err.value)
    assert err.value.path == str(cache / "mini_beit.pt") and mini.url in message
    assert f"SHA-256 is {SHA_BEIT}" in message and f"published file's is {OTHER_SHA}" in message
    assert "deleted" in message and "-m PATH" in message
    assert files_in(cache) == []  # not kept, not stamped
    assert hub.cached_path("mini_beit", cache=cache) is None


def test_a_file_placed_in_the_cache_is_refused_by_its_pin_and_kept(server, mini, cache):
    """A structurally valid file put in the cache by hand is not stamped as the release; it is the user's to keep."""
    pin(mini, OTHER_SHA)
    cache.mkdir()
    (cache / "mini_beit.pt").write_bytes(BEIT.read_bytes())
    with pytest.raises(CheckpointError) as err:
        fetch("mini_beit", cache=cache, progress=False)
    message = str(err.value)
    assert f"{cache / 'mini_beit.pt'}: is not the published mini_beit.pt of mini_beit" in message
    assert SHA_BEIT in message and OTHER_SHA in message
    assert f"Delete {cache / 'mini_beit.pt'} to download mini_beit again" in message
    assert "pass the file's path instead of the name" in message
    assert files_in(cache) == ["mini_beit.pt"] and server.requests == []


def test_a_stamped_file_replaced_later_is_hashed_again(server, mini, cache, hashes):
    pin(mini, SHA_BEIT)
    path = get("mini_beit", cache=cache)
    path.write_bytes(_flip_tensor_byte(BEIT.read_bytes()))  # same size, other bytes, a newer mtime
    assert hub.cached_path("mini_beit", cache=cache) is None
    with pytest.raises(CheckpointError, match=f"its SHA-256 is (?!{SHA_BEIT})[0-9a-f]{{64}}, the published file's is "
                                              f"{SHA_BEIT}"):
        get("mini_beit", cache=cache)
    assert hashes == ["mini_beit.pt.partial", "mini_beit.pt"]
    assert files_in(cache) == ["mini_beit.pt"]  # kept, its stamp removed
    assert len(server.requests) == 1


def test_a_release_pinned_after_its_download_has_its_cached_file_hashed_once(server, mini, cache, hashes):
    get("mini_beit", cache=cache)  # unpinned: stamped without a hash
    assert json.loads((cache / "mini_beit.pt.verified").read_text())["digest"] is None and hashes == []
    pin(mini, SHA_BEIT)
    assert hub.cached_path("mini_beit", cache=cache) is None  # the old stamp does not vouch for the pin
    get("mini_beit", cache=cache)
    get("mini_beit", cache=cache)
    assert hashes == ["mini_beit.pt"] and len(server.requests) == 1


def test_a_resumed_pinned_download_ends_in_a_checked_file(server, mini, cache):
    pin(mini, SHA_BEIT)
    server.cut_after, server.cuts = 500_000, 1
    with pytest.raises(errors.DownloadError, match="resumes"):
        get("mini_beit", cache=cache, retries=0)
    path = get("mini_beit", cache=cache)
    assert server.requests[1][1]["range"] == "bytes=500000-"
    assert path.read_bytes() == BEIT.read_bytes()
    assert json.loads((cache / "mini_beit.pt.verified").read_text())["digest"] == f"sha256:{SHA_BEIT}"


def test_a_resume_onto_foreign_bytes_is_caught_by_the_hash(server, mini, cache):
    """Partial bytes recorded as this URL's (same ETag) but not its start: the splice is complete, and refused."""
    pin(mini, SHA_BEIT)
    cache.mkdir()
    (cache / "mini_beit.pt.partial").write_bytes(b"x" * 1000)
    meta = {"url": mini.url, "total": BEIT.stat().st_size, "etag": server.etags["/mini_beit.pt"]}
    (cache / "mini_beit.pt.partial.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"downloaded from {re.escape(mini.url)} is not the published"):
        get("mini_beit", cache=cache)
    assert server.requests[0][1]["range"] == "bytes=1000-"
    assert files_in(cache) == []
    assert get("mini_beit", cache=cache).read_bytes() == BEIT.read_bytes()  # the next try


# Hub release files: checked against the pin, else against the hash their cached blob is named by

HUB_REPO = "dpt-jax-tests/mini-beit"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline huggingface_hub cache, and "mini_beit_hub": the BEiT fixture as a file of HUB_REPO."""
    from huggingface_hub import constants

    root = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    hub.register(Release("mini_beit_hub", "mini_beit.pt", BEIT.stat().st_size, "MIT", repo=HUB_REPO))
    try:
        yield root
    finally:
        hub.unregister("mini_beit_hub")


def cache_blob(root: Path, data: bytes, blob: str) -> Path:
    """huggingface_hub's layout of one file: blobs/<etag>, snapshots/<revision>/<file> -> that blob, refs/main."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob).write_bytes(data)
    (repo / "snapshots" / revision).mkdir(parents=True)
    link = repo / "snapshots" / revision / "mini_beit.pt"
    link.symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return link


@pytest.mark.parametrize("named_by", [hashlib.sha256, git_blob_id], ids=["lfs-sha256", "git-blob"])
def test_hub_file_is_checked_against_its_blob_name_once(hf_cache, cache, hashes, named_by):
    data = BEIT.read_bytes()
    name = named_by(data) if named_by is git_blob_id else named_by(data).hexdigest()
    link = cache_blob(hf_cache, data, name)
    assert get("mini_beit_hub", cache=cache) == link
    stamp = json.loads((cache / "hub" / "mini_beit_hub.verified").read_text())
    assert stamp["digest"].endswith(name) and stamp["path"] == str(link)
    get("mini_beit_hub", cache=cache)
    assert hashes == ["mini_beit.pt"]  # once: the stamp remembers it


@pytest.mark.parametrize("named_by", ["sha256", "git-blob"])
def test_hub_blob_whose_content_does_not_match_its_name_is_refused(hf_cache, cache, named_by):
    """A random-weight file put into huggingface_hub's cache under the release's blob name is refused, offline."""
    data = BEIT.read_bytes()
    name = SHA_BEIT if named_by == "sha256" else git_blob_id(data)
    link = cache_blob(hf_cache, _flip_tensor_byte(data), name)
    with pytest.raises(CheckpointError) as err:
        get("mini_beit_hub", cache=cache)
    message = str(err.value)
    blob = os.path.normpath(link.parent / ".." / ".." / "blobs" / name)
    assert err.value.path == str(link)
    assert f"Hugging Face cache entry {blob} is named by the Hub's content hash {name}" in message
    assert ("SHA-256 is" if named_by == "sha256" else "git blob id is") in message
    assert f"Delete {blob} (and the link {link})" in message and "-m PATH" in message
    assert not (cache / "hub" / "mini_beit_hub.verified").exists()


def test_pinned_hub_file_is_checked_against_the_pin_and_rechecked_when_replaced(hf_cache, cache):
    link = cache_blob(hf_cache, BEIT.read_bytes(), SHA_BEIT)  # a blob truthful to its name...
    pin(hub.REGISTRY["mini_beit_hub"], OTHER_SHA)  # ...but not the published file
    with pytest.raises(CheckpointError, match=f"SHA-256 is {SHA_BEIT}, the published file's is {OTHER_SHA}"):
        get("mini_beit_hub", cache=cache)
    pin(hub.REGISTRY["mini_beit_hub"], SHA_BEIT)
    assert get("mini_beit_hub", cache=cache) == link
    link.resolve().write_bytes(_flip_tensor_byte(BEIT.read_bytes()))  # replaced after its check
    with pytest.raises(CheckpointError, match=f"the published file's is {SHA_BEIT}"):
        get("mini_beit_hub", cache=cache)
