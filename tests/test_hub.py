"""The checkpoint registry, cache and downloader, against a local HTTP server (loopback only, no internet).

`fetch` downloads as the checkpoint service does: with a check that reads the file as the model.
"""

from __future__ import annotations

import json
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
    (the "mini_beit" entry serves tests/fixtures/mini_beit.pt, whose architecture is its own, not a preset's)."""
    release = hub.get_entry(name)
    expected = BEIT_CONFIG if name == "mini_beit" else get_config(release.holds or release.name)
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


def test_registry_holds_the_depth_anything_releases():
    from dpt_jax.convert.dinov2 import RELEASE_FILES

    entries = {n: e for n, e in hub.REGISTRY.items() if PRESETS[n].family.name == "dinov2"}
    # Depth Anything V1, V2; Video Depth Anything; PromptDA; Distill-Any-Depth; Depth Anything 3 (test_da3.py)
    assert len(entries) == 12 + 6 + 3 + 4 + 5
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
