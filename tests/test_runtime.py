"""Runtime thread budget, registry, Cython build checks, and compile-on-first-call behaviour."""
import os
import subprocess
import sys

import numba
import pytest

from fastcpu import kernels, runtime
from fastcpu.kernels import _cybuild


def test_threads_sets_and_restores():
    before = (numba.get_num_threads(), runtime._get_blas_threads())
    with runtime.threads(1):
        assert numba.get_num_threads() == 1
        assert runtime._get_blas_threads() == 1
        assert runtime.num_threads() == 1
        with runtime.blas_single():
            assert runtime._get_blas_threads() == 1
    assert (numba.get_num_threads(), runtime._get_blas_threads()) == before


def test_threads_restores_on_exception():
    before = numba.get_num_threads()
    with pytest.raises(ZeroDivisionError):
        with runtime.threads(1):
            1 / 0
    assert numba.get_num_threads() == before


def test_threads_rejects_bad_counts():
    with pytest.raises(ValueError):
        with runtime.threads(0):
            pass
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        with runtime.threads(numba.config.NUMBA_NUM_THREADS + 1):
            pass


def test_blas_single_inside_parallel_kernel():
    with runtime.threads(2):
        assert runtime._get_blas_threads() == 2 or numba.config.NUMBA_NUM_THREADS < 2
        with runtime.blas_single():
            assert runtime._get_blas_threads() == 1
        assert runtime._get_blas_threads() == min(2, numba.config.NUMBA_NUM_THREADS)


def test_info_reports_everything():
    d = runtime.info()
    assert d["threadpools"] and any(p["user_api"] == "blas" for p in d["threadpools"])
    assert set(d["cython"]) == set(kernels.CYTHON_KERNELS)
    assert all(v == "ok" for v in d["cython"].values()), d["cython"]
    text = runtime.format_info(d)
    assert "blas" in text and "numba" in text


def test_registry():
    av = kernels.available()
    assert set(av) == set(kernels.OPS)
    for op in kernels.OPS:
        ns = kernels.get(op)
        parts = ns.backend[5:-1].split(", ") if ns.backend.startswith("auto(") else [ns.backend]
        assert all(p.split("=")[-1] in av[op] for p in parts), ns.backend
    with pytest.raises(KeyError, match="unknown kernel"):
        kernels.get("nope")
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.get("layernorm", "cuda")
    with pytest.raises(KeyError, match="no 'cython' backend"):
        kernels.get("dropout", "cython")


def test_stale_cython_build_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "layernorm.pyx").write_text("# edited source\n")
    monkeypatch.setattr(_cybuild, "_SRC_DIR", tmp_path)
    monkeypatch.setattr(_cybuild, "_cache", {})
    with pytest.raises(_cybuild.CythonBuildError, match="stale.*pip install -e"):
        _cybuild.module("layernorm")
    monkeypatch.setenv("FASTCPU_REQUIRE_CYTHON", "1")
    with pytest.raises(_cybuild.CythonBuildError):
        _cybuild.available("layernorm")
    monkeypatch.setenv("FASTCPU_REQUIRE_CYTHON", "0")
    assert _cybuild.available("layernorm") is False


def test_missing_cython_build_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_cybuild, "_cache", {})
    real = _cybuild.importlib.import_module

    def fake(name):
        if name.startswith("fastcpu.kernels._cy_"):
            raise ImportError("no such module")
        return real(name)
    monkeypatch.setattr(_cybuild.importlib, "import_module", fake)
    with pytest.raises(_cybuild.CythonBuildError, match="missing.*pip install -e"):
        _cybuild.module("conv1d")


PROBE = r"""
import sys, numpy as np
import fastcpu, fastcpu.kernels
from fastcpu.kernels import layernorm
assert layernorm._fwd_nb.signatures == [], "importing compiled something"
x = np.ones((4, 8), np.float32); w = np.ones(8, np.float32)
layernorm.forward_numba(x, w, w)
st = layernorm._fwd_nb.stats
print(len(layernorm._fwd_nb.signatures), st.cache_hits.get(layernorm._fwd_nb.signatures[0], 0),
      st.cache_misses.get(layernorm._fwd_nb.signatures[0], 0))
"""


def test_import_compiles_nothing_and_cache_is_reused(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = (tuple(map(int, r.stdout.split())) for r in runs)
    assert first == (1, 0, 1)        # one signature, compiled (cache miss) in the first process
    assert second == (1, 1, 0)       # loaded from the cache in the second


def test_keep_memory_reuses_freed_pages():
    """Inside keep_memory a freed large array's pages are reused: allocating it again does not
    page-fault again (with glibc's default, or a trim threshold of 0, every page faults)."""
    import resource

    import numpy as np
    pages = 20_000_000 // 4096

    def faults_of_one_alloc():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.empty(20_000_000 // 4, np.float32)
        a.fill(1.0)
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    with runtime.keep_memory() as ok:
        if not ok:                                   # not glibc: nothing is promised
            return
        faults_of_one_alloc()
        again = [faults_of_one_alloc() for _ in range(3)]
    assert max(again) < 0.05 * pages, (again, pages)


def test_omp_wait_policy_default_is_set_before_openmp_loads():
    r = subprocess.run([sys.executable, "-c", "import os; import fastcpu; "
                        "print(os.environ['OMP_WAIT_POLICY'])"],
                       env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"},
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "PASSIVE"
    r = subprocess.run([sys.executable, "-c", "import os; import fastcpu; "
                        "print(os.environ['OMP_WAIT_POLICY'])"],
                       env=dict(os.environ, OMP_WAIT_POLICY="ACTIVE"), capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "ACTIVE"                # an explicit setting wins
    r = subprocess.run([sys.executable, "-c", "import os; import fastcpu, numpy; "
                        "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"],
                       env={k: v for k, v in os.environ.items()
                            if k != "OPENBLAS_THREAD_TIMEOUT"},
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "4"
    r = subprocess.run([sys.executable, "-c", "import os, numpy; import fastcpu; "
                        "from fastcpu import runtime; "
                        "print(runtime.info()['openblas_thread_timeout'])"],
                       env={k: v for k, v in os.environ.items()
                            if k != "OPENBLAS_THREAD_TIMEOUT"},
                       capture_output=True, text=True, timeout=60)
    assert "numpy was imported before fastcpu" in r.stdout
