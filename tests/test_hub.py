"""The checkpoint registry, cache and downloader, against a local HTTP server (loopback only, no internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
import zipfile
from pathlib import Path

import pytest

from dpt_jax import errors
from dpt_jax import hub
from dpt_jax.registry import PRESETS
from dpt_jax.registry import detect_config
from dpt_jax.convert.files import read_state_dict
from dpt_jax.errors import CheckpointError
from helpers import FIXTURES

BEIT = FIXTURES / "mini_beit.pt"
SWIN = FIXTURES / "mini_swin2.pt"


# ---------------------------------------------------------------------------------------------
# A small HTTP file server with Range support and ways to misbehave.


class FileServer:
    """Serves `files` ({url path: bytes}) on 127.0.0.1 from a background thread.

    Knobs: `cut_after` body bytes for the next `cuts` responses (then the connection is closed),
    `ignore_range` (answer 200 with the whole file), `status` ({path: HTTP error code}), `stall`
    (seconds to wait after the first body bytes), `trickle` (after the first 1000 body bytes, send
    one byte every `trickle` seconds). Every request's headers are recorded in
    `requests` and the body bytes each response sent in `sent`.
    """

    MAX_REQUESTS = 64

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.cut_after = 0
        self.cuts = 0
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.stall = 0.0
        self.trickle = 0.0
        self.requests: list[tuple[str, dict]] = []
        self.sent: list[int] = []
        self._stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def serve(self, path: str, data: bytes) -> str:
        self.files[path] = data
        self.etags[path] = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        return self.url(path)

    def stop(self):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _handle(self, h: http.server.BaseHTTPRequestHandler):
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append((h.path, headers))
        if len(self.requests) > self.MAX_REQUESTS or h.path in self.status or h.path not in self.files:
            code = 503 if len(self.requests) > self.MAX_REQUESTS else self.status.get(h.path, 404)
            h.send_error(code)
            self.sent.append(0)
            return
        data, etag = self.files[h.path], self.etags[h.path]
        start, code = 0, 200
        rng = headers.get("range")
        if rng and not self.ignore_range and headers.get("if-range", etag) == etag:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                self.sent.append(0)
                return
            code = 206
        body = data[start:]
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        if code == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        n = len(body)
        if self.cuts > 0:
            self.cuts -= 1
            n = min(n, self.cut_after)
            h.close_connection = True
        if self.trickle:
            h.wfile.write(body[:1000])
            h.wfile.flush()
            sent = 1000
            try:
                while sent < n and not self._stop.wait(self.trickle):
                    h.wfile.write(body[sent:sent + 1])
                    h.wfile.flush()
                    sent += 1
            except OSError:  # the client gave up
                pass
            h.close_connection = True
            self.sent.append(sent)
            return
        if self.stall:
            h.wfile.write(body[:1000])
            h.wfile.flush()
            self._stop.wait(self.stall)
            h.close_connection = True
            self.sent.append(1000)
            return
        h.wfile.write(body[:n])
        self.sent.append(n)


@pytest.fixture
def server():
    s = FileServer()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def beit_config():
    return detect_config(read_state_dict(BEIT))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    # Never the user's real cache, whatever a test does.
    monkeypatch.setenv("DPT_JAX_CACHE", str(tmp_path / "env-cache"))
    return tmp_path / "cache"


@pytest.fixture
def mini(server, beit_config):
    """A registry entry "mini_beit" whose URL serves the BEiT fixture."""
    url = server.serve("/mini_beit.pt", BEIT.read_bytes())
    entry = hub.register(hub.ModelEntry("mini_beit", url, beit_config, BEIT.stat().st_size))
    try:
        yield entry
    finally:
        hub.unregister("mini_beit")


def files_in(directory: Path) -> list[str]:
    """The cache's files, less the (empty, permanent) per-model lock files."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock")) if directory.exists() else []


# ---------------------------------------------------------------------------------------------
# Registry and cache directory


def test_registry_holds_the_six_releases():
    assert list(hub.REGISTRY) == list(PRESETS)
    for name, entry in hub.REGISTRY.items():
        if entry.config.family.name == "dinov2":
            continue  # Depth Anything: test_registry_holds_the_depth_anything_releases
        assert entry.url == f"https://github.com/isl-org/MiDaS/releases/download/v3_1/{name}.pt"
        assert entry.config is PRESETS[name]
        assert entry.filename == f"{name}.pt"
        assert 1e8 < entry.approx_bytes < 2e9
    assert hub.REGISTRY["dpt_beit_large_512"].approx_bytes == 1_581_777_764
    assert hub.DEFAULT_MODEL == "dpt_swin2_tiny_256" and hub.DEFAULT_MODEL in hub.REGISTRY
    assert hub.get_entry("swin2_tiny_256") is hub.REGISTRY["dpt_swin2_tiny_256"]
    with pytest.raises(errors.UnknownModelError, match="dpt_beit_large_512.*dpt_swin2_tiny_256"):
        hub.get_entry("dpt_vit_hybrid_384")
    with pytest.raises(ValueError, match="already registered"):
        hub.register(hub.REGISTRY["dpt_beit_base_384"])


def test_registry_holds_the_depth_anything_releases():
    from dpt_jax.dinov2 import RELEASE_FILES

    entries = {n: e for n, e in hub.REGISTRY.items() if e.config.family.name == "dinov2"}
    assert len(entries) == 12 == len(RELEASE_FILES)
    for file, name in RELEASE_FILES.items():
        entry = entries[name]
        assert entry.config is PRESETS[name] and entry.filename == file  # cached under the release name
        assert entry.url.startswith("https://huggingface.co/") and entry.url.endswith("/" + file)
        small = name.endswith("vits")
        assert entry.licence == ("Apache-2.0" if small or name.startswith("da1") else
                                 "CC-BY-NC-4.0 (non-commercial use only)")
    assert entries["da2_vits"].url == \
        "https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth"
    assert entries["da2_metric_vkitti_vitl"].approx_bytes == 1_341_262_596


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
    path = hub.download("mini_beit", cache=cache, progress=False)
    assert path == cache / "mini_beit.pt"
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]
    assert hub.cached_path("mini_beit", cache=cache) == path
    assert len(server.requests) == 1 and "range" not in server.requests[0][1]

    # A second use neither asks the server nor checks the file again.
    monkeypatch.setattr(hub, "verify", lambda *a: pytest.fail("a stamped file must not be checked again"))
    assert hub.download("mini_beit", cache=cache, progress=False) == path
    assert len(server.requests) == 1


def test_default_cache_is_the_environment_one(server, mini, tmp_path, monkeypatch):
    monkeypatch.setenv("DPT_JAX_CACHE", str(tmp_path / "from-env"))
    assert hub.download("mini_beit", progress=False) == tmp_path / "from-env" / "mini_beit.pt"


def test_interrupted_download_resumes(server, mini, cache):
    size = BEIT.stat().st_size
    server.cut_after, server.cuts = 500_000, 1
    with pytest.raises(errors.DownloadError, match=re.escape(mini.url)) as err:
        hub.download("mini_beit", cache=cache, progress=False, retries=0)
    assert "500000 of" in str(err.value) and "resumes" in str(err.value)
    assert (cache / "mini_beit.pt.partial").stat().st_size == 500_000
    assert not (cache / "mini_beit.pt").exists()

    path = hub.download("mini_beit", cache=cache, progress=False)
    headers = server.requests[1][1]
    assert headers["range"] == "bytes=500000-"
    assert headers["if-range"] == server.etags["/mini_beit.pt"]
    assert server.sent == [500_000, size - 500_000]  # nothing was fetched twice
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]


def test_lost_connections_are_resumed_within_one_call(server, mini, cache):
    server.cut_after, server.cuts = 300_000, 2
    path = hub.download("mini_beit", cache=cache, progress=False, retries=3)
    assert [h.get("range") for _, h in server.requests] == [None, "bytes=300000-", "bytes=600000-"]
    assert sum(server.sent) == BEIT.stat().st_size
    assert path.read_bytes() == BEIT.read_bytes()


def test_server_ignoring_range_restarts_from_zero(server, mini, cache):
    size = BEIT.stat().st_size
    server.cut_after, server.cuts = 400_000, 1
    with pytest.raises(errors.DownloadError):
        hub.download("mini_beit", cache=cache, progress=False, retries=0)
    server.ignore_range = True
    path = hub.download("mini_beit", cache=cache, progress=False)
    assert server.requests[1][1]["range"] == "bytes=400000-"
    assert server.sent == [400_000, size]  # the server answered 200 with everything: no splice
    assert path.read_bytes() == BEIT.read_bytes()


def test_file_changed_on_the_server_is_fetched_again(server, mini, cache):
    server.cut_after, server.cuts = 400_000, 1
    with pytest.raises(errors.DownloadError):
        hub.download("mini_beit", cache=cache, progress=False, retries=0)
    old_etag = server.etags["/mini_beit.pt"]
    server.etags["/mini_beit.pt"] = '"republished"'
    path = hub.download("mini_beit", cache=cache, progress=False)
    assert server.requests[1][1]["if-range"] == old_etag
    assert server.sent[1] == BEIT.stat().st_size
    assert path.read_bytes() == BEIT.read_bytes()


def test_complete_partial_is_finished_without_refetching(server, mini, cache):
    # A process killed after the last byte but before the check left a complete partial file.
    cache.mkdir()
    (cache / "mini_beit.pt.partial").write_bytes(BEIT.read_bytes())
    meta = {"url": mini.url, "total": BEIT.stat().st_size, "etag": server.etags["/mini_beit.pt"]}
    (cache / "mini_beit.pt.partial.json").write_text(json.dumps(meta))
    path = hub.download("mini_beit", cache=cache, progress=False)
    assert server.sent == [0]  # 416: nothing left to send
    assert path.read_bytes() == BEIT.read_bytes()
    assert files_in(cache) == ["mini_beit.pt", "mini_beit.pt.verified"]


def test_partial_of_another_origin_is_not_continued(server, mini, cache):
    cache.mkdir()
    (cache / "mini_beit.pt.partial").write_bytes(b"x" * 1000)  # no record of where it came from
    path = hub.download("mini_beit", cache=cache, progress=False)
    assert "range" not in server.requests[0][1]
    assert path.read_bytes() == BEIT.read_bytes()


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_name_the_url_and_leave_nothing(server, mini, cache, code):
    server.status["/mini_beit.pt"] = code
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*HTTP {code}") as err:
        hub.download("mini_beit", cache=cache, progress=False)
    assert err.value.url == mini.url
    assert len(server.requests) == 1  # HTTP errors are not retried
    assert files_in(cache) == []


def test_unreachable_server(server, mini, cache):
    server.stop()
    with pytest.raises(errors.DownloadError, match=re.escape(mini.url)):
        hub.download("mini_beit", cache=cache, progress=False, timeout=5)
    assert files_in(cache) == []


def test_timeout_names_the_url(server, mini, cache):
    server.stall = 3.0
    t0 = time.monotonic()
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*no data for 0.3 s"):
        hub.download("mini_beit", cache=cache, progress=False, timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 2.5
    assert not (cache / "mini_beit.pt").exists()


def test_trickling_server_is_abandoned_as_stalled(server, mini, cache):
    server.trickle = 0.05  # 20 bytes a second: every read returns data, so no per-read timeout ever fires
    t0 = time.monotonic()
    with pytest.raises(errors.DownloadError, match=rf"{re.escape(mini.url)}.*stalled") as err:
        hub.download("mini_beit", cache=cache, progress=False, timeout=30, retries=0,
                     stall_timeout=0.5, stall_bytes=10_000)
    assert time.monotonic() - t0 < 5
    assert "at least 10000 expected within 0.5 s" in str(err.value)
    kept = (cache / "mini_beit.pt.partial").stat().st_size
    assert 1000 <= kept < 10_000 and f"{kept} bytes received are kept" in str(err.value)

    server.trickle = 0.0  # the next attempt resumes from the kept bytes
    assert hub.download("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()
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
            hub.download("mini_beit", cache=cache, progress=False, lock_timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        os.close(fd)
    message = str(err.value)
    assert str(lock) in message and "no progress" in message and "stop it" in message and mini.url in message
    assert server.requests == []  # nothing was fetched behind the holder's back
    assert hub.download("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()


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
        path = hub.download("mini_beit", cache=cache, progress=False, lock_timeout=0.5)
    finally:
        thread.join(10)
    assert time.monotonic() - t0 >= 1.4
    assert path.read_bytes() == BEIT.read_bytes()


def test_url_override(server, mini, cache):
    mirror = server.serve("/mirror/mini_beit.pt", BEIT.read_bytes())
    server.status["/mini_beit.pt"] = 500
    path = hub.download("mini_beit", cache=cache, progress=False, url=mirror)
    assert [p for p, _ in server.requests] == ["/mirror/mini_beit.pt"]
    assert json.loads((cache / "mini_beit.pt.verified").read_text())["url"] == mirror
    assert path.read_bytes() == BEIT.read_bytes()


def test_progress_line_when_stderr_is_not_a_terminal(server, mini, cache, capsys):
    hub.download("mini_beit", cache=cache)
    err = capsys.readouterr().err
    assert "downloading mini_beit" in err and mini.url in err


# ---------------------------------------------------------------------------------------------
# Refusals


def test_wrong_checkpoint_is_refused_and_deleted(server, mini, cache):
    server.serve("/mini_beit.pt", SWIN.read_bytes())  # a SwinV2 file where the BEiT one should be
    with pytest.raises(CheckpointError) as err:
        hub.download("mini_beit", cache=cache, progress=False)
    message = str(err.value)
    assert mini.url in message and "swinv2" in message and "deleted" in message and "again" in message
    assert files_in(cache) == []
    assert hub.cached_path("mini_beit", cache=cache) is None

    server.serve("/mini_beit.pt", BEIT.read_bytes())  # fixed on the server: the next try works
    assert hub.download("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()


def test_other_architecture_of_the_same_family_is_refused(server, cache):
    url = server.serve("/fake_base.pt", BEIT.read_bytes())
    hub.register(hub.ModelEntry("fake_base", url, PRESETS["dpt_beit_base_384"]))
    try:
        with pytest.raises(CheckpointError, match=r"another beit architecture.*embed_dim: 32, expected 768"):
            hub.download("fake_base", cache=cache, progress=False)
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
        hub.download("mini_beit", cache=cache, progress=False)
    assert files_in(cache) == []


def test_cached_file_changed_since_its_check_is_fetched_again(server, mini, cache):
    path = hub.download("mini_beit", cache=cache, progress=False)
    path.write_bytes(path.read_bytes()[:-100])  # truncated on disk later
    assert hub.cached_path("mini_beit", cache=cache) is None
    assert hub.download("mini_beit", cache=cache, progress=False).read_bytes() == BEIT.read_bytes()
    assert len(server.requests) == 2


def test_file_placed_in_cache_by_hand_is_checked_not_fetched(server, mini, cache):
    cache.mkdir()
    (cache / "mini_beit.pt").write_bytes(BEIT.read_bytes())
    assert hub.download("mini_beit", cache=cache, progress=False) == cache / "mini_beit.pt"
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
    path = hub.download("mini_beit", cache=cache, progress=False)
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
    entry = hub.register(hub.ModelEntry("mini_da2", url, MINI_CONFIGS["mini_da2"], da.stat().st_size,
                                        licence="Apache-2.0", file="mini_da2.pth"))
    try:
        path = hub.download("mini_da2", cache=cache, progress=False)
        assert path == cache / "mini_da2.pth" and path.read_bytes() == da.read_bytes()
        assert "mini_da2 is published under the licence Apache-2.0" in capsys.readouterr().err
        assert hub.verify(path, entry) is MINI_CONFIGS["mini_da2"]
        wrong = hub.ModelEntry("mini_da2_metric", url, MINI_CONFIGS["mini_da2_metric"])
        assert hub.verify(path, wrong) is MINI_CONFIGS["mini_da2_metric"]  # the same keys: only the name tells
    finally:
        hub.unregister("mini_da2")
