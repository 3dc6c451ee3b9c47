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


# ----------------------------------------------------------------------------- 1-D convolution

POST_NONE, POST_LRELU, POST_TANH = 0, 1, 2


cdef class Conv:
    """A 1-D convolution or deconvolution (transposed conv) primitive for one sequence length,
    fp32, channels-last activations (src (T, Ci), dst (To, Co) C-contiguous: oneDNN's ``nwc``
    with N = 1), weights reordered once into the layout the primitive chose, bias, and the
    epilogue dst (+)= conv (+ b) then leaky ReLU (alpha) or tanh, as post-ops."""
    cdef dnnl_primitive_t prim
    cdef dnnl_memory_t msrc, mw, mb, mdst
    cdef object wbuf, bbuf
    cdef readonly str impl
    cdef readonly long T, To, Ci, Co

    def __cinit__(self):
        self.prim = NULL
        self.msrc = self.mw = self.mb = self.mdst = NULL

    def __dealloc__(self):
        if self.prim != NULL:
            dnnl_primitive_destroy(self.prim)
        if self.msrc != NULL:
            dnnl_memory_destroy(self.msrc)
        if self.mw != NULL:
            dnnl_memory_destroy(self.mw)
        if self.mb != NULL:
            dnnl_memory_destroy(self.mb)
        if self.mdst != NULL:
            dnnl_memory_destroy(self.mdst)

    def make(self, bint deconv, long T, long To, cnp.ndarray w, cnp.ndarray b, long stride,
             long dilation, long pad_l, long pad_r, bint accumulate, int post, float alpha,
             int nthreads):
        """w: float32 (Co, Ci, K) C-contiguous (for a deconvolution, PyTorch's (Ci, Co, K)
        transposed to that); b: float32 (Co,)."""
        _init()
        cdef dnnl_memory_desc_t mds = NULL, mdw = NULL, mdb = NULL, mdd = NULL, mdwu = NULL
        cdef const_dnnl_memory_desc_t mdw_pd
        cdef dnnl_primitive_attr_t attr = NULL
        cdef dnnl_post_ops_t po = NULL
        cdef dnnl_primitive_desc_t pd = NULL, rpd = NULL
        cdef dnnl_primitive_t rprim = NULL
        cdef dnnl_memory_t mwu = NULL
        cdef const char* impl = NULL
        cdef dnnl_dims_t ds, dw, db, dd, st, dl, pl, pr
        cdef dnnl_exec_arg_t args[2]
        cdef dnnl_status_t s
        cdef long Co = w.shape[0], Ci = w.shape[1], K = w.shape[2]
        self.T, self.To, self.Ci, self.Co = T, To, Ci, Co
        ds[0], ds[1], ds[2] = 1, Ci, T
        dd[0], dd[1], dd[2] = 1, Co, To
        dw[0], dw[1], dw[2] = Co, Ci, K
        db[0] = Co
        st[0], dl[0], pl[0], pr[0] = stride, dilation - 1, pad_l, pad_r
        openmp.omp_set_num_threads(nthreads)
        try:
            _ck(dnnl_memory_desc_create_with_tag(&mds, 3, ds, dnnl_f32, dnnl_nwc), b"md src")
            _ck(dnnl_memory_desc_create_with_tag(&mdd, 3, dd, dnnl_f32, dnnl_nwc), b"md dst")
            _ck(dnnl_memory_desc_create_with_tag(&mdw, 3, dw, dnnl_f32, dnnl_format_tag_any),
                b"md weights")
            _ck(dnnl_memory_desc_create_with_tag(&mdwu, 3, dw, dnnl_f32, dnnl_oiw), b"md w")
            _ck(dnnl_memory_desc_create_with_tag(&mdb, 1, db, dnnl_f32, dnnl_x), b"md bias")
            _ck(dnnl_primitive_attr_create(&attr), b"attr_create")
            if accumulate or post != POST_NONE:
                _ck(dnnl_post_ops_create(&po), b"post_ops_create")
                if accumulate:
                    _ck(dnnl_post_ops_append_sum(po, 1.0, 0, dnnl_data_type_undef), b"sum")
                if post == POST_LRELU:
                    _ck(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, alpha, 0.0),
                        b"leaky relu")
                elif post == POST_TANH:
                    _ck(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_tanh, 0.0, 0.0), b"tanh")
                _ck(dnnl_primitive_attr_set_post_ops(attr, po), b"set_post_ops")
            if deconv:
                s = dnnl_deconvolution_forward_primitive_desc_create(
                    &pd, _engine, dnnl_forward_inference, dnnl_deconvolution_direct, mds, mdw,
                    mdb, mdd, st, dl, pl, pr, attr)
            else:
                s = dnnl_convolution_forward_primitive_desc_create(
                    &pd, _engine, dnnl_forward_inference, dnnl_convolution_direct, mds, mdw,
                    mdb, mdd, st, dl, pl, pr, attr)
            _ck(s, b"(de)convolution primitive_desc_create")
            _ck(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl), b"query")
            self.impl = impl.decode()
            _ck(dnnl_primitive_create(&self.prim, pd), b"primitive_create")
            mdw_pd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0)
            self.wbuf = np.empty(dnnl_memory_desc_get_size(mdw_pd), np.uint8)
            _ck(dnnl_memory_create(&self.mw, mdw_pd, _engine, cnp.PyArray_DATA(self.wbuf)),
                b"memory_create")
            # the weights, once, into the primitive's layout
            _ck(dnnl_memory_create(&mwu, mdwu, _engine, cnp.PyArray_DATA(w)), b"memory_create")
            _ck(dnnl_reorder_primitive_desc_create(&rpd, mdwu, _engine, mdw_pd, _engine, NULL),
                b"reorder_primitive_desc_create")
            _ck(dnnl_primitive_create(&rprim, rpd), b"primitive_create")
            args[0].arg, args[0].memory = DNNL_ARG_FROM, mwu
            args[1].arg, args[1].memory = DNNL_ARG_TO, self.mw
            with nogil:
                s = dnnl_primitive_execute(rprim, _stream, 2, args)
                if s == dnnl_success:
                    s = dnnl_stream_wait(_stream)
            _ck(s, b"weights reorder")
            self.bbuf = np.ascontiguousarray(b, np.float32)
            _ck(dnnl_memory_create(&self.mb, mdb, _engine, cnp.PyArray_DATA(self.bbuf)),
                b"memory_create")
            _ck(dnnl_memory_create(&self.msrc, mds, _engine, NULL), b"memory_create")
            _ck(dnnl_memory_create(&self.mdst, mdd, _engine, NULL), b"memory_create")
        finally:
            if mds != NULL:
                dnnl_memory_desc_destroy(mds)
            if mdd != NULL:
                dnnl_memory_desc_destroy(mdd)
            if mdw != NULL:
                dnnl_memory_desc_destroy(mdw)
            if mdwu != NULL:
                dnnl_memory_desc_destroy(mdwu)
            if mdb != NULL:
                dnnl_memory_desc_destroy(mdb)
            if mwu != NULL:
                dnnl_memory_destroy(mwu)
            if rprim != NULL:
                dnnl_primitive_destroy(rprim)
            if rpd != NULL:
                dnnl_primitive_desc_destroy(rpd)
            if po != NULL:
                dnnl_post_ops_destroy(po)
            if attr != NULL:
                dnnl_primitive_attr_destroy(attr)
            if pd != NULL:
                dnnl_primitive_desc_destroy(pd)

    def run(self, cnp.ndarray src, cnp.ndarray dst, int nthreads=1):
        """dst (To, Co) (+)= the conv of src (T, Ci); both float32 C-contiguous."""
        if src.dtype != np.float32 or dst.dtype != np.float32 or \
                not src.flags.c_contiguous or not dst.flags.c_contiguous or \
                src.ndim != 2 or dst.ndim != 2 or src.shape[0] != self.T or \
                src.shape[1] != self.Ci or dst.shape[0] != self.To or dst.shape[1] != self.Co:
            raise ValueError(f"conv: src must be float32 ({self.T}, {self.Ci}) and dst "
                             f"({self.To}, {self.Co}), C-contiguous")
        cdef dnnl_exec_arg_t args[4]
        cdef dnnl_status_t s
        dnnl_memory_set_data_handle(self.msrc, cnp.PyArray_DATA(src))
        dnnl_memory_set_data_handle(self.mdst, cnp.PyArray_DATA(dst))
        args[0].arg, args[0].memory = DNNL_ARG_SRC, self.msrc
        args[1].arg, args[1].memory = DNNL_ARG_WEIGHTS, self.mw
        args[2].arg, args[2].memory = DNNL_ARG_BIAS, self.mb
        args[3].arg, args[3].memory = DNNL_ARG_DST, self.mdst
        openmp.omp_set_num_threads(nthreads)
        with nogil:
            s = dnnl_primitive_execute(self.prim, _stream, 4, args)
            if s == dnnl_success:
                s = dnnl_stream_wait(_stream)
        _ck(s, b"execute")
        return dst
