"""JAX's persistent compilation cache, switched on only when asked (the CLI asks; the library never does)."""

from __future__ import annotations

import os


def enable(directory=None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process, so a second process does not compile again.

    `directory`: where to keep it; default `$DPT_JAX_COMPILATION_CACHE`, else `<cache dir>/xla`
    (see `hub.cache_dir`). "off" (as argument or variable) leaves JAX as it is, and so does a
    cache directory the user configured in JAX already. Returns the directory in use.
    """
    import jax

    from .hub import cache_dir

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    directory = directory or os.environ.get("DPT_JAX_COMPILATION_CACHE") or str(cache_dir() / "xla")
    if str(directory).lower() == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return str(directory)
