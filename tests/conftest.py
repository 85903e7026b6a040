"""Test session set-up, for speed: tests run a few updates of tiny networks, so compiling
dominates their time.

- XLA compiles for the CPU without backend optimisation (about half the compile time; the
  programs run slower, which few updates do not notice).
- One persistent compilation cache serves the session, shared by its worker processes: tests
  that compile the same programs (the same tiny agents on the same task shapes) compile them
  once. It lives in a fresh temporary directory, so nothing carries over between sessions.
  Both are set in the environment, so that worker processes the tests start (Ray's) share
  them.
"""

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
# setdefault: pytest-xdist's workers inherit the directory the main process made, so a program
# one worker compiled serves the other too.
cache = os.environ.setdefault("O2O_TEST_XLA_CACHE", tempfile.mkdtemp(prefix="o2o-test-xla-"))
os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture
def bench_script(monkeypatch):
    """A loader of benchmarks/NAME.py as a module: the benchmarks are scripts, not a package,
    and import the scripts beside them."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
