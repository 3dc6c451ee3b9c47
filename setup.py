"""The table that compiles kernels/*.pyx into fastcpu.kernels._cy_* (see DESIGN.md), and the copy
of the top-level configs/ into the package.

Two kinds of build:

- local (the default, ``pip install -e .``): each kernel once, ``-march=native``, for this CPU;
- portable (``FASTCPU_PORTABLE=1``, for wheels others install): on x86-64 each kernel three
  times, for the x86-64 baseline (SSE2), x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512), as
  ``_cy_<name>_x86_64`` / ``_v3`` / ``_v4``; ``fastcpu.kernels._cybuild`` imports the best one the
  CPU runs. Elsewhere (aarch64, macOS) once, without x86 flags. Debug sections are left out.
"""
import os
import platform
import runpy
import shutil
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
digest = runpy.run_path(str(HERE / "fastcpu" / "kernels" / "_srchash.py"))["digest"]

# The safe subset of -ffast-math: lets GCC vectorise float reductions and sqrt, keeps inf/NaN
# semantics (no -ffinite-math-only: -inf masking and NaN checks must keep working).
FLAGS = ["-O3", "-fno-wrapv", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
         "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]
PORTABLE = os.environ.get("FASTCPU_PORTABLE") == "1"
X86 = platform.machine().lower() in ("x86_64", "amd64")
LINUX = platform.system() == "Linux"
if PORTABLE:
    # suffix -> flags; fastcpu.kernels._cybuild.VARIANTS holds the CPU features each needs
    VARIANTS = ({"_x86_64": ["-march=x86-64", "-mtune=generic"],
                 "_v3": ["-march=x86-64-v3", "-mtune=generic"],
                 "_v4": ["-march=x86-64-v4", "-mtune=generic"]} if X86 else {"": []})
    RELEASE = ["-g0"]
    STRIP = ["-Wl,--strip-debug"] if LINUX else []
else:
    VARIANTS = {"": ["-march=native"] if X86 else ["-mcpu=native"]}
    RELEASE, STRIP = [], []

KERNELS = ["layernorm", "adam", "conv1d", "attention"]


def dnnl_include():
    """oneDNN's headers: $FASTCPU_DNNL_INCLUDE, else the onednn-devel-cpu-gomp wheel (a build
    requirement on x86-64 Linux), else None (no oneDNN extension: fp32 runs without it)."""
    env = os.environ.get("FASTCPU_DNNL_INCLUDE")
    if env:
        return env
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        dist = distribution("onednn-devel-cpu-gomp")
    except (ImportError, PackageNotFoundError):
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith("include/oneapi/dnnl/dnnl.h"):
            return str(Path(dist.locate_file(f)).resolve().parents[2])
    return None


def ext(name, suffix="", arch=(), include=(), link=()):
    # a relative path: setuptools refuses absolute source paths (and the sdist holds them)
    src = f"kernels/{name}.pyx"
    return Extension(
        f"fastcpu.kernels._cy_{name}{suffix}",
        [src],
        include_dirs=[np.get_include(), "kernels", *include],
        define_macros=[("FASTCPU_SRC_HASH", f'"{digest(HERE / src)}"'),
                       ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=FLAGS + list(arch) + RELEASE,
        extra_link_args=["-fopenmp", *(["-lmvec"] if LINUX else []), *STRIP, *link],
    )


class build_py_with_configs(build_py):
    """Put the repository's configs/*.yaml into the package (fastcpu/configs in the wheel):
    configs/ stays the one copy the repository edits."""

    def run(self):
        super().run()
        dst = Path(self.build_lib) / "fastcpu" / "configs"
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted((HERE / "configs").glob("*.yaml")):
            shutil.copyfile(f, dst / f.name)


DIRECTIVES = {"boundscheck": False, "wraparound": False, "cdivision": True,
              "initializedcheck": False}
exts = []
for suffix, arch in VARIANTS.items():
    # one C file per variant (its module init is named after the extension), in its own dir
    exts += cythonize([ext(k, suffix, arch) for k in KERNELS], language_level=3,
                      compiler_directives=DIRECTIVES,
                      build_dir=f"build/cython{suffix}" if suffix else None)
if dnnl_include():
    # Not linked against libdnnl: fastcpu.kernels.gemm loads the runtime wheel's libdnnl.so.3
    # (RTLD_GLOBAL) before importing this module, wherever that wheel put it. oneDNN picks its
    # own ISA at run time, so this thin binding is built once, for the baseline.
    exts += cythonize([ext("dnnl", arch=next(iter(VARIANTS.values())),
                           include=[dnnl_include()])], language_level=3,
                      compiler_directives=DIRECTIVES)
setup(ext_modules=exts, cmdclass={"build_py": build_py_with_configs})
