"""Only the table that compiles kernels/*.pyx into fastcpu.kernels._cy_* (see DESIGN.md)."""
import hashlib
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
# The safe subset of -ffast-math: lets GCC vectorise float reductions and sqrt, keeps inf/NaN
# semantics (no -ffinite-math-only: -inf masking and NaN checks must keep working).
FLAGS = ["-O3", "-fno-wrapv", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fassociative-math",
         "-fno-signed-zeros", "-fno-trapping-math"]
if os.environ.get("FASTCPU_PORTABLE") != "1":
    FLAGS.append("-march=native")

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


def ext(name, include=(), link=()):
    src = HERE / "kernels" / f"{name}.pyx"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    return Extension(
        f"fastcpu.kernels._cy_{name}",
        [f"kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "kernels", *include],
        define_macros=[("FASTCPU_SRC_HASH", f'"{digest}"'),
                       ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=FLAGS,
        extra_link_args=["-fopenmp", "-lmvec", *link],
    )


exts = [ext(k) for k in KERNELS]
if dnnl_include():
    # Not linked against libdnnl: fastcpu.kernels.gemm loads the runtime wheel's libdnnl.so.3
    # (RTLD_GLOBAL) before importing this module, wherever that wheel put it.
    exts.append(ext("dnnl", include=[dnnl_include()]))
setup(ext_modules=cythonize(exts, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False,
                                                 "cdivision": True, "initializedcheck": False}))
