"""The persistent XLA compilation cache: a restarted run loads its compiled programs instead of compiling them.

`use_compilation_cache(cfg.train.compilation_cache_dir)` points JAX's persistent cache at a directory (local or
gs://) once per process, before anything compiles; a later call with another directory has no effect, since JAX
fixes the directory at its first compilation. Every program is cached, whatever its compile time, so that a
warm restart compiles nothing: `cache_counts()` says how many programs this process loaded and compiled.

JAX does not cache a program that holds a host callback (with jax 0.10.2 on CPU it neither looks such a program
up nor writes it): a step scored by the host-callback verifiers is compiled again on every restart.
`grpo.scoring: jax` scores with the token-level verifiers (rlreason.verifiers.tokens) inside the program
instead, and then a restart compiles nothing.
"""

from __future__ import annotations

import os
import threading

import jax

# Every program JAX builds passes the backend-compile event, whether compiled or loaded; loaded ones also
# pass the cache-hit event. (A program with host callbacks that JAX will not cache passes no cache event.)
_BUILT, _LOADED = "/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_hits"
_counts = {_BUILT: 0, _LOADED: 0}
CACHE_MAX_BYTES = 64 * 2**30  # least recently used entries are evicted beyond this
_lock = threading.Lock()


def _count(event: str, *_, **__) -> None:
    if event in _counts:
        with _lock:
            _counts[event] += 1


jax.monitoring.register_event_listener(_count)
jax.monitoring.register_event_duration_secs_listener(_count)


def use_compilation_cache(directory: str) -> None:
    """Caches every compiled program under `directory` ('~' expanded; gs:// kept as a URL). Empty: leaves JAX's
    own setting (its JAX_COMPILATION_CACHE_DIR environment variable, else no persistent cache)."""
    if not directory:
        return
    path = directory if "://" in directory else os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    # A size limit turns on JAX's file lock around every read and write, so that runs sharing the directory
    # never read an entry another is still writing.
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def cache_counts() -> dict[str, int]:
    """Programs this process loaded from the persistent cache (`loaded`) and compiled (`compiled`)."""
    with _lock:
        return {"loaded": _counts[_LOADED], "compiled": _counts[_BUILT] - _counts[_LOADED]}
