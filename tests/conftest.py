"""Test session set-up, for speed: tests run a few updates of tiny networks, so compiling
dominates their time.

- XLA compiles for the CPU without backend optimisation (about half the compile time; the
  programs run slower, which few updates do not notice).
- One persistent compilation cache serves the session: tests that compile the same programs
  (the same tiny agents on the same task shapes) compile them once. It lives in a fresh
  temporary directory, so nothing carries over between sessions.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"

import jax  # after XLA_FLAGS, which the CPU backend reads when it starts

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="o2o-test-xla-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
