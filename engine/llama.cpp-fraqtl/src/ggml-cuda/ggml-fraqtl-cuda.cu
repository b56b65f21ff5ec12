// fraqtl: CUDA kernels for the D2 KV-cache block types (see ggml-fraqtl-cuda.cuh).
#include "ggml-fraqtl-cuda.cuh"
#include "fattn.cuh"
#include "ggml-fraqtl.h"

#include <cstring>

// ---------------------------------------------------------------------------------------
// A block kind (the kernels' template parameter) names a layout:
//   P (8, 16, 32):   [fp16 tail scale | P fp16 coefficients | (64-P) 3-bit codes]   d2_p*
//   P + D2_I8:       [fp16 tail scale | fp16 scale dp | P int8 codes | 3-bit codes]  d2_p*i8
//   0:               an f16 row (no blocks)

#define D2_I8 64

static constexpr __host__ __device__ int d2_np(int kind) { // protected coefficients of a block
    return kind % D2_I8;
}

static constexpr __host__ __device__ bool d2_is_i8(int kind) {
    return kind >= D2_I8;
}

// the byte of a block where its 3-bit codes start
static constexpr __host__ __device__ int d2_tail_at(int kind) {
    return d2_is_i8(kind) ? 4 + d2_np(kind) : 2 + 2*d2_np(kind);
}

static constexpr __host__ __device__ int d2_block_bytes(int kind) {
    return d2_tail_at(kind) + (QK_D2 - d2_np(kind))*3/8;
}

// the block kind of a cache type: 0 for f16, -1 for a type the kernels do not read
static int d2_cuda_kind(ggml_type type) {
    if (type == GGML_TYPE_F16) {
        return 0;
    }
    if (ggml_is_d2(type)) {
        return ggml_d2_protected(type);
    }
    return ggml_is_d2i8(type) ? ggml_d2i8_protected(type) + D2_I8 : -1;
}

// a D2 type the CUDA kernels write and read (the 2-bit-tail types are CPU only)
static bool d2_cuda_type(ggml_type type) {
    return ggml_is_d2(type) || ggml_is_d2i8(type);
}

static __device__ __forceinline__ float d2_ld_half(const uint8_t * p) {
    // D2 blocks are byte-aligned (a d2_p8 block is 39 bytes): never load a half directly
    const uint16_t bits = (uint16_t) (__ldg(p) | (__ldg(p + 1) << 8));
    return __half2float(__ushort_as_half(bits));
}

static __device__ __forceinline__ void d2_ld_f16x8(const half * src, float out[8]) {
    const uint4 raw = *(const uint4 *) src; // exact copies and f16 rows are 16-byte aligned
    const half2 * h = (const half2 *) &raw;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(h[j]);
        out[2*j + 0] = f.x;
        out[2*j + 1] = f.y;
    }
}

// elements [8*span, 8*span + 8) of one head's row (hd/64 blocks of kind K, or hd halves when K == 0)
template <int K>
static __device__ __forceinline__ void d2_ld_span(const uint8_t * row, const int span, float out[8]) {
    constexpr int P = d2_np(K);
    if constexpr (K == 0) {
        d2_ld_f16x8((const half *) row + 8*span, out);
    } else {
        const uint8_t * blk = row + (span/8)*d2_block_bytes(K);
        const int e0 = 8*(span % 8);
        if (e0 < P && d2_is_i8(K)) {
            const float dp = d2_ld_half(blk + 2);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                out[j] = (float) (int8_t) __ldg(blk + 4 + e0 + j)*dp;
            }
        } else if (e0 < P) {
            const uint8_t * ph = blk + 2 + 2*e0;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                out[j] = d2_ld_half(ph + 2*j);
            }
        } else {
            const float     s    = d2_ld_half(blk);
            const uint8_t * qs   = blk + d2_tail_at(K) + 3*((e0 - P)/8);
            const uint32_t  bits = (uint32_t) __ldg(qs) | ((uint32_t) __ldg(qs + 1) << 8) | ((uint32_t) __ldg(qs + 2) << 16);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                out[j] = (float) ((int) ((bits >> (3*j)) & 7) - 4)*s;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// set_rows: f32 rows -> D2 blocks, the CPU reference quantizer (ggml-fraqtl.c) step by step

static __device__ __forceinline__ float d2_fp16_round(const float x) {
    return __half2float(__float2half_rn(x));
}

static __device__ __forceinline__ float d2_code(const float t, const float inv) {
    // fminf/fmaxf also map a NaN to a valid code
    return fminf(fmaxf(rintf(__fmul_rn(t, inv)), -4.0f), 3.0f);
}

template <int NT>
static __device__ __forceinline__ float d2_tail_error(const float * t, const float s) {
    const float inv = __frcp_rn(s);
    float err = 0.0f;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
        const float e = __fsub_rn(t[i], __fmul_rn(d2_code(t[i], inv), s));
        err = __fadd_rn(err, __fmul_rn(e, e));
    }
    return err;
}

static __device__ __forceinline__ void d2_st_half(uint8_t * dst, const float v) {
    // The byte_perm is a no-op the assembler cannot see through. Without it, ptxas of CUDA 13.0
    // (sm_90) fuses "float -> half, store the low byte" into a float -> u8 conversion: the low
    // byte of every scale and protected coefficient came out as (uint8_t) v (check/d2_kernels_check.cu).
    const uint32_t bits = __byte_perm((uint32_t) __half_as_ushort(__float2half_rn(v)), 0, 0x3210);
    dst[0] = (uint8_t) (bits & 0xFF);
    dst[1] = (uint8_t) (bits >> 8);
}

// set_rows gives each 64-block 8 lanes: lane k < 7 scores candidate scale k over the whole tail,
// in the CPU's order, so the choice is the reference's bit for bit (a token's 16 blocks on Mistral
// were 16 threads doing 7 passes each, about 7 us); then each lane writes 8 of the 64 coefficients
#define D2_SR_LANES   8
#define D2_SR_THREADS 256

template <int K>
static __device__ void d2_quantize_block(const float * x, uint8_t * y, float * xs, const int g, const unsigned gmask) {
    constexpr int P  = d2_np(K);
    constexpr int NT = QK_D2 - P;
    const bool tail_lane = 8*g >= P; // P is a multiple of 8: a lane's coefficients are all protected or all tail
    float v[8];
    float max_pos = 0.0f;
    float max_neg = 0.0f;
    float amax    = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        v[j] = x[8*g + j];
        xs[8*g + j] = v[j];
        max_pos = tail_lane ? fmaxf(max_pos,  v[j]) : max_pos;
        max_neg = tail_lane ? fmaxf(max_neg, -v[j]) : max_neg;
        amax    = tail_lane ? amax : fmaxf(amax, fabsf(v[j]));
    }
#pragma unroll
    for (int o = D2_SR_LANES/2; o > 0; o /= 2) { // fmaxf: exact in any order
        max_pos = fmaxf(max_pos, __shfl_xor_sync(gmask, max_pos, o, D2_SR_LANES));
        max_neg = fmaxf(max_neg, __shfl_xor_sync(gmask, max_neg, o, D2_SR_LANES));
        amax    = fmaxf(amax,    __shfl_xor_sync(gmask, amax,    o, D2_SR_LANES));
    }
    __syncwarp(gmask);

    const float scale0 = fmaxf(__fdiv_rn(max_pos, 3.0f), __fdiv_rn(max_neg, 4.0f));
    const float cand   = __fmul_rn(scale0, __fsub_rn(1.0f, __fmul_rn(0.05f, (float) g)));
    const float s16    = d2_fp16_round(cand);
    const float err    = g < 7 && scale0 > 0.0f && s16 > 0.0f ? d2_tail_error<NT>(xs + P, s16) : INFINITY;
    float errs[7];
    float cands[7];
    float s16s[7];
#pragma unroll
    for (int k = 0; k < 7; ++k) {
        errs[k]  = __shfl_sync(gmask, err,  k, D2_SR_LANES);
        cands[k] = __shfl_sync(gmask, cand, k, D2_SR_LANES);
        s16s[k]  = __shfl_sync(gmask, s16,  k, D2_SR_LANES);
    }
    float scale = scale0;
    if (scale0 > 0.0f) { // the CPU's loop: candidate 0 is scale0 itself, the first strict minimum wins
        float best_err = errs[0];
        for (int k = 1; k < 7 && s16s[k] > 0.0f; ++k) {
            if (errs[k] < best_err) {
                best_err = errs[k];
                scale    = cands[k];
            }
        }
    }
    if (g == 0) {
        d2_st_half(y, scale);
    }
    const float s   = d2_fp16_round(scale);
    const float inv = s > 0.0f ? __frcp_rn(s) : 0.0f;
    if (tail_lane) {
        uint32_t bits = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            bits |= (uint32_t) ((int) d2_code(v[j], inv) + 4) << (3*j);
        }
        uint8_t * qs = y + d2_tail_at(K) + 3*((8*g - P)/8);
        qs[0] = (uint8_t) (bits      );
        qs[1] = (uint8_t) (bits >>  8);
        qs[2] = (uint8_t) (bits >> 16);
    } else if constexpr (d2_is_i8(K)) {
        // int8 codes under their own scale, as ggml-fraqtl.c's d2i8_quantize_block
        const float dp_raw = __fdiv_rn(amax, 127.0f);
        if (g == 0) {
            d2_st_half(y + 2, dp_raw);
        }
        const float dp    = d2_fp16_round(dp_raw);
        const float inv_p = dp > 0.0f ? __frcp_rn(dp) : 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            y[4 + 8*g + j] = (uint8_t) (int8_t) (int) fminf(fmaxf(rintf(__fmul_rn(v[j], inv_p)), -127.0f), 127.0f);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            d2_st_half(y + 2 + 2*(8*g + j), v[j]);
        }
    }
}

template <int K, typename idx_t>
static __global__ void d2_set_rows(const char * __restrict__ src0, const idx_t * __restrict__ src1, char * __restrict__ dst,
        const int64_t n_blocks, const int64_t nb_row /* blocks per row */, const int64_t ne01, const int64_t ne02,
        const int64_t nb01, const int64_t nb02, const int64_t nb03,
        const int64_t nb10, const int64_t nb11, const int64_t nb12, const int64_t ne11, const int64_t ne12,
        const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    __shared__ float xs[D2_SR_THREADS/D2_SR_LANES][QK_D2];
    const int64_t i = ((int64_t) blockDim.x*blockIdx.x + threadIdx.x)/D2_SR_LANES;
    if (i >= n_blocks) {
        return; // a block's 8 lanes leave together
    }
    const int      g     = threadIdx.x % D2_SR_LANES;
    const unsigned gmask = 0xFFu << (threadIdx.x % WARP_SIZE - g);
    const int64_t ib  = i % nb_row;
    const int64_t i01 = (i / nb_row) % ne01;
    const int64_t i02 = (i / nb_row / ne01) % ne02;
    const int64_t i03 =  i / nb_row / ne01 / ne02;
    const int64_t i12 = i03 % ne12;
    const int64_t i11 = i02 % ne11;

    const int64_t dst_row = *(const idx_t *) ((const char *) src1 + i01*nb10 + i11*nb11 + i12*nb12);
    const float * x = (const float *) (src0 + i01*nb01 + i02*nb02 + i03*nb03) + ib*QK_D2;
    uint8_t     * y = (uint8_t *) (dst + dst_row*nb1 + i02*nb2 + i03*nb3) + ib*d2_block_bytes(K);
    d2_quantize_block<K>(x, y, xs[threadIdx.x/D2_SR_LANES], g, gmask);
}

bool ggml_fraqtl_cuda_set_rows_applies(const ggml_tensor * dst) {
    return d2_cuda_type(dst->type) || ggml_is_d2b2(dst->type);
}

bool ggml_fraqtl_cuda_set_rows_supported(const ggml_tensor * op) {
    return d2_cuda_type(op->type) && op->src[0]->type == GGML_TYPE_F32 &&
        (op->src[1]->type == GGML_TYPE_I64 || op->src[1]->type == GGML_TYPE_I32) && op->ne[0] % QK_D2 == 0;
}

template <int P, typename idx_t>
static void d2_set_rows_cuda(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t nb_row   = src0->ne[0]/QK_D2;
    const int64_t n_blocks = nb_row*src0->ne[1]*src0->ne[2]*src0->ne[3];
    if (n_blocks == 0) {
        return;
    }
    const int64_t grid = (n_blocks*D2_SR_LANES + D2_SR_THREADS - 1)/D2_SR_THREADS;
    d2_set_rows<P, idx_t><<<grid, D2_SR_THREADS, 0, stream>>>(
        (const char *) src0->data, (const idx_t *) src1->data, (char *) dst->data, n_blocks, nb_row,
        src0->ne[1], src0->ne[2], src0->nb[1], src0->nb[2], src0->nb[3],
        src1->nb[0], src1->nb[1], src1->nb[2], src1->ne[1], src1->ne[2], dst->nb[1], dst->nb[2], dst->nb[3]);
    CUDA_CHECK(cudaGetLastError());
}

template <typename idx_t>
static void d2_set_rows_dispatch(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    switch (dst->type) {
        case GGML_TYPE_D2_P8:  d2_set_rows_cuda< 8, idx_t>(src0, src1, dst, stream); break;
        case GGML_TYPE_D2_P16: d2_set_rows_cuda<16, idx_t>(src0, src1, dst, stream); break;
        case GGML_TYPE_D2_P32: d2_set_rows_cuda<32, idx_t>(src0, src1, dst, stream); break;
        case GGML_TYPE_D2_P8I8:  d2_set_rows_cuda< 8 + D2_I8, idx_t>(src0, src1, dst, stream); break;
        case GGML_TYPE_D2_P16I8: d2_set_rows_cuda<16 + D2_I8, idx_t>(src0, src1, dst, stream); break;
        case GGML_TYPE_D2_P32I8: d2_set_rows_cuda<32 + D2_I8, idx_t>(src0, src1, dst, stream); break;
        default: GGML_ABORT("fraqtl: set_rows into %s", ggml_type_name(dst->type));
    }
}

void ggml_fraqtl_cuda_set_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];
    GGML_ASSERT(ggml_fraqtl_cuda_set_rows_supported(dst));
    GGML_ASSERT(src0->nb[0] == sizeof(float));
    if (src1->type == GGML_TYPE_I64) {
        d2_set_rows_dispatch<int64_t>(src0, src1, dst, ctx.stream());
    } else {
        d2_set_rows_dispatch<int32_t>(src0, src1, dst, ctx.stream());
    }
}

// ---------------------------------------------------------------------------------------
// D2's rotations: a prompt's (MUL_MAT by a fraqtl_rot_* matrix, more than one token) and the
// inverse rotation of the attention output at any number of tokens (OUT_PROD of that matrix and
// the transposed output: the rotation is orthonormal, so its transpose undoes it). f32 tiles of
// 64 x 64 outputs, 16 of K at a time. Upstream sends an f32 matrix times more than 16 columns, and
// every OUT_PROD, to cuBLAS, which only D2 needed: loading it cost about 99 MiB of VRAM that no
// other arm pays (Mistral shape, receipts 2026-11-30). Decode's forward rotations keep upstream's
// matrix-vector kernel.
// dst[m, n, i2] = sum_k A[m, k, i2/r2] * B[n, k, i2], A and B at any element strides (s_m/s_n, s_k)

#define D2_MM_TILE 64
#define D2_MM_KS   16

struct d2_mm_operand {
    const float * p;
    int64_t s_mn; // elements between neighbouring rows (m or n)
    int64_t s_k;  // and between neighbouring k
    int64_t s2;   // and between matrices
};

// a 16 x 64 slice (k, row) of an operand into shared memory; neighbouring threads read
// neighbouring addresses, along k or along the rows, whichever is contiguous
static __device__ __forceinline__ void d2_mm_load(float (*dst)[D2_MM_TILE + 1], const d2_mm_operand & o, const float * base,
        const int k0, const int K, const int r0, const int R) {
    const bool along_k = o.s_k == 1;
    for (int e = threadIdx.x; e < D2_MM_KS*D2_MM_TILE; e += blockDim.x) {
        const int kk = along_k ? e % D2_MM_KS : e / D2_MM_TILE;
        const int r  = along_k ? e / D2_MM_KS : e % D2_MM_TILE;
        dst[kk][r] = k0 + kk < K && r0 + r < R ? base[(int64_t) (r0 + r)*o.s_mn + (int64_t) (k0 + kk)*o.s_k] : 0.0f;
    }
}

static __global__ void d2_rotate_many(const d2_mm_operand a, const d2_mm_operand b, float * __restrict__ d,
        const int K, const int M, const int N, const int64_t d_s1, const int64_t d_s2, const int r2) {
    __shared__ float as[D2_MM_KS][D2_MM_TILE + 1];
    __shared__ float bs[D2_MM_KS][D2_MM_TILE + 1];
    const float * A = a.p + (int64_t) (blockIdx.z / r2)*a.s2;
    const float * B = b.p + (int64_t) blockIdx.z*b.s2;
    float       * D = d + (int64_t) blockIdx.z*d_s2;
    const int m0 = blockIdx.x*D2_MM_TILE;
    const int n0 = blockIdx.y*D2_MM_TILE;
    const int tx = threadIdx.x % 16; // outputs m0 + tx + 16*i, n0 + ty + 16*j
    const int ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += D2_MM_KS) {
        d2_mm_load(as, a, A, k0, K, m0, M);
        d2_mm_load(bs, b, B, k0, K, n0, N);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < D2_MM_KS; ++kk) {
            float av[4];
            float bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                av[i] = as[kk][tx + 16*i];
                bv[i] = bs[kk][ty + 16*i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + tx + 16*i;
            const int n = n0 + ty + 16*j;
            if (m < M && n < N) {
                D[(int64_t) n*d_s1 + m] = acc[i][j];
            }
        }
    }
}

// A few tokens (a decoded one's inverse rotation), A's rows contiguous along m: a 64 x 64 tile
// would leave 63 of its 64 columns idle (27 us a launch on the H200, 0.85 ms of a 128K token).
// Instead a block per (matrix, token): thread m of each k-slice reads A[m, k] over its slice's k
// (a warp reads 128 contiguous bytes), and the slices' sums meet in shared memory.
#define D2_FEW_THREADS 512
#define D2_FEW_MAX_N   4

static __global__ void __launch_bounds__(D2_FEW_THREADS) d2_rotate_few(const d2_mm_operand a, const d2_mm_operand b,
        float * __restrict__ d, const int K, const int M, const int64_t d_s1, const int64_t d_s2, const int r2) {
    extern __shared__ float d2_few_smem[]; // B's row (K), then each slice's sums (D2_FEW_THREADS)
    float * bk   = d2_few_smem;
    float * part = d2_few_smem + K;
    const int z = blockIdx.x;
    const int n = blockIdx.y;
    const float * A = a.p + (int64_t) (z / r2)*a.s2;
    const float * B = b.p + (int64_t) z*b.s2 + (int64_t) n*b.s_mn;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        bk[k] = B[(int64_t) k*b.s_k];
    }
    __syncthreads();
    const int slices = blockDim.x / M;
    const int m = threadIdx.x % M;
    const int s = threadIdx.x / M;
    if (s < slices) {
        float acc = 0.0f;
#pragma unroll 8
        for (int k = s; k < K; k += slices) {
            acc = fmaf(A[m + (int64_t) k*a.s_k], bk[k], acc);
        }
        part[s*M + m] = acc;
    }
    __syncthreads();
    if (threadIdx.x < M) {
        float sum = 0.0f;
        for (int i = 0; i < slices; ++i) {
            sum += part[i*M + threadIdx.x];
        }
        d[(int64_t) z*d_s2 + (int64_t) n*d_s1 + threadIdx.x] = sum;
    }
}

// dst[m, n, z] for z < nz (see d2_rotate_many); the kernel check calls this too
static void d2_rotate(const d2_mm_operand & a, const d2_mm_operand & b, float * d, const int K, const int M, const int N,
        const int64_t d_s1, const int64_t d_s2, const int nz, const int r2, cudaStream_t stream) {
    if (a.s_mn == 1 && N <= D2_FEW_MAX_N && M <= D2_FEW_THREADS) {
        const size_t smem = (K + D2_FEW_THREADS)*sizeof(float);
        d2_rotate_few<<<dim3(nz, N), D2_FEW_THREADS, smem, stream>>>(a, b, d, K, M, d_s1, d_s2, r2);
    } else {
        const dim3 grid((M + D2_MM_TILE - 1)/D2_MM_TILE, (N + D2_MM_TILE - 1)/D2_MM_TILE, nz);
        d2_rotate_many<<<grid, 256, 0, stream>>>(a, b, d, K, M, N, d_s1, d_s2, r2);
    }
}

static bool d2_is_rotation(const ggml_tensor * t) {
    return strncmp(t->name, "fraqtl_rot_", 11) == 0;
}

static void d2_rotate_launch(ggml_backend_cuda_context & ctx, const d2_mm_operand & a, const d2_mm_operand & b, ggml_tensor * dst,
        const int K, const int M, const int N, const int r2) {
    d2_rotate(a, b, (float *) dst->data, K, M, N, dst->nb[1]/sizeof(float), dst->nb[2]/sizeof(float), (int) dst->ne[2], r2,
        ctx.stream());
    CUDA_CHECK(cudaGetLastError());
}

static bool d2_rotation_f32(const ggml_tensor * src0, const ggml_tensor * src1, const ggml_tensor * dst) {
    return d2_is_rotation(src0) && src0->type == GGML_TYPE_F32 && src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32 &&
        src0->ne[3] == 1 && src1->ne[3] == 1 && src1->ne[2] % src0->ne[2] == 0 && dst->nb[0] == sizeof(float);
}

bool ggml_fraqtl_cuda_mul_mat_applies(const ggml_tensor * src0, const ggml_tensor * src1, const ggml_tensor * dst) {
    return d2_rotation_f32(src0, src1, dst) && src1->ne[1] > 1 && src0->nb[0] == sizeof(float) && src1->nb[0] == sizeof(float);
}

void ggml_fraqtl_cuda_mul_mat(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    GGML_ASSERT(ggml_fraqtl_cuda_mul_mat_applies(src0, src1, dst));
    // dst[m, n] = sum_k src0[k, m] * src1[k, n]
    const d2_mm_operand a = { (const float *) src0->data, (int64_t) (src0->nb[1]/sizeof(float)), 1, (int64_t) (src0->nb[2]/sizeof(float)) };
    const d2_mm_operand b = { (const float *) src1->data, (int64_t) (src1->nb[1]/sizeof(float)), 1, (int64_t) (src1->nb[2]/sizeof(float)) };
    d2_rotate_launch(ctx, a, b, dst, (int) src0->ne[0], (int) src0->ne[1], (int) src1->ne[1], (int) (src1->ne[2]/src0->ne[2]));
}

bool ggml_fraqtl_cuda_out_prod_applies(const ggml_tensor * dst) {
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];
    return dst->op == GGML_OP_OUT_PROD && d2_rotation_f32(src0, src1, dst) && src0->nb[0] == sizeof(float);
}

void ggml_fraqtl_cuda_out_prod(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    GGML_ASSERT(ggml_fraqtl_cuda_out_prod_applies(dst));
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];
    // dst[m, n] = sum_k src0[m, k] * src1[n, k] (src1: the transposed output, any strides)
    const d2_mm_operand a = { (const float *) src0->data, 1, (int64_t) (src0->nb[1]/sizeof(float)), (int64_t) (src0->nb[2]/sizeof(float)) };
    const d2_mm_operand b = { (const float *) src1->data, (int64_t) (src1->nb[0]/sizeof(float)), (int64_t) (src1->nb[1]/sizeof(float)),
                              (int64_t) (src1->nb[2]/sizeof(float)) };
    d2_rotate_launch(ctx, a, b, dst, (int) src0->ne[1], (int) src0->ne[0], (int) src1->ne[0], (int) (src1->ne[2]/src0->ne[2]));
}

// ---------------------------------------------------------------------------------------
// flash attention, one query token. Grid: chunks of rows. A block walks its chunk in tiles of
// positions for ALL KV heads, so a tile is one contiguous range of the cache: it is copied in with
// 16-byte cp.async (double buffered) while the previous tile is used. Each warp owns one KV head
// and one 16-row slice of every tile: it decodes the slice's K to f16 in its own shared tile,
// scores it against its G query heads with tensor cores (mma m16n8k16 as K·Qᵀ, the queries as the
// columns), softmaxes online in registers, decodes V into the same tile and adds Vᵀ·Pᵀ likewise.
// The warps' and chunks' partial results are merged by log-sum-exp.
//
// The exact sink and window rows are a second launch of the same kernel over the f16 copies (an
// f16 cache of n_exact rows, each masked as the cell it stands for), merged with the rest: the
// compressed launch masks those rows instead of reading their copies. Read in place, they were
// global loads outside the staged pipeline, and the blocks over the window ran twice as long as
// the others while the rest of the GPU waited for them.
//
// A block's 3-bit tail is decoded eight codes at a time to four half2 (the code as the low
// mantissa bits of 1024), which orders the dims of each group of eight 0,4,1,5,2,6,3,7: Q is
// loaded, and the output stored, in that slot order (d2_slot_dim).

#define D2_FA_WARPS_MAX 16

// warps a block may have: head size 256 keeps twice the accumulators, so half the warps
static constexpr __host__ __device__ int d2_fa_warps_max(int hd) {
    return hd == 256 ? D2_FA_WARPS_MAX/2 : D2_FA_WARPS_MAX;
}
#ifndef D2_FA_STAGES
#define D2_FA_STAGES    2 // tiles in shared memory: one used, one on its way
#endif
#define D2_FA_GMAX      8

struct d2_fattn_args {
    const float   * q;
    const uint8_t * k;
    const uint8_t * v;
    const half    * mask;
    const int32_t * rows;    // the row map: rows[i] >= n_kv masks cell i (its exact copy is read apart)
    const int32_t * cell_of; // the exact launch: the cell each row stands for (its mask), or -1
    float  * dst;
    float  * part_o;
    float2 * part_ml;
    int      n_kv;
    int      n_head_kv;
    int      gqa;
    int      wph;        // warps per KV head: a tile is 16*wph positions
    int      chunk_rows;
    int      n_parts;    // partial results per query head, both launches
    int      part0;      // this launch's first
    float    scale;
    int64_t  q_s2;       // floats between query heads
    int      sm_stage;   // shared memory: bytes of one stage, its V, row-map and mask offsets,
    int      sm_v;       // the warps' f16 tiles after the stages
    int      sm_rows;
    int      sm_mask;
    int      sm_tiles;
    int      sm_warp;    // bytes of each warp's own area there: its f16 tile, then its Q fragments
    int      k_pos;      // staged bytes per position (whole positions at a padded stride), or 0:
    int      v_pos;      //   the tile's bytes copied as one range (d2_staging_stride)
};

// the launches of one query token (exact.n_kv == 0: no exact copies)
struct d2_fattn_plan {
    d2_fattn_args main;
    d2_fattn_args exact;
};

// bytes of one head's row
static constexpr __host__ __device__ int d2_seg_bytes(int hd, int p) {
    return p == 0 ? 2*hd : (hd/64)*d2_block_bytes(p);
}

static int d2_pad16(const int64_t x) {
    return (int) ((x + 15)/16*16);
}

// how a block is laid out for a model's number of KV heads
struct d2_fattn_geom {
    int wph;      // warps per KV head
    int warps;
    int tile;     // positions per tile
    int sm_stage;
    int sm_v;
    int sm_rows;
    int sm_mask;
    int sm_tiles;
    int sm_warp;
    int smem;     // bytes of shared memory
};

// warps per KV head: up to 8 warps a block, fewer while the block would not leave room for a
// second one on an SM of smpbo bytes of shared memory
static d2_fattn_geom d2_fattn_geom_of(const int hd, const int pk, const int pv, const int n_head_kv, const size_t smpbo) {
    d2_fattn_geom g = {};
    for (int wph = std::max(1, 8/std::max(1, n_head_kv)); wph >= 1; wph /= 2) {
        g.wph   = wph;
        g.warps = n_head_kv*wph;
        g.tile  = 16*wph;
        // each staged range starts up to 15 bytes early (16-byte copies) and is read a word past its
        // end; or its positions are 16 bytes apart more (d2_staging_stride)
        const int kb = d2_pad16((int64_t) g.tile*(n_head_kv*d2_seg_bytes(hd, pk) + 16) + 32);
        const int vb = d2_pad16((int64_t) g.tile*(n_head_kv*d2_seg_bytes(hd, pv) + 16) + 32);
        g.sm_v     = kb;
        g.sm_rows  = kb + vb;
        g.sm_mask  = g.sm_rows + d2_pad16(4*g.tile);
        g.sm_stage = g.sm_mask + d2_pad16(2*g.tile);
        g.sm_tiles = D2_FA_STAGES*g.sm_stage;
        g.sm_warp  = 16*(hd + 8)*(int) sizeof(half) + (hd/16)*2*WARP_SIZE*(int) sizeof(uint32_t);
        g.smem     = g.sm_tiles + g.warps*g.sm_warp;
        if ((size_t) g.smem <= smpbo/2) {
            break;
        }
    }
    return g;
}

// Shared memory serves a warp's 32-bit loads in one pass only where its lanes hit distinct banks.
// Lanes read 16 staged positions at once, so a position stride of an even number of 16-byte
// units puts pairs of rows (or, at 0 mod 128 bytes, all of them) in the same banks: 832 bytes
// (Mistral's V, 8 heads of 104) gives 8-way conflicts. Where a position's bytes are whole 16-byte
// units (and the cache 16-byte aligned) they are staged one position at a time at an odd number
// of units apart: at most 2-way. Elsewhere (SmolLM2's 117-byte positions) the tile is one range.
#ifndef D2_FA_PAD
#define D2_FA_PAD 1 // 0: always one range (to time the difference)
#endif
static int d2_staging_stride(const void * base, const int64_t row_bytes) {
    if (!D2_FA_PAD || row_bytes % 16 != 0 || (uintptr_t) base % 16 != 0) {
        return 0;
    }
    return (int) (row_bytes + ((row_bytes/16) % 2 == 0 ? 16 : 0));
}

// the head dim held in slot s of a row of blocks of kind K
template <int K>
static __host__ __device__ __forceinline__ int d2_slot_dim(const int s) {
    constexpr int P = d2_np(K);
    const int e = s % 64;
    if (P == 0 || e < P) {
        return s;
    }
    const int i = (e - P) % 8;
    return s - i + ((i & 1) ? 4 + i/2 : i/2);
}

static __device__ __forceinline__ void d2_cp16(void * smem, const void * gmem) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"((unsigned) __cvta_generic_to_shared(smem)), "l"(gmem));
#else
    *(uint4 *) smem = *(const uint4 *) gmem;
#endif
}

static __device__ __forceinline__ void d2_cp4(void * smem, const void * gmem) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"((unsigned) __cvta_generic_to_shared(smem)), "l"(gmem));
#else
    *(uint32_t *) smem = *(const uint32_t *) gmem;
#endif
}

static __device__ __forceinline__ void d2_cp_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;");
#endif
}

template <int N>
static __device__ __forceinline__ void d2_cp_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" :: "n"(N));
#endif
}

static __device__ __forceinline__ uint32_t d2_h2_u32(const half2 h) {
    uint32_t u;
    memcpy(&u, &h, sizeof(u));
    return u;
}

static __device__ __forceinline__ half2 d2_u32_h2(const uint32_t u) {
    half2 h;
    memcpy(&h, &u, sizeof(h));
    return h;
}

// D += A·B, m16n8k16, f16 in, f32 accumulate
static __device__ __forceinline__ void d2_mma(float d[4], const uint32_t a0, const uint32_t a1, const uint32_t a2, const uint32_t a3,
        const uint32_t b0, const uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    GGML_UNUSED(d); GGML_UNUSED(a0); GGML_UNUSED(a1); GGML_UNUSED(a2); GGML_UNUSED(a3); GGML_UNUSED(b0); GGML_UNUSED(b1);
    NO_DEVICE_CODE;
#endif
}

// an 8x8 f16 matrix held as an mma fragment (thread 4r + c: row r, columns 2c and 2c + 1), transposed
static __device__ __forceinline__ uint32_t d2_transpose8(const uint32_t x) {
#if __CUDA_ARCH__ >= 800
    uint32_t y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
#else
    GGML_UNUSED(x);
    NO_DEVICE_CODE;
    return 0;
#endif
}

static __device__ __forceinline__ void d2_ldmatrix_x4(uint32_t r[4], const half * p, const bool trans) {
#if __CUDA_ARCH__ >= 800
    const unsigned a = (unsigned) __cvta_generic_to_shared(p);
    if (trans) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
            : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
            : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    }
#else
    GGML_UNUSED(r); GGML_UNUSED(p); GGML_UNUSED(trans);
    NO_DEVICE_CODE;
#endif
}

// four half2 of eight 3-bit codes (w: the codes from bit 0, anything above bit 23) as
// (c0,c4) (c1,c5) (c2,c6) (c3,c7), times the block scale
static __device__ __forceinline__ uint4 d2_codes_to_f16(const uint32_t w, const half2 s) {
    // the code as mantissa bits of 1024: pattern A puts it at bit 4 of the low half and bit 0 of
    // the high one, pattern B at bits 7 and 3; the fma undoes the shift and the +4 bias exactly
    const half2 mul_a = __halves2half2(__float2half(1.0f/16.0f),  __float2half(1.0f));
    const half2 add_a = __halves2half2(__float2half(-68.0f),      __float2half(-1028.0f));
    const half2 mul_b = __halves2half2(__float2half(1.0f/128.0f), __float2half(1.0f/8.0f));
    const half2 add_b = __halves2half2(__float2half(-12.0f),      __float2half(-132.0f));
    const uint32_t x = w << 4;
    const uint32_t y = w >> 2;
    uint4 r;
    r.x = d2_h2_u32(__hmul2(__hfma2(d2_u32_h2((x & 0x00070070u) | 0x64006400u), mul_a, add_a), s));
    r.y = d2_h2_u32(__hmul2(__hfma2(d2_u32_h2((x & 0x00380380u) | 0x64006400u), mul_b, add_b), s));
    r.z = d2_h2_u32(__hmul2(__hfma2(d2_u32_h2((y & 0x00070070u) | 0x64006400u), mul_a, add_a), s));
    r.w = d2_h2_u32(__hmul2(__hfma2(d2_u32_h2((y & 0x00380380u) | 0x64006400u), mul_b, add_b), s));
    return r;
}

// four int8 codes (one word) times dp, as two half2: the code plus 128 as the low mantissa byte
// of 1024 (exact), less 1152, times dp (one rounding, as the CPU's q*dp rounded to f16)
static __device__ __forceinline__ uint2 d2_i8x4_to_f16(const uint32_t w, const half2 dp) {
    const uint32_t x   = w ^ 0x80808080u;
    const half2    off = __half2half2(__float2half(1152.0f));
    uint2 r;
    r.x = d2_h2_u32(__hmul2(__hsub2(d2_u32_h2(__byte_perm(x, 0x64646464u, 0x4140)), off), dp));
    r.y = d2_h2_u32(__hmul2(__hsub2(d2_u32_h2(__byte_perm(x, 0x64646464u, 0x4342)), off), dp));
    return r;
}

// one 64-element block of kind K, staged at any byte offset of shared memory, to 64 f16 in slot order
template <int K>
static __device__ __forceinline__ void d2_block_to_f16(const uint8_t * smem, const int off, uint4 * dst) {
    constexpr int P = d2_np(K);
    const uint32_t * w  = (const uint32_t *) (smem + (off & ~3)); // an offset, not a generic address: 32-bit math
    const unsigned   sh = 8*(unsigned) (off & 3);
    if constexpr (K == 0) {
        // an f16 row: 16 halves at a time, realigned to the block's first byte
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint32_t u[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                u[j] = __funnelshift_r(w[8*i + j], w[8*i + j + 1], sh);
            }
            dst[2*i + 0] = make_uint4(u[0], u[1], u[2], u[3]);
            dst[2*i + 1] = make_uint4(u[4], u[5], u[6], u[7]);
        }
    } else {
        constexpr int NW = (d2_block_bytes(K) + 3)/4;
        uint32_t u[NW];
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            u[i] = __funnelshift_r(w[i], w[i + 1], sh); // the block's bytes from u[0]'s low byte on
        }
        if constexpr (d2_is_i8(K)) {
            // protected codes: words 1.. (byte 4 on), under the scale at bytes 2-3
            const half2 dp = __half2half2(__ushort_as_half((unsigned short) (u[0] >> 16)));
#pragma unroll
            for (int i = 0; i < P/8; ++i) {
                const uint2 lo = d2_i8x4_to_f16(u[1 + 2*i], dp);
                const uint2 hi = d2_i8x4_to_f16(u[2 + 2*i], dp);
                dst[i] = make_uint4(lo.x, lo.y, hi.x, hi.y);
            }
        } else {
            // protected coefficients: pair k at bytes 2 + 4k
#pragma unroll
            for (int i = 0; i < P/8; ++i) {
                dst[i] = make_uint4(__byte_perm(u[4*i + 0], u[4*i + 1], 0x5432), __byte_perm(u[4*i + 1], u[4*i + 2], 0x5432),
                                    __byte_perm(u[4*i + 2], u[4*i + 3], 0x5432), __byte_perm(u[4*i + 3], u[4*i + 4], 0x5432));
            }
        }
        const half2 s = __half2half2(__ushort_as_half((unsigned short) (u[0] & 0xFFFF)));
#pragma unroll
        for (int i = 0; i < (QK_D2 - P)/8; ++i) {
            const int o = d2_tail_at(K) + 3*i; // the group's first byte
            const uint32_t w24 = o % 4 <= 1 ? u[o/4] >> (8*(o % 4)) : __funnelshift_r(u[o/4], u[o/4 + 1], 8*(o % 4));
            dst[P/8 + i] = d2_codes_to_f16(w24, s);
        }
    }
}

// a warp's 16 rows of one KV head to its f16 tile: each lane one 64-element block at a time (src: the
// lane's first block, as a shared-memory offset); the rows not in ok (past the chunk, exact rows) as zeros
// when zero is set. Lane l takes row l % 16 in every pass, so its offsets are the caller's constants.
template <int HD, int K, bool zero>
static __device__ __forceinline__ void d2_slice_to_f16(const uint8_t * smem, const int src, const unsigned ok, uint4 * dst, const int lane) {
    constexpr int BB = K == 0 ? 128 : d2_block_bytes(K);
    constexpr int NB = 16*(HD/64); // blocks of the slice
#pragma unroll
    for (int it = 0; it < (NB + WARP_SIZE - 1)/WARP_SIZE; ++it) {
        if (NB % WARP_SIZE != 0 && lane + WARP_SIZE*it >= NB) {
            break;
        }
        uint4 * d = dst + 16*it; // block lane/16 + 2*it of the row: 64 halves (8 uint4) each
        if (!zero || (ok >> (lane % 16)) & 1) {
            d2_block_to_f16<K>(smem, src + 2*it*BB, d);
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                d[j] = make_uint4(0, 0, 0, 0);
            }
        }
    }
}

// registers a thread: what ptxas chose under __launch_bounds__(512) for head sizes 64 (2 blocks an SM)
// and 128; head size 256 (256 threads) fits in 128 only with a spill, which ptxas then picks by itself.
// __maxnreg__ is CUDA 12.4's; older toolkits keep the launch bound (and may spill at head size 256)
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define D2_FA_REGS(HD) __maxnreg__(HD == 64 ? 64 : HD == 128 ? 128 : 168)
#else
#define D2_FA_REGS(HD) __launch_bounds__(d2_fa_warps_max(HD)*WARP_SIZE)
#endif

template <int HD, int PK, int PV>
D2_FA_REGS(HD)
static __global__ void d2_fattn_decode(const d2_fattn_args a) {
    constexpr int KSEG = d2_seg_bytes(HD, PK);
    constexpr int VSEG = d2_seg_bytes(HD, PV);
    constexpr int TS   = HD + 8; // f16 tile row stride: ldmatrix rows fall in distinct banks
    constexpr int NKS  = HD/16;

    extern __shared__ __align__(16) uint8_t smem[];
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int h    = warp / a.wph;         // this warp's KV head
    const int j    = warp % a.wph;         // and its 16-row slice of every tile
    const int tile = 16*a.wph;
    const int G    = a.gqa;
    const int gq   = lane / 4;             // the query head of this thread's Q fragment
    const int tq   = lane % 4;
    const int rk = a.n_head_kv*KSEG; // bytes of one position (a tile is some 10-50 KB: int offsets)
    const int rv = a.n_head_kv*VSEG;
    half     * ftile = (half *) (smem + a.sm_tiles + warp*a.sm_warp);
    uint32_t * qfrag = (uint32_t *) (ftile + 16*TS); // [NKS][2][lane]: registers would spill

    const int r0 = blockIdx.x*a.chunk_rows;
    const int r1 = min(r0 + a.chunk_rows, a.n_kv);

    // A tile's K or V is copied 16 bytes a thread, chunk i of the range from the 16 bytes that hold its
    // first to 16*i of the stage; at a padded stride (d2_staging_stride: pos = bytes + 16) chunk i of
    // position i/cpr lands 16*(i/cpr) bytes further on. i/cpr as a multiply-high: i*cpr < 2^32 here.
    const unsigned k_magic = a.k_pos > rk ? 0xFFFFFFFFu/(unsigned) (rk/16) + 1 : 0; // 0: no padding
    const unsigned v_magic = a.v_pos > rv ? 0xFFFFFFFFu/(unsigned) (rv/16) + 1 : 0;
    auto stage_rows = [&](const int dst, const uint8_t * src, const int n, const int bytes, const unsigned magic) {
        const uint8_t * al = (const uint8_t *) ((uintptr_t) src & ~(uintptr_t) 15);
        const int nc = ((int) (src - al) + n*bytes + 15)/16; // padded: src is 16-byte aligned
        for (int i = threadIdx.x; i < nc; i += blockDim.x) {
            d2_cp16(smem + dst + 16*(i + (int) __umulhi((unsigned) i, magic)), al + 16*i);
        }
    };

    // the tile at t0 (K, V, row map, mask) into stage b
    auto stage = [&](const int t0, const int b) {
        const int s = b*a.sm_stage;
        const int n = min(tile, r1 - t0);
        stage_rows(s,          a.k + (int64_t) t0*rk, n, rk, k_magic);
        stage_rows(s + a.sm_v, a.v + (int64_t) t0*rv, n, rv, v_magic);
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            if (a.rows) {
                d2_cp4(smem + s + a.sm_rows + 4*i, a.rows + t0 + i);
            }
            if (a.cell_of) {
                const int c = a.cell_of[t0 + i]; // a few rows: plain loads
                ((half *) (smem + s + a.sm_mask))[i] = c >= 0 ? a.mask[c] : __float2half(-INFINITY);
            } else if (i % 2 == 0) {
                d2_cp4(smem + s + a.sm_mask + 2*i, a.mask + t0 + i); // t0 is a multiple of 16: word aligned
            }
        }
    };

    // Q of this warp's query heads, scaled, in f16 and slot order: the B fragments of the scores
#pragma unroll
    for (int k = 0; k < NKS; ++k) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int slot = 16*k + 8*i + 2*tq;
            float2 x = make_float2(0.0f, 0.0f);
            if (gq < G) {
                const float * q = a.q + (int64_t) (h*G + gq)*a.q_s2;
                x = make_float2(q[d2_slot_dim<PK>(slot)]*a.scale, q[d2_slot_dim<PK>(slot + 1)]*a.scale);
            }
            qfrag[(2*k + i)*WARP_SIZE + lane] = d2_h2_u32(__float22half2_rn(x));
        }
    }

    // Scores are K·Qᵀ and the output Vᵀ·Pᵀ (a tile's 16 rows and 16 dims as the m16 of the MMA, the query
    // heads as its n8): no MMA row is zero padding. Thread (gq, tq) holds query heads 2*tq and 2*tq + 1: their
    // running max and sum (sum: this thread's rows), and o[k] = dims 16k + gq (0, 1) and 16k + 8 + gq (2, 3).
    // The max starts finite: an all-masked tile then needs no special case (-inf - m is -inf, exp 0).
    const float m_floor = -1e30f; // below any score: |q·k| < 128*65504^2
    float m[2] = { m_floor, m_floor };
    float l[2] = { 0.0f, 0.0f };
    float o[NKS][4];
#pragma unroll
    for (int i = 0; i < NKS; ++i) {
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    }

    // this lane's block of the warp's slice: row lane % 16, block lane/16, in the stage and in the f16 tile
    constexpr int KBB = PK == 0 ? 128 : d2_block_bytes(PK);
    constexpr int VBB = PV == 0 ? 128 : d2_block_bytes(PV);
    const int k_slice = 16*j*(a.k_pos ? a.k_pos : rk) + h*KSEG + (lane % 16)*(a.k_pos ? a.k_pos : rk) + (lane/16)*KBB;
    const int v_slice = 16*j*(a.v_pos ? a.v_pos : rv) + h*VSEG + (lane % 16)*(a.v_pos ? a.v_pos : rv) + (lane/16)*VBB;
    uint4   * lane_tile = (uint4 *) (ftile + (lane % 16)*TS + 64*(lane/16));
    // ldmatrix rows of this lane: 8x8 matrices (rows 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
    const half * frag_at = ftile + ((lane/8) % 2*8 + lane % 8)*TS + (lane/16)*8;

    // tiles are copied D2_FA_STAGES - 1 ahead; every iteration commits one group (maybe empty)
#pragma unroll
    for (int i = 0; i < D2_FA_STAGES - 1; ++i) {
        if (r0 + i*tile < r1) {
            stage(r0 + i*tile, i);
        }
        d2_cp_commit();
    }
    for (int t0 = r0, it = 0; t0 < r1; t0 += tile, ++it) {
        const int b  = it % D2_FA_STAGES;
        const int tn = t0 + (D2_FA_STAGES - 1)*tile;
        if (tn < r1) {
            stage(tn, (it + D2_FA_STAGES - 1) % D2_FA_STAGES); // released by the last iteration's closing barrier
        }
        d2_cp_commit();
        d2_cp_wait<D2_FA_STAGES - 1>();
        __syncthreads();

        const int p0 = t0 + 16*j;
        if (p0 < r1) {
            // the slice's first block in the stage: a one-range tile starts where its first byte sat in
            // its 16 (t0*rk mod 16 in 32 bits), a padded one at 0
            const int       s    = b*a.sm_stage;
            const int       sk   = s          + (a.k_pos ? 0 : ((unsigned) (uintptr_t) a.k + (unsigned) t0*rk) & 15) + k_slice;
            const int       sv   = s + a.sm_v + (a.v_pos ? 0 : ((unsigned) (uintptr_t) a.v + (unsigned) t0*rv) & 15) + v_slice;
            const int32_t * rmap = (const int32_t *) (smem + s + a.sm_rows) + 16*j;
            const half    * mrow = (const half *) (smem + s + a.sm_mask) + 16*j;
            // the slice's rows that are read here: in the chunk, and not an exact row (the exact launch's)
            const unsigned ok = __ballot_sync(0xFFFFFFFF, lane < 16 && p0 + lane < r1 && (!a.rows || rmap[lane] < a.n_kv)) & 0xFFFF;

            d2_slice_to_f16<HD, PK, false>(smem, sk, ok, lane_tile, lane); // a row not in ok is never scored
            __syncwarp();

            // scores of rows gq (sc[.][0..1]) and gq + 8 (sc[.][2..3]) for query heads 2*tq, 2*tq + 1; even
            // and odd k-steps in two accumulators, two MMA chains of half the length (head size 256: one,
            // its registers are short)
            constexpr int NSC = HD <= 128 ? 2 : 1;
            float sc[2][4] = { { 0.0f, 0.0f, 0.0f, 0.0f }, { 0.0f, 0.0f, 0.0f, 0.0f } };
#pragma unroll
            for (int k = 0; k < NKS; ++k) {
                uint32_t kf[4];
                d2_ldmatrix_x4(kf, frag_at + 16*k, false);
                d2_mma(sc[k % NSC], kf[0], kf[1], kf[2], kf[3], qfrag[(2*k + 0)*WARP_SIZE + lane], qfrag[(2*k + 1)*WARP_SIZE + lane]);
            }
            // a select, not a sum: K of a row not in ok is any bits
            const bool  ok0 = (ok >> gq) & 1;
            const bool  ok1 = (ok >> (gq + 8)) & 1;
            const float mk0 = __half2float(mrow[gq]);
            const float mk1 = __half2float(mrow[gq + 8]);
            float sr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sr[i] = (i < 2 ? ok0 : ok1) ? sc[0][i] + sc[1][i] + (i < 2 ? mk0 : mk1) : -INFINITY;
            }
            float mx[2] = { fmaxf(sr[0], sr[2]), fmaxf(sr[1], sr[3]) };
#pragma unroll
            for (int off = 4; off < WARP_SIZE; off *= 2) { // over the 8 lanes of this thread's query heads
                mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xFFFFFFFF, mx[0], off));
                mx[1] = fmaxf(mx[1], __shfl_xor_sync(0xFFFFFFFF, mx[1], off));
            }
            mx[0] = fmaxf(m[0], mx[0]);
            mx[1] = fmaxf(m[1], mx[1]);
            if (__any_sync(0xFFFFFFFF, mx[0] > m[0] || mx[1] > m[1])) { // after the first tiles the max rarely moves
                const float alpha0 = __expf(m[0] - mx[0]);
                const float alpha1 = __expf(m[1] - mx[1]);
                l[0] *= alpha0;
                l[1] *= alpha1;
#pragma unroll
                for (int k = 0; k < NKS; ++k) {
                    o[k][0] *= alpha0;
                    o[k][1] *= alpha1;
                    o[k][2] *= alpha0;
                    o[k][3] *= alpha1;
                }
                m[0] = mx[0];
                m[1] = mx[1];
            }
            float p[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                p[i] = __expf(sr[i] - m[i % 2]);
            }
            l[0] += p[0] + p[2];
            l[1] += p[1] + p[3];
            // Pᵀ as the B fragments of Vᵀ·Pᵀ (rows 2*tq, 2*tq + 1 and 8 more, of query head gq): the
            // scores' fragments of rows 0-7 and 8-15, each an 8x8 matrix, transposed
            const uint32_t pb0 = d2_transpose8(d2_h2_u32(__floats2half2_rn(p[0], p[1])));
            const uint32_t pb1 = d2_transpose8(d2_h2_u32(__floats2half2_rn(p[2], p[3])));

            __syncwarp(); // K is read: the tile takes V
            d2_slice_to_f16<HD, PV, true>(smem, sv, ok, lane_tile, lane); // zeros: 0*V must not be a NaN
            __syncwarp();
#pragma unroll
            for (int k = 0; k < NKS; ++k) {
                uint32_t vf[4]; // transposed: Vᵀ of dims 0-7 and rows 0-7, rows 8-15; dims 8-15 and rows 0-7, 8-15
                d2_ldmatrix_x4(vf, frag_at + 16*k, true);
                d2_mma(o[k], vf[0], vf[2], vf[1], vf[3], pb0, pb1);
            }
            __syncwarp(); // V is read: the tile takes the next K
        }
        __syncthreads(); // stage b is consumed: the next iteration refills it
    }

#pragma unroll
    for (int off = 4; off < WARP_SIZE; off *= 2) {
        l[0] += __shfl_xor_sync(0xFFFFFFFF, l[0], off);
        l[1] += __shfl_xor_sync(0xFFFFFFFF, l[1], off);
    }
    const int64_t pi = a.part0 + (int64_t) blockIdx.x*a.wph + j;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int g = 2*tq + i;
        if (g >= G) {
            break;
        }
        const int64_t qh = (int64_t) h*G + g;
        if (a.n_parts == 1) {
            const float inv = l[i] > 0.0f ? 1.0f/l[i] : 0.0f;
#pragma unroll
            for (int k = 0; k < NKS; ++k) {
                a.dst[qh*HD + d2_slot_dim<PV>(16*k + gq)]     = o[k][i]*inv;
                a.dst[qh*HD + d2_slot_dim<PV>(16*k + 8 + gq)] = o[k][2 + i]*inv;
            }
        } else {
            float * po = a.part_o + (qh*a.n_parts + pi)*HD;
#pragma unroll
            for (int k = 0; k < NKS; ++k) {
                po[d2_slot_dim<PV>(16*k + gq)]     = o[k][i];
                po[d2_slot_dim<PV>(16*k + 8 + gq)] = o[k][2 + i];
            }
            if (gq == 0) {
                a.part_ml[qh*a.n_parts + pi] = make_float2(l[i] > 0.0f ? m[i] : -INFINITY, l[i]); // -inf: nothing seen
            }
        }
    }
}

// the partial results of one query head merged by log-sum-exp: each warp takes every
// D2_FA_COMBINE_WARPS-th part, each lane HD/32 dims of it; then the warps' sums are added. Some
// 300 parts at 128K: 16 warps and 8 loads in flight each keep it to two or three memory latencies.
#ifndef D2_FA_COMBINE_WARPS
#define D2_FA_COMBINE_WARPS 16
#endif

template <int HD>
__launch_bounds__(D2_FA_COMBINE_WARPS*WARP_SIZE)
static __global__ void d2_fattn_combine(const float * __restrict__ part_o, const float2 * __restrict__ part_ml,
        float * __restrict__ dst, const int n_parts) {
    constexpr int DPL = HD/WARP_SIZE; // dims per lane
    __shared__ float s_max[D2_FA_COMBINE_WARPS];
    __shared__ float s_den[D2_FA_COMBINE_WARPS];
    __shared__ float s_num[D2_FA_COMBINE_WARPS][HD];
    const int64_t qh   = blockIdx.x;
    const int     warp = threadIdx.x / WARP_SIZE;
    const int     lane = threadIdx.x % WARP_SIZE;
    const float2 * ml  = part_ml + qh*n_parts;

    float m = -INFINITY;
    for (int c = threadIdx.x; c < n_parts; c += blockDim.x) {
        m = fmaxf(m, ml[c].x);
    }
    m = warp_reduce_max(m);
    if (lane == 0) {
        s_max[warp] = m;
    }
    __syncthreads();
    m = s_max[0];
#pragma unroll
    for (int w = 1; w < D2_FA_COMBINE_WARPS; ++w) {
        m = fmaxf(m, s_max[w]);
    }

    float num[DPL] = {};
    float den = 0.0f;
#pragma unroll 8
    for (int c = warp; c < n_parts; c += D2_FA_COMBINE_WARPS) {
        const float2 p = ml[c];
        const float  w = p.x == -INFINITY ? 0.0f : expf(p.x - m);
        den += w*p.y;
        const float * o = part_o + (qh*n_parts + c)*HD + lane*DPL;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            num[i] += w*o[i];
        }
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
        s_num[warp][lane*DPL + i] = num[i];
    }
    if (lane == 0) {
        s_den[warp] = den;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float n = 0.0f;
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < D2_FA_COMBINE_WARPS; ++w) {
            n += s_num[w][d];
            t += s_den[w];
        }
        dst[qh*HD + d] = t > 0.0f ? n/t : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------
// many query tokens: a group of KV heads at a time to f16 (exact rows applied), then upstream's
// kernels. The group is as large as half the mask's bytes allow (d2_fattn_group), which keeps the
// scratch under what the graph's output phase needs anyway: 4 of Mistral's 8 heads from 32K to 128K.

// KV heads [h, h + nh) of rows [0, n_kv) to f16, head by head: dst[(h' - h)*n_kv + row][HD]
template <int HD, int P>
static __global__ void d2_head_to_f16(const uint8_t * __restrict__ src, const int32_t * __restrict__ rows,
        const half * __restrict__ exact, half * __restrict__ dst, const int n_kv, const int h0, const int nh,
        const int64_t s1, const int64_t s2, const int64_t e_s1) {
    constexpr int SPR = HD/8;
    const int64_t i = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i >= (int64_t) n_kv*SPR*nh) {
        return;
    }
    const int hh  = (int) (i / ((int64_t) n_kv*SPR));
    const int h   = h0 + hh;
    const int row = (int) (i / SPR % n_kv);
    const int sp  = (int) (i % SPR);
    const int map = rows ? rows[row] : row;
    float x[8];
    if (map >= n_kv) {
        d2_ld_f16x8(exact + (int64_t) (map - n_kv)*e_s1 + (int64_t) h*HD + 8*sp, x);
    } else {
        d2_ld_span<P>(src + row*s1 + h*s2, sp, x);
    }
    half2 out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        out[j] = __floats2half2_rn(x[2*j], x[2*j + 1]);
    }
    *(uint4 *) (dst + ((int64_t) hh*n_kv + row)*HD + 8*sp) = *(const uint4 *) out;
}

// out[d, h*G + g, t] = part[d, g, t]
static __global__ void d2_scatter_heads(const float * __restrict__ part, float * __restrict__ out,
        const int hd, const int G, const int n_head, const int h, const int64_t n) {
    const int64_t i = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const int64_t d = i % hd;
    const int64_t g = (i / hd) % G;
    const int64_t t = i / hd / G;
    out[(t*n_head + h*G + g)*hd + d] = part[i];
}

// ---------------------------------------------------------------------------------------
// dispatch

// the sources of a D2 flash-attention node: Q, K, V, mask, then the exact K/V copies and the row map
struct d2_fattn_srcs {
    const ggml_tensor * q;
    const ggml_tensor * k;
    const ggml_tensor * v;
    const ggml_tensor * mask;
    const ggml_tensor * ek;
    const ggml_tensor * ev;
    const ggml_tensor * rows;
};

static d2_fattn_srcs d2_fattn_srcs_of(const ggml_tensor * dst) {
    return { dst->src[0], dst->src[1], dst->src[2], dst->src[3], dst->src[5], dst->src[6], dst->src[7] };
}

struct d2_fattn_shape {
    int hd;
    int pk;
    int pv;
    int n_kv;
    int n_head;
    int n_head_kv;
    int n_tokens;
};

static d2_fattn_shape d2_fattn_shape_of(const ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    return { (int) K->ne[0], d2_cuda_kind(K->type), d2_cuda_kind(V->type), (int) K->ne[1],
             (int) Q->ne[2], (int) K->ne[2], (int) Q->ne[1] };
}

// one wave: as many blocks as fit on the device at once (shared memory and 128 registers per
// thread bound them), the rows split evenly among them
static void d2_fattn_chunking(const int nsm, const size_t smpbo, const d2_fattn_shape & s, int & chunk_rows, int & n_parts) {
    const d2_fattn_geom g = d2_fattn_geom_of(s.hd, s.pk, s.pv, s.n_head_kv, smpbo);
    const int threads = WARP_SIZE*g.warps;
    const int per_sm  = std::max(1, std::min({ 2048/threads, 65536/(128*threads), (int) ((smpbo + 1024)/(g.smem + 1024)) }));
    const int n_tiles = (s.n_kv + g.tile - 1)/g.tile;
    const int per     = std::max(1, (n_tiles + nsm*per_sm - 1)/(nsm*per_sm));
    chunk_rows = per*g.tile;
    n_parts    = (s.n_kv + chunk_rows - 1)/chunk_rows*g.wph;
}

bool ggml_fraqtl_cuda_fattn_applies(const ggml_tensor * dst) {
    const ggml_type tk = dst->src[1]->type;
    const ggml_type tv = dst->src[2]->type;
    return dst->op == GGML_OP_FLASH_ATTN_EXT &&
        (d2_cuda_type(tk) || d2_cuda_type(tv) || ggml_is_d2b2(tk) || ggml_is_d2b2(tv));
}

bool ggml_fraqtl_cuda_fattn_supported(int device, const ggml_tensor * dst) {
    const auto [Q, K, V, mask, ek, ev, rows] = d2_fattn_srcs_of(dst);
    float max_bias = 0.0f;
    float softcap  = 0.0f;
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&softcap,  (const float *) dst->op_params + 2, sizeof(float));
    const bool types = d2_cuda_kind(K->type) >= 0 && d2_cuda_kind(V->type) >= 0;
    const bool head  = (K->ne[0] == 64 || K->ne[0] == 128 || K->ne[0] == 256) && V->ne[0] == K->ne[0];
    if (!types || !head) {
        return false;
    }
    // the cache as llama.cpp lays it out: the heads of a position side by side, positions in a row
    const int  hd     = (int) K->ne[0];
    const int  kseg   = d2_seg_bytes(hd, d2_cuda_kind(K->type));
    const int  vseg   = d2_seg_bytes(hd, d2_cuda_kind(V->type));
    const bool layout = K->nb[2] == (size_t) kseg && K->nb[1] == (size_t) kseg*K->ne[2] &&
                        V->nb[2] == (size_t) vseg && V->nb[1] == (size_t) vseg*V->ne[2] && K->ne[2] == V->ne[2];
    // the exact copies: f16 caches of their own, and the row map followed by its inverse
    const bool exact  = (!ek && !ev && !rows) ||
        (ek && ev && rows && ek->type == GGML_TYPE_F16 && ev->type == GGML_TYPE_F16 && rows->type == GGML_TYPE_I32 &&
         ek->ne[0] == K->ne[0]*K->ne[2] && ev->ne[0] == V->ne[0]*V->ne[2] && ev->ne[1] == ek->ne[1] &&
         ggml_is_contiguous(ek) && ggml_is_contiguous(ev) && rows->ne[0] >= K->ne[1] + ek->ne[1]);
    const size_t smpbo = ggml_cuda_info().devices[device].smpbo;
    const bool fits   = K->ne[2] <= d2_fa_warps_max(hd) && Q->ne[2] % K->ne[2] == 0 && Q->ne[2]/K->ne[2] <= D2_FA_GMAX &&
        (size_t) d2_fattn_geom_of(hd, d2_cuda_kind(K->type), d2_cuda_kind(V->type), (int) K->ne[2], smpbo).smem <= smpbo &&
        (!ek || (size_t) d2_fattn_geom_of(hd, 0, 0, (int) K->ne[2], smpbo).smem <= smpbo);
    return layout && exact && fits && Q->type == GGML_TYPE_F32 && mask && mask->type == GGML_TYPE_F16 &&
        mask->ne[2] == 1 && mask->ne[3] == 1 && Q->ne[3] == 1 && K->ne[3] == 1 && dst->src[4] == nullptr &&
        max_bias == 0.0f && softcap == 0.0f && Q->nb[0] == sizeof(float) && ggml_is_contiguous(dst);
}

// the decode kernel's arguments for a shape (pointers and strides are the caller's)
static d2_fattn_args d2_fattn_args_of(const int nsm, const size_t smpbo, const d2_fattn_shape & s) {
    const d2_fattn_geom g = d2_fattn_geom_of(s.hd, s.pk, s.pv, s.n_head_kv, smpbo);
    d2_fattn_args a = {};
    a.n_kv      = s.n_kv;
    a.n_head_kv = s.n_head_kv;
    a.gqa       = s.n_head/s.n_head_kv;
    a.wph       = g.wph;
    a.sm_stage  = g.sm_stage;
    a.sm_v      = g.sm_v;
    a.sm_rows   = g.sm_rows;
    a.sm_mask   = g.sm_mask;
    a.sm_tiles  = g.sm_tiles;
    a.sm_warp   = g.sm_warp;
    d2_fattn_chunking(nsm, smpbo, s, a.chunk_rows, a.n_parts);
    return a;
}

// the exact copies of n_ex rows as the exact launch reads them: an f16 cache
static d2_fattn_shape d2_fattn_shape_exact(const d2_fattn_shape & s, const int n_ex) {
    return { s.hd, 0, 0, n_ex, s.n_head, s.n_head_kv, 1 };
}

// rows of the exact copies attention reads apart (the last is the scratch slot), or 0
static int d2_fattn_n_exact(const ggml_tensor * dst) {
    return dst->src[5] ? (int) dst->src[5]->ne[1] : 0;
}

// one query token's launches: the compressed rows, then the n_ex exact rows (none: n_kv 0); both
// count their partial results in one range
static d2_fattn_plan d2_fattn_plan_of(const int nsm, const size_t smpbo, const d2_fattn_shape & s, const int n_ex) {
    d2_fattn_plan p = {};
    p.main = d2_fattn_args_of(nsm, smpbo, s);
    if (n_ex > 0) {
        p.exact       = d2_fattn_args_of(nsm, smpbo, d2_fattn_shape_exact(s, n_ex));
        p.exact.part0 = p.main.n_parts;
        p.main.n_parts = p.exact.n_parts = p.main.n_parts + p.exact.n_parts;
    }
    return p;
}

static size_t d2_pad(const size_t x) {
    return GGML_PAD(x, 128);
}

// KV heads a prompt's pass converts to f16 at once: the most (a divisor of n_head_kv) whose f16 K
// and V fit in half the mask's bytes (the graph keeps the mask and more for its output phase)
static int d2_fattn_group(const d2_fattn_shape & s, const ggml_tensor * mask) {
    const size_t one = 2*d2_pad((size_t) s.n_kv*s.hd*sizeof(half));
    int g = 1;
    for (int n = 2; n <= s.n_head_kv; ++n) {
        if (s.n_head_kv % n == 0 && n*one <= ggml_nbytes(mask)/2) {
            g = n;
        }
    }
    return g;
}

size_t ggml_fraqtl_cuda_fattn_alloc_size(int device, const ggml_tensor * dst) {
    const d2_fattn_shape s = d2_fattn_shape_of(dst);
    size_t size = d2_pad(ggml_nbytes(dst));
    if (s.n_tokens == 1) {
        const auto & info = ggml_cuda_info().devices[device];
        const int n_parts = d2_fattn_plan_of(info.nsm, info.smpbo, s, d2_fattn_n_exact(dst)).main.n_parts;
        if (n_parts > 1) {
            size += d2_pad((size_t) s.n_head*n_parts*s.hd*sizeof(float));
            size += d2_pad((size_t) s.n_head*n_parts*sizeof(float2));
        }
    } else {
        const int G  = s.n_head/s.n_head_kv;
        const int HG = d2_fattn_group(s, dst->src[3]);
        size += 2*d2_pad((size_t) HG*s.n_kv*s.hd*sizeof(half));
        size += d2_pad((size_t) s.hd*HG*G*s.n_tokens*sizeof(float));
    }
    return size;
}

template <int HD>
static void d2_launch_decode(const d2_fattn_args & a, const d2_fattn_shape & s, cudaStream_t stream) {
    const int  n_chunks = (a.n_kv + a.chunk_rows - 1)/a.chunk_rows;
    const dim3 block(WARP_SIZE*s.n_head_kv*a.wph, 1, 1);
    const int  smem = a.sm_tiles + s.n_head_kv*a.wph*a.sm_warp; // d2_fattn_geom::smem
#define D2_CASE(PK, PV)                                                                           \
    if (s.pk == PK && s.pv == PV) {                                                               \
        if (smem > 48*1024) { /* per device: cheap, so set on every launch */                    \
            CUDA_CHECK(cudaFuncSetAttribute(d2_fattn_decode<HD, PK, PV>,                          \
                    cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                          \
        }                                                                                         \
        d2_fattn_decode<HD, PK, PV><<<n_chunks, block, smem, stream>>>(a);                        \
        CUDA_CHECK(cudaGetLastError());                                                           \
        return;                                                                                   \
    }
    D2_CASE( 8,  8) D2_CASE( 8, 16) D2_CASE( 8, 32) D2_CASE( 8, 0)
    D2_CASE(16,  8) D2_CASE(16, 16) D2_CASE(16, 32) D2_CASE(16, 0)
    D2_CASE(32,  8) D2_CASE(32, 16) D2_CASE(32, 32) D2_CASE(32, 0)
    D2_CASE( 0,  8) D2_CASE( 0, 16) D2_CASE( 0, 32) D2_CASE( 0, 0)
    // int8-protected (D2-lite, kauto with i8): K p8i8/p16i8/p32i8/f16 with V p8i8/p16i8/p32i8
    D2_CASE( 8 + D2_I8,  8 + D2_I8) D2_CASE( 8 + D2_I8, 16 + D2_I8) D2_CASE( 8 + D2_I8, 32 + D2_I8)
    D2_CASE(16 + D2_I8,  8 + D2_I8) D2_CASE(16 + D2_I8, 16 + D2_I8) D2_CASE(16 + D2_I8, 32 + D2_I8)
    D2_CASE(32 + D2_I8,  8 + D2_I8) D2_CASE(32 + D2_I8, 16 + D2_I8) D2_CASE(32 + D2_I8, 32 + D2_I8)
    D2_CASE( 0,          8 + D2_I8) D2_CASE( 0,         16 + D2_I8) D2_CASE( 0,         32 + D2_I8)
#undef D2_CASE
    GGML_ABORT("fraqtl: no D2 decode kernel for K kind %d / V kind %d", s.pk, s.pv);
}

static void d2_launch_decode_hd(d2_fattn_args a, const d2_fattn_shape & s, cudaStream_t stream) {
    a.k_pos = d2_staging_stride(a.k, (int64_t) s.n_head_kv*d2_seg_bytes(s.hd, s.pk));
    a.v_pos = d2_staging_stride(a.v, (int64_t) s.n_head_kv*d2_seg_bytes(s.hd, s.pv));
    switch (s.hd) {
        case  64: d2_launch_decode< 64>(a, s, stream); break;
        case 128: d2_launch_decode<128>(a, s, stream); break;
        case 256: d2_launch_decode<256>(a, s, stream); break;
        default: GGML_ABORT("fraqtl: head size %d", s.hd);
    }
}

// one query token: the split-KV kernel over the compressed rows and over the exact copies, then
// the log-sum-exp merge of their partial results
static void d2_fattn_decode_launch(const d2_fattn_plan & p, const d2_fattn_shape & s, cudaStream_t stream) {
    const d2_fattn_args & a = p.main;
    d2_launch_decode_hd(a, s, stream);
    if (p.exact.n_kv > 0) {
        d2_launch_decode_hd(p.exact, d2_fattn_shape_exact(s, p.exact.n_kv), stream);
    }
    if (a.n_parts > 1) {
        switch (s.hd) {
            case  64: d2_fattn_combine< 64><<<s.n_head, D2_FA_COMBINE_WARPS*WARP_SIZE, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_parts); break;
            case 128: d2_fattn_combine<128><<<s.n_head, D2_FA_COMBINE_WARPS*WARP_SIZE, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_parts); break;
            case 256: d2_fattn_combine<256><<<s.n_head, D2_FA_COMBINE_WARPS*WARP_SIZE, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_parts); break;
        }
        CUDA_CHECK(cudaGetLastError());
    }
}


template <int HD>
static void d2_launch_to_f16(const int p, const uint8_t * src, const int32_t * rows, const half * exact, half * out,
        const d2_fattn_shape & s, const int h, const int nh, const int64_t s1, const int64_t s2, const int64_t e_s1,
        cudaStream_t stream) {
    const int64_t n      = (int64_t) s.n_kv*(HD/8)*nh;
    const int     blocks = (int) ((n + 255)/256);
    switch (p) {
        case  0: d2_head_to_f16<HD,  0><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case  8: d2_head_to_f16<HD,  8><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case 16: d2_head_to_f16<HD, 16><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case 32: d2_head_to_f16<HD, 32><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case  8 + D2_I8: d2_head_to_f16<HD,  8 + D2_I8><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case 16 + D2_I8: d2_head_to_f16<HD, 16 + D2_I8><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        case 32 + D2_I8: d2_head_to_f16<HD, 32 + D2_I8><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, nh, s1, s2, e_s1); break;
        default: GGML_ABORT("fraqtl: no D2 dequantizer for kind %d", p);
    }
    CUDA_CHECK(cudaGetLastError());
}

static void d2_fattn_many(ggml_backend_cuda_context & ctx, ggml_tensor * dst, const d2_fattn_shape & s) {
    const auto [Q, K, V, mask, ek, ev, rows] = d2_fattn_srcs_of(dst);
    cudaStream_t stream = ctx.stream();
    const int G  = s.n_head/s.n_head_kv;
    const int HG = d2_fattn_group(s, mask);

    char * extra = (char *) dst->data + d2_pad(ggml_nbytes(dst));
    half  * k16  = (half *) extra;
    half  * v16  = (half *) (extra + d2_pad((size_t) HG*s.n_kv*s.hd*sizeof(half)));
    float * part = (float *) (extra + 2*d2_pad((size_t) HG*s.n_kv*s.hd*sizeof(half)));

    // HG KV heads: Q of their HG*G query heads, f16 K/V of those heads, a dense output for them
    ggml_tensor q_h = *Q;
    q_h.ne[2] = HG*G;
    q_h.view_src = nullptr;

    ggml_tensor k_h = *K;
    k_h.type = GGML_TYPE_F16;
    k_h.ne[0] = s.hd; k_h.ne[1] = s.n_kv; k_h.ne[2] = HG; k_h.ne[3] = 1;
    k_h.nb[0] = sizeof(half); k_h.nb[1] = s.hd*sizeof(half);
    k_h.nb[2] = k_h.nb[1]*s.n_kv; k_h.nb[3] = k_h.nb[2]*HG;
    k_h.view_src = nullptr;
    k_h.data = k16;
    ggml_tensor v_h = k_h;
    v_h.data = v16;

    ggml_tensor out_h = *dst;
    out_h.ne[1] = HG*G;
    out_h.nb[2] = out_h.nb[1]*HG*G;
    out_h.nb[3] = out_h.nb[2]*out_h.ne[2];
    out_h.data = part;
    out_h.src[0] = &q_h;
    out_h.src[1] = &k_h;
    out_h.src[2] = &v_h;
    out_h.src[5] = out_h.src[6] = out_h.src[7] = nullptr;

    const int32_t * rows_d = rows ? (const int32_t *) rows->data : nullptr;
    const int64_t n_out = (int64_t) s.hd*HG*G*s.n_tokens;
    for (int h = 0; h < s.n_head_kv; h += HG) {
        q_h.data = (char *) Q->data + (size_t) h*G*Q->nb[2];
#define D2_TO_F16(HD)                                                                                          \
        d2_launch_to_f16<HD>(s.pk, (const uint8_t *) K->data, rows_d, ek ? (const half *) ek->data : nullptr,  \
                k16, s, h, HG, K->nb[1], K->nb[2], ek ? ek->nb[1]/sizeof(half) : 0, stream);                  \
        d2_launch_to_f16<HD>(s.pv, (const uint8_t *) V->data, rows_d, ev ? (const half *) ev->data : nullptr,  \
                v16, s, h, HG, V->nb[1], V->nb[2], ev ? ev->nb[1]/sizeof(half) : 0, stream);
        switch (s.hd) {
            case  64: D2_TO_F16(64);  break;
            case 128: D2_TO_F16(128); break;
            case 256: D2_TO_F16(256); break;
            default: GGML_ABORT("fraqtl: head size %d", s.hd);
        }
#undef D2_TO_F16
        ggml_cuda_flash_attn_ext(ctx, &out_h);
        d2_scatter_heads<<<(int) ((n_out + 255)/256), 256, 0, stream>>>(part, (float *) dst->data, s.hd, HG*G, s.n_head, h/HG, n_out);
        CUDA_CHECK(cudaGetLastError());
    }
}

void ggml_fraqtl_cuda_flash_attn_ext(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    ggml_cuda_set_device(ctx.device);
    const d2_fattn_shape s = d2_fattn_shape_of(dst);
    GGML_ASSERT(ggml_fraqtl_cuda_fattn_supported(ctx.device, dst));

    if (s.n_tokens > 1) {
        d2_fattn_many(ctx, dst, s);
        return;
    }

    const auto [Q, K, V, mask, ek, ev, rows] = d2_fattn_srcs_of(dst);

    const auto & info = ggml_cuda_info().devices[ctx.device];
    d2_fattn_plan p = d2_fattn_plan_of(info.nsm, info.smpbo, s, d2_fattn_n_exact(dst));
    for (d2_fattn_args * a : { &p.main, &p.exact }) {
        a->q    = (const float *) Q->data;
        a->mask = (const half *) mask->data;
        a->dst  = (float *) dst->data;
        memcpy(&a->scale, (const float *) dst->op_params + 0, sizeof(float));
        a->q_s2 = Q->nb[2]/sizeof(float);
        if (a->n_parts > 1) {
            char * extra = (char *) dst->data + d2_pad(ggml_nbytes(dst));
            a->part_o  = (float *) extra;
            a->part_ml = (float2 *) (extra + d2_pad((size_t) s.n_head*a->n_parts*s.hd*sizeof(float)));
        }
    }
    p.main.k    = (const uint8_t *) K->data;
    p.main.v    = (const uint8_t *) V->data;
    p.main.rows = rows ? (const int32_t *) rows->data : nullptr;
    if (ek) {
        p.exact.k       = (const uint8_t *) ek->data;
        p.exact.v       = (const uint8_t *) ev->data;
        p.exact.cell_of = (const int32_t *) rows->data + s.n_kv;
    }

    d2_fattn_decode_launch(p, s, ctx.stream());
}
