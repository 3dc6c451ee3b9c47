"""Loading the Cython kernel builds (``fastcpu.kernels._cy_*``), refusing stale or missing ones.

Each extension is compiled by setup.py with the SHA-256 (first 16 hex digits) of its ``.pyx``
source baked in. In a checkout the source sits in ``kernels/``; a build whose hash differs from the
source is *stale*. With ``FASTCPU_REQUIRE_CYTHON=1`` (CI sets it) a missing or stale build raises
``CythonBuildError`` naming the fix; otherwise the Cython backend is simply unavailable and
``backend="auto"`` never silently picks it.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

FIX = "rebuild with: pip install -e . (or: python setup.py build_ext --inplace)"
_SRC_DIR = Path(__file__).resolve().parents[2] / "kernels"
_cache: dict[str, object] = {}


class CythonBuildError(ImportError):
    pass


def _required() -> bool:
    return os.environ.get("FASTCPU_REQUIRE_CYTHON", "") not in ("", "0")


def _load(name: str):
    """Return the module, or a string saying why it is unusable."""
    try:
        mod = importlib.import_module(f"fastcpu.kernels._cy_{name}")
    except ImportError as e:
        return f"missing ({e.__class__.__name__}: {e}); {FIX}"
    src = _SRC_DIR / f"{name}.pyx"
    if src.exists():
        want = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        have = getattr(mod, "SRC_HASH", None)
        if have != want:
            return f"stale (built from {have}, source is {want}); {FIX}"
    return mod


def module(name: str):
    """The Cython module for kernel ``name``; raises CythonBuildError if missing or stale."""
    if name not in _cache:
        _cache[name] = _load(name)
    got = _cache[name]
    if isinstance(got, str):
        raise CythonBuildError(f"fastcpu Cython kernel '{name}' is {got}")
    return got


def available(name: str) -> bool:
    try:
        module(name)
        return True
    except CythonBuildError:
        if _required():
            raise
        return False


def status() -> dict:
    from fastcpu.kernels import CYTHON_KERNELS
    out = {}
    for n in CYTHON_KERNELS:
        try:
            module(n)
            out[n] = "ok"
        except CythonBuildError as e:
            out[n] = str(e)
    return out
