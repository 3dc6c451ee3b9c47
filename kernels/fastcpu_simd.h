/* Vector variants of libm functions for the Cython kernels.
 * glibc's libmvec provides SIMD expf (_ZGV*_expf, max 4 ulp error), but <math.h> declares it only
 * under -ffast-math, which would also assume no inf/NaN (and break -inf masking). Declaring the
 * simd clone here lets GCC vectorise loops calling expf with IEEE semantics otherwise intact. */
#ifndef FASTCPU_SIMD_H
#define FASTCPU_SIMD_H
#include <math.h>
#pragma omp declare simd notinbranch
float expf(float);
#endif
