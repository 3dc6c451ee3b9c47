"""Loading the Cython kernel builds (``fastcpu.kernels._cy_*``), refusing stale or missing ones.

Each extension is compiled by setup.py with a digest of its sources baked in (``_srchash``: the
``.pyx`` and the ``.pxd``/headers it pulls in). In a checkout the sources sit in ``kernels/``; a
build whose digest differs from them is *stale*. With ``FASTCPU_REQUIRE_CYTHON=1`` (CI sets it)
a missing or stale build raises ``CythonBuildError`` naming the fix; otherwise the Cython
backend is simply unavailable and ``backend="auto"`` never silently picks it.

A local build has one module per kernel (``_cy_attention``, ``-march=native``). A portable
build (``FASTCPU_PORTABLE=1``) has one per x86-64 level (``_cy_attention_v4``, ``_v3``,
``_x86_64``) and the best one this CPU runs is imported; ``FASTCPU_KERNEL_VARIANT=native|v4|v3|
x86_64`` picks one (an error if it is not built or the CPU lacks what it needs).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from fastcpu.kernels._srchash import digest

FIX = "rebuild with: pip install -e . (or: python setup.py build_ext --inplace)"
_SRC_DIR = Path(__file__).resolve().parents[2] / "kernels"
_cache: dict[str, object] = {}
_chosen: dict[str, str] = {}
# variant -> CPU flags (/proc/cpuinfo names) it needs; best first. "native": a local build.
VARIANTS = {
    "native": (),
    "v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"),
    "v3": ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"),
    "x86_64": (),
}
SINGLE = ("dnnl",)          # built once in every build (oneDNN picks its own ISA)


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _candidates(name: str):
    """(variant, module name) to try, best first."""
    suffix = {"native": ""}
    if name in SINGLE:
        return [("native", f"fastcpu.kernels._cy_{name}")]
    forced = os.environ.get("FASTCPU_KERNEL_VARIANT", "")
    if forced:
        if forced not in VARIANTS:
            raise CythonBuildError(f"FASTCPU_KERNEL_VARIANT={forced}: expected one of "
                                   f"{', '.join(VARIANTS)}")
        lacks = [f for f in VARIANTS[forced] if f not in cpu_flags()]
        if lacks:
            raise CythonBuildError(f"FASTCPU_KERNEL_VARIANT={forced}: this CPU lacks "
                                   f"{', '.join(lacks)}")
        order = [forced]
    else:
        flags = cpu_flags()
        order = [v for v, need in VARIANTS.items() if all(f in flags for f in need)]
    return [(v, f"fastcpu.kernels._cy_{name}{suffix.get(v, '_' + v)}") for v in order]


class CythonBuildError(ImportError):
    pass


def _required() -> bool:
    return os.environ.get("FASTCPU_REQUIRE_CYTHON", "") not in ("", "0")


def _load(name: str):
    """Return the module, or a string saying why it is unusable."""
    errors = []
    for variant, modname in _candidates(name):
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:
            errors.append(f"{e.__class__.__name__}: {e}")
            continue
        _chosen[name] = variant
        break
    else:
        return f"missing ({'; '.join(errors[:2])}); {FIX}"
    src = _SRC_DIR / f"{name}.pyx"
    if src.exists():
        want = digest(src)
        have = getattr(mod, "SRC_HASH", None)
        if have != want:
            return f"stale (built from {have}, source is {want}); {FIX}"
    return mod


def variant(name: str) -> str | None:
    """Which build of kernel ``name`` was imported (native, v4, v3, x86_64), if any."""
    return _chosen.get(name)


def module(name: str):
    """The Cython module for kernel ``name``; raises CythonBuildError if missing or stale."""
    if name not in _cache:
        try:
            _cache[name] = _load(name)
        except CythonBuildError as e:
            _cache[name] = f"unusable ({e})"
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
