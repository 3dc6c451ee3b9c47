# The few oneDNN (3.2) C API calls fastcpu uses: matmul primitives on plain strided 2-D memory,
# and (the vocoder) 1-D convolution / deconvolution primitives with channels-last activations.
# Declarations only; the types and values come from the library's own header at compile time.
from libc.stdint cimport int64_t, int32_t

cdef extern from "oneapi/dnnl/dnnl.h" nogil:
    ctypedef int dnnl_status_t
    int dnnl_success
    ctypedef int64_t dnnl_dims_t[12]
    int64_t DNNL_RUNTIME_DIM_VAL

    ctypedef enum dnnl_data_type_t:
        dnnl_data_type_undef
        dnnl_f32
        dnnl_bf16
    ctypedef enum dnnl_engine_kind_t:
        dnnl_cpu
    ctypedef enum dnnl_alg_kind_t:
        dnnl_eltwise_relu
        dnnl_eltwise_tanh
        dnnl_convolution_direct
        dnnl_deconvolution_direct
    ctypedef enum dnnl_prop_kind_t:
        dnnl_forward_inference
    ctypedef enum dnnl_format_tag_t:
        dnnl_format_tag_any
        dnnl_nwc
        dnnl_oiw
        dnnl_x
    ctypedef enum dnnl_query_t:
        dnnl_query_impl_info_str
        dnnl_query_weights_md
    ctypedef enum dnnl_cpu_isa_t:
        dnnl_cpu_isa_avx512_core
        dnnl_cpu_isa_avx512_core_bf16
        dnnl_cpu_isa_avx512_core_amx
    unsigned dnnl_stream_default_flags
    int DNNL_ARG_SRC
    int DNNL_ARG_WEIGHTS
    int DNNL_ARG_BIAS
    int DNNL_ARG_DST
    int DNNL_ARG_FROM
    int DNNL_ARG_TO

    ctypedef void* dnnl_engine_t
    ctypedef void* dnnl_stream_t
    ctypedef void* dnnl_memory_desc_t
    ctypedef const void* const_dnnl_memory_desc_t
    ctypedef void* dnnl_memory_t
    ctypedef void* dnnl_primitive_attr_t
    ctypedef void* dnnl_post_ops_t
    ctypedef void* dnnl_primitive_desc_t
    ctypedef void* dnnl_primitive_t
    ctypedef struct dnnl_exec_arg_t:
        int arg
        dnnl_memory_t memory
    ctypedef struct dnnl_version_t:
        int major
        int minor
        int patch
        const char* hash
        unsigned cpu_runtime

    dnnl_status_t dnnl_engine_create(dnnl_engine_t* engine, dnnl_engine_kind_t kind, size_t index)
    dnnl_status_t dnnl_stream_create(dnnl_stream_t* stream, dnnl_engine_t engine, unsigned flags)
    dnnl_status_t dnnl_stream_wait(dnnl_stream_t stream)
    dnnl_status_t dnnl_memory_desc_create_with_strides(dnnl_memory_desc_t* md, int ndims,
                                                      const dnnl_dims_t dims,
                                                      dnnl_data_type_t data_type,
                                                      const dnnl_dims_t strides)
    dnnl_status_t dnnl_memory_desc_create_with_tag(dnnl_memory_desc_t* md, int ndims,
                                                  const dnnl_dims_t dims,
                                                  dnnl_data_type_t data_type,
                                                  dnnl_format_tag_t tag)
    int dnnl_memory_desc_equal(const_dnnl_memory_desc_t lhs, const_dnnl_memory_desc_t rhs)
    size_t dnnl_memory_desc_get_size(const_dnnl_memory_desc_t md)
    dnnl_status_t dnnl_memory_desc_clone(dnnl_memory_desc_t* md, const_dnnl_memory_desc_t src)
    dnnl_status_t dnnl_memory_desc_destroy(dnnl_memory_desc_t md)
    dnnl_status_t dnnl_memory_create(dnnl_memory_t* memory, const_dnnl_memory_desc_t md,
                                     dnnl_engine_t engine, void* handle)
    dnnl_status_t dnnl_memory_set_data_handle(dnnl_memory_t memory, void* handle)
    dnnl_status_t dnnl_memory_destroy(dnnl_memory_t memory)
    dnnl_status_t dnnl_primitive_attr_create(dnnl_primitive_attr_t* attr)
    dnnl_status_t dnnl_primitive_attr_destroy(dnnl_primitive_attr_t attr)
    dnnl_status_t dnnl_primitive_attr_set_post_ops(dnnl_primitive_attr_t attr,
                                                   dnnl_post_ops_t post_ops)
    dnnl_status_t dnnl_post_ops_create(dnnl_post_ops_t* post_ops)
    dnnl_status_t dnnl_post_ops_destroy(dnnl_post_ops_t post_ops)
    dnnl_status_t dnnl_post_ops_append_sum(dnnl_post_ops_t post_ops, float scale,
                                           int32_t zero_point, dnnl_data_type_t data_type)
    dnnl_status_t dnnl_post_ops_append_eltwise(dnnl_post_ops_t post_ops, dnnl_alg_kind_t alg,
                                               float alpha, float beta)
    dnnl_status_t dnnl_matmul_primitive_desc_create(dnnl_primitive_desc_t* pd,
                                                    dnnl_engine_t engine,
                                                    const_dnnl_memory_desc_t src_md,
                                                    const_dnnl_memory_desc_t weights_md,
                                                    const_dnnl_memory_desc_t bias_md,
                                                    const_dnnl_memory_desc_t dst_md,
                                                    dnnl_primitive_attr_t attr)
    dnnl_status_t dnnl_primitive_desc_query(dnnl_primitive_desc_t pd, dnnl_query_t what,
                                            int index, void* result)
    const_dnnl_memory_desc_t dnnl_primitive_desc_query_md(dnnl_primitive_desc_t pd,
                                                          dnnl_query_t what, int index)
    dnnl_status_t dnnl_convolution_forward_primitive_desc_create(
        dnnl_primitive_desc_t* pd, dnnl_engine_t engine, dnnl_prop_kind_t prop_kind,
        dnnl_alg_kind_t alg_kind, const_dnnl_memory_desc_t src_md,
        const_dnnl_memory_desc_t weights_md, const_dnnl_memory_desc_t bias_md,
        const_dnnl_memory_desc_t dst_md, const dnnl_dims_t strides, const dnnl_dims_t dilates,
        const dnnl_dims_t padding_l, const dnnl_dims_t padding_r, dnnl_primitive_attr_t attr)
    dnnl_status_t dnnl_deconvolution_forward_primitive_desc_create(
        dnnl_primitive_desc_t* pd, dnnl_engine_t engine, dnnl_prop_kind_t prop_kind,
        dnnl_alg_kind_t alg_kind, const_dnnl_memory_desc_t src_md,
        const_dnnl_memory_desc_t weights_md, const_dnnl_memory_desc_t bias_md,
        const_dnnl_memory_desc_t dst_md, const dnnl_dims_t strides, const dnnl_dims_t dilates,
        const dnnl_dims_t padding_l, const dnnl_dims_t padding_r, dnnl_primitive_attr_t attr)
    dnnl_status_t dnnl_reorder_primitive_desc_create(
        dnnl_primitive_desc_t* pd, const_dnnl_memory_desc_t src_md, dnnl_engine_t src_engine,
        const_dnnl_memory_desc_t dst_md, dnnl_engine_t dst_engine, dnnl_primitive_attr_t attr)
    dnnl_status_t dnnl_primitive_desc_destroy(dnnl_primitive_desc_t pd)
    dnnl_status_t dnnl_primitive_create(dnnl_primitive_t* prim, dnnl_primitive_desc_t pd)
    dnnl_status_t dnnl_primitive_destroy(dnnl_primitive_t prim)
    dnnl_status_t dnnl_primitive_execute(dnnl_primitive_t prim, dnnl_stream_t stream, int nargs,
                                         const dnnl_exec_arg_t* args)
    dnnl_cpu_isa_t dnnl_get_effective_cpu_isa()
    const dnnl_version_t* dnnl_version()
