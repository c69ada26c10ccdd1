"""All tests run offline on CPU with full float32 matmul precision (TF32/bf16 passes would hide real bugs).

Fixtures shared by the download tests (test_hub.py, test_hf.py): a local HTTP server and a
registry entry served by it.
"""

import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")
# Tests leave the user's compilation cache alone; the cache itself is tested in its own processes.
os.environ.setdefault("DPT_JAX_COMPILATION_CACHE", "off")


@pytest.fixture
def server():
    from http_server import FileServer

    s = FileServer()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    # Never the user's real cache, whatever a test does.
    monkeypatch.setenv("DPT_JAX_CACHE", str(tmp_path / "env-cache"))
    return tmp_path / "cache"


@pytest.fixture
def mini(server):
    """A registry entry "mini_beit" whose URL serves the BEiT fixture (tests/fixtures/mini_beit.pt)."""
    from dpt_jax import hub
    from dpt_jax.family import Release
    from helpers import FIXTURES

    beit = FIXTURES / "mini_beit.pt"
    url = server.serve("/mini_beit.pt", beit.read_bytes())
    entry = hub.register(Release("mini_beit", "mini_beit.pt", beit.stat().st_size, "MIT", url=url))
    try:
        yield entry
    finally:
        hub.unregister("mini_beit")
