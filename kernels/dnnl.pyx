# cython: language_level=3
# oneDNN matmul for fastcpu.kernels.gemm: C (+)= A @ B (+ bias, ReLU) on strided 2-D arrays,
# fp32 or bf16 operands (bf16 is stored as uint16: the upper half of the float32 bit pattern),
# fp32 accumulation, fp32 or bf16 output. One primitive per (shapes, strides, types, epilogue,
# threads), kept in an LRU cache; primitives are reused with new data handles. Also the
# float32 <-> bf16 conversions (round to nearest even, NaN kept quiet) on OpenMP threads.
cimport openmp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint32_t
from libc.string cimport memcpy
from collections import OrderedDict

cimport numpy as cnp
import numpy as np

from dnnl cimport *

cdef extern from *:
    const char* FASTCPU_SRC_HASH
SRC_HASH = FASTCPU_SRC_HASH.decode()
cnp.import_array()


class DnnlError(RuntimeError):
    pass


cdef inline void _ck(dnnl_status_t s, const char* what) except *:
    if s != dnnl_success:
        raise DnnlError(f"oneDNN {what.decode()} failed (status {s})")


cdef dnnl_engine_t _engine = NULL
cdef dnnl_stream_t _stream = NULL


cdef void _init() except *:
    global _engine, _stream
    if _engine == NULL:
        _ck(dnnl_engine_create(&_engine, dnnl_cpu, 0), b"engine_create")
        _ck(dnnl_stream_create(&_stream, _engine, dnnl_stream_default_flags), b"stream_create")


def version():
    cdef const dnnl_version_t* v = dnnl_version()
    return f"{v.major}.{v.minor}.{v.patch}"


def effective_isa():
    """oneDNN's ISA for this CPU: 'avx512_core_amx', 'avx512_core_bf16', 'avx512_core' or
    'older'."""
    cdef dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa()
    if (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx:
        return "avx512_core_amx"
    if (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16:
        return "avx512_core_bf16"
    if (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core:
        return "avx512_core"
    return "older"


cdef dnnl_data_type_t _dt(cnp.ndarray x) except *:
    if x.dtype == np.float32:
        return dnnl_f32
    if x.dtype == np.uint16:
        return dnnl_bf16
    raise TypeError(f"gemm: operands must be float32 or bf16 (uint16), got {x.dtype}")


cdef void _md(dnnl_memory_desc_t* md, cnp.ndarray x, dnnl_data_type_t dt) except *:
    cdef dnnl_dims_t dims, strides
    cdef int isz = x.itemsize
    dims[0] = x.shape[0]
    dims[1] = x.shape[1]
    strides[0] = x.strides[0] // isz
    strides[1] = x.strides[1] // isz
    _ck(dnnl_memory_desc_create_with_strides(md, 2, dims, dt, strides), b"memory_desc")


cdef class Matmul:
    """One matmul primitive; ``run`` executes it on arrays of the layout it was made for."""
    cdef dnnl_primitive_t prim
    cdef dnnl_memory_t ma, mb, mc, mbias
    cdef readonly str impl

    def __cinit__(self):
        self.prim = NULL
        self.ma = self.mb = self.mc = self.mbias = NULL

    def __dealloc__(self):
        if self.prim != NULL:
            dnnl_primitive_destroy(self.prim)
        if self.ma != NULL:
            dnnl_memory_destroy(self.ma)
        if self.mb != NULL:
            dnnl_memory_destroy(self.mb)
        if self.mc != NULL:
            dnnl_memory_destroy(self.mc)
        if self.mbias != NULL:
            dnnl_memory_destroy(self.mbias)

    cdef void make(self, cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, bint accumulate,
                   cnp.ndarray bias, bint relu) except *:
        cdef dnnl_memory_desc_t mda = NULL, mdb = NULL, mdc = NULL, mdbias = NULL
        cdef dnnl_primitive_attr_t attr = NULL
        cdef dnnl_post_ops_t po = NULL
        cdef dnnl_primitive_desc_t pd = NULL
        cdef const char* impl = NULL
        cdef dnnl_dims_t bd, bs
        cdef dnnl_status_t s
        _init()
        try:
            _md(&mda, a, _dt(a))
            _md(&mdb, b, _dt(b))
            _md(&mdc, c, _dt(c))
            if bias is not None:
                bd[0] = 1
                bd[1] = bias.shape[0]
                bs[0] = bias.shape[0]
                bs[1] = 1
                _ck(dnnl_memory_desc_create_with_strides(&mdbias, 2, bd, dnnl_f32, bs),
                    b"memory_desc")
            _ck(dnnl_primitive_attr_create(&attr), b"attr_create")
            if accumulate or relu:
                _ck(dnnl_post_ops_create(&po), b"post_ops_create")
                if accumulate:
                    _ck(dnnl_post_ops_append_sum(po, 1.0, 0, dnnl_data_type_undef), b"sum")
                if relu:
                    _ck(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.0, 0.0), b"relu")
                _ck(dnnl_primitive_attr_set_post_ops(attr, po), b"set_post_ops")
            s = dnnl_matmul_primitive_desc_create(&pd, _engine, mda, mdb, mdbias, mdc, attr)
            if s != dnnl_success:
                oa, ob, oc = <object>a, <object>b, <object>c
                raise DnnlError(f"oneDNN has no matmul for {oa.dtype}{oa.shape}/{oa.strides} @ "
                                f"{ob.dtype}{ob.shape}/{ob.strides} -> {oc.dtype}/{oc.strides} "
                                f"(status {s})")
            _ck(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl), b"query")
            self.impl = impl.decode()
            _ck(dnnl_primitive_create(&self.prim, pd), b"primitive_create")
            _ck(dnnl_memory_create(&self.ma, mda, _engine, NULL), b"memory_create")
            _ck(dnnl_memory_create(&self.mb, mdb, _engine, NULL), b"memory_create")
            _ck(dnnl_memory_create(&self.mc, mdc, _engine, NULL), b"memory_create")
            if bias is not None:
                _ck(dnnl_memory_create(&self.mbias, mdbias, _engine, NULL), b"memory_create")
        finally:
            if mda != NULL:
                dnnl_memory_desc_destroy(mda)
            if mdb != NULL:
                dnnl_memory_desc_destroy(mdb)
            if mdc != NULL:
                dnnl_memory_desc_destroy(mdc)
            if mdbias != NULL:
                dnnl_memory_desc_destroy(mdbias)
            if po != NULL:
                dnnl_post_ops_destroy(po)
            if attr != NULL:
                dnnl_primitive_attr_destroy(attr)
            if pd != NULL:
                dnnl_primitive_desc_destroy(pd)

    cdef void run(self, cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, cnp.ndarray bias) except *:
        cdef dnnl_exec_arg_t args[4]
        cdef int n = 3
        cdef dnnl_status_t s
        dnnl_memory_set_data_handle(self.ma, cnp.PyArray_DATA(a))
        dnnl_memory_set_data_handle(self.mb, cnp.PyArray_DATA(b))
        dnnl_memory_set_data_handle(self.mc, cnp.PyArray_DATA(c))
        args[0].arg = DNNL_ARG_SRC
        args[0].memory = self.ma
        args[1].arg = DNNL_ARG_WEIGHTS
        args[1].memory = self.mb
        args[2].arg = DNNL_ARG_DST
        args[2].memory = self.mc
        if self.mbias != NULL:
            dnnl_memory_set_data_handle(self.mbias, cnp.PyArray_DATA(bias))
            args[3].arg = DNNL_ARG_BIAS
            args[3].memory = self.mbias
            n = 4
        with nogil:
            s = dnnl_primitive_execute(self.prim, _stream, n, args)
            if s == dnnl_success:
                s = dnnl_stream_wait(_stream)
        _ck(s, b"execute")


_cache = OrderedDict()
CACHE_SIZE = 512            # primitives kept (row counts change with every batch)
stats = {"created": 0, "hits": 0}


def matmul(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, bint accumulate=False,
           cnp.ndarray bias=None, bint relu=False, int nthreads=1):
    """c (+)= a @ b (+ bias) (then max(., 0)); a (M, K), b (K, N), c (M, N), any 2-D strides
    oneDNN takes (row- or column-major, leading dimensions >= the extent). Types: a, b float32 or
    uint16 (bf16) alike; c float32 (any) or uint16 (not with accumulate); bias float32 (N,)."""
    if a.ndim != 2 or b.ndim != 2 or c.ndim != 2 or a.shape[1] != b.shape[0] or \
            c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError(f"gemm: shapes do not fit: {(<object>a).shape} @ {(<object>b).shape} -> "
                         f"{(<object>c).shape}")
    if bias is not None and (bias.dtype != np.float32 or bias.ndim != 1 or
                             bias.shape[0] != c.shape[1] or not bias.flags.c_contiguous):
        raise ValueError(f"gemm: bias must be float32 ({c.shape[1]},), contiguous")
    if a.shape[0] == 0 or b.shape[1] == 0:
        return c
    if a.shape[1] == 0:
        if not accumulate:
            c[...] = 0 if bias is None else np.maximum(bias, 0) if relu else bias
        return c
    key = (a.shape[0], a.shape[1], b.shape[1], (<object>a).strides, (<object>b).strides,
           (<object>c).strides, a.dtype.num,
           b.dtype.num, c.dtype.num, accumulate, bias is not None, relu, nthreads)
    cdef Matmul p = _cache.get(key)
    openmp.omp_set_num_threads(nthreads)
    if p is None:
        p = Matmul()
        p.make(a, b, c, accumulate, bias, relu)
        _cache[key] = p
        stats["created"] += 1
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
        stats["hits"] += 1
    p.run(a, b, c, bias)
    return c


def impl(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, int nthreads=1):
    """The implementation oneDNN picks for this layout (e.g. 'brg:avx512_core_bf16')."""
    cdef Matmul p = Matmul()
    openmp.omp_set_num_threads(nthreads)
    p.make(a, b, c, False, None, False)
    return p.impl


def clear_cache():
    _cache.clear()


# ----------------------------------------------------------------------------- conversions

cdef inline uint16_t _f2bf(float f) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &f, 4)
    if (u & 0x7fffffff) > 0x7f800000:          # NaN: keep it a (quiet) NaN
        return <uint16_t>((u >> 16) | 0x40)
    u = u + 0x7fff + ((u >> 16) & 1)            # round to nearest, ties to even
    return <uint16_t>(u >> 16)


def _walk(cnp.ndarray x, cnp.ndarray y):
    # (outer, inner, x strides, y strides) in elements, inner = the axis with x's smaller stride
    xs = [s // x.itemsize for s in (x.strides[0], x.strides[1])]
    ys = [s // y.itemsize for s in (y.strides[0], y.strides[1])]
    if abs(xs[1]) <= abs(xs[0]):
        return x.shape[0], x.shape[1], xs[0], xs[1], ys[0], ys[1]
    return x.shape[1], x.shape[0], xs[1], xs[0], ys[1], ys[0]


def to_bf16(cnp.ndarray x, cnp.ndarray y, int nthreads=1):
    """y (uint16) = bf16(x) (float32), both 2-D of one shape, any strides."""
    if x.dtype != np.float32 or y.dtype != np.uint16 or x.ndim != 2 or y.ndim != 2 or \
            (<object>x).shape != (<object>y).shape:
        raise ValueError("to_bf16: x float32 and y uint16, 2-D, of one shape")
    cdef int64_t no, ni, xo, xi, yo, yi, i, j
    no, ni, xo, xi, yo, yi = _walk(x, y)
    cdef const float* px = <const float*>cnp.PyArray_DATA(x)
    cdef uint16_t* py = <uint16_t*>cnp.PyArray_DATA(y)
    cdef const float* rx
    cdef uint16_t* ry
    if xi == 1 and yi == 1:
        for i in prange(no, nogil=True, num_threads=nthreads, schedule="static"):
            rx = px + i * xo
            ry = py + i * yo
            for j in range(ni):
                ry[j] = _f2bf(rx[j])
    else:
        for i in prange(no, nogil=True, num_threads=nthreads, schedule="static"):
            for j in range(ni):
                py[i * yo + j * yi] = _f2bf(px[i * xo + j * xi])
    return y
