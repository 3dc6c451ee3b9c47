# Counter-based RNG shared by the Cython kernels (header-only). Same numbers as
# fastcpu/kernels/_common.py: splitmix64 finaliser of (counter + 1) * GOLDEN + key, top 24 bits.
from libc.stdint cimport uint64_t

cdef inline uint64_t rand24(uint64_t key, uint64_t i) noexcept nogil:
    cdef uint64_t z = (i + 1) * <uint64_t>0x9E3779B97F4A7C15ULL + key
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    z = z ^ (z >> 31)
    return z >> 40
