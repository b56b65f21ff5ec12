// fraqtl: CUDA kernels for the D2 KV-cache block types (see ggml-fraqtl-cuda.cuh).
#include "ggml-fraqtl-cuda.cuh"
#include "fattn.cuh"
#include "ggml-fraqtl.h"

#include <cstring>

// ---------------------------------------------------------------------------------------
// block layout: [fp16 scale | P fp16 coefficients | (64-P) 3-bit codes]; P = 0 means an f16 row

static constexpr __host__ __device__ int d2_block_bytes(int p) {
    return 2 + 2*p + (QK_D2 - p)*3/8;
}

static int d2_cuda_protected(ggml_type type) {
    return type == GGML_TYPE_F16 ? 0 : ggml_d2_protected(type);
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

// elements [8*span, 8*span + 8) of one head's row (hd/64 blocks, or hd halves when P == 0)
template <int P>
static __device__ __forceinline__ void d2_ld_span(const uint8_t * row, const int span, float out[8]) {
    if constexpr (P == 0) {
        d2_ld_f16x8((const half *) row + 8*span, out);
    } else {
        const uint8_t * blk = row + (span/8)*d2_block_bytes(P);
        const int e0 = 8*(span % 8);
        if (e0 < P) {
            const uint8_t * ph = blk + 2 + 2*e0;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                out[j] = d2_ld_half(ph + 2*j);
            }
        } else {
            const float     s    = d2_ld_half(blk);
            const uint8_t * qs   = blk + 2 + 2*P + 3*((e0 - P)/8);
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

template <int P>
static __device__ void d2_quantize_block(const float * x, uint8_t * y) {
    constexpr int NT = QK_D2 - P;
    float tail[NT];
    float max_pos = 0.0f;
    float max_neg = 0.0f;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
        tail[i] = x[P + i];
        max_pos = fmaxf(max_pos,  tail[i]);
        max_neg = fmaxf(max_neg, -tail[i]);
    }
    float scale = fmaxf(__fdiv_rn(max_pos, 3.0f), __fdiv_rn(max_neg, 4.0f));
    if (scale > 0.0f) {
        float best_err = d2_tail_error<NT>(tail, d2_fp16_round(scale));
        float best     = scale;
        for (int k = 1; k <= 6; ++k) {
            const float cand = __fmul_rn(scale, __fsub_rn(1.0f, __fmul_rn(0.05f, (float) k)));
            const float s16  = d2_fp16_round(cand);
            if (s16 <= 0.0f) {
                break;
            }
            const float err = d2_tail_error<NT>(tail, s16);
            if (err < best_err) {
                best_err = err;
                best     = cand;
            }
        }
        scale = best;
    }
    d2_st_half(y, scale);
    const float s   = d2_fp16_round(scale);
    const float inv = s > 0.0f ? __frcp_rn(s) : 0.0f;
    for (int i = 0; i < P; ++i) {
        d2_st_half(y + 2 + 2*i, x[i]);
    }
    uint8_t * qs = y + 2 + 2*P;
#pragma unroll
    for (int g = 0; g < NT/8; ++g) {
        uint32_t bits = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            bits |= (uint32_t) ((int) d2_code(tail[8*g + j], inv) + 4) << (3*j);
        }
        qs[3*g + 0] = (uint8_t) (bits      );
        qs[3*g + 1] = (uint8_t) (bits >>  8);
        qs[3*g + 2] = (uint8_t) (bits >> 16);
    }
}

template <int P, typename idx_t>
static __global__ void d2_set_rows(const char * __restrict__ src0, const idx_t * __restrict__ src1, char * __restrict__ dst,
        const int64_t n_blocks, const int64_t nb_row /* blocks per row */, const int64_t ne01, const int64_t ne02,
        const int64_t nb01, const int64_t nb02, const int64_t nb03,
        const int64_t nb10, const int64_t nb11, const int64_t nb12, const int64_t ne11, const int64_t ne12,
        const int64_t nb1, const int64_t nb2, const int64_t nb3) {
    const int64_t i = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i >= n_blocks) {
        return;
    }
    const int64_t ib  = i % nb_row;
    const int64_t i01 = (i / nb_row) % ne01;
    const int64_t i02 = (i / nb_row / ne01) % ne02;
    const int64_t i03 =  i / nb_row / ne01 / ne02;
    const int64_t i12 = i03 % ne12;
    const int64_t i11 = i02 % ne11;

    const int64_t dst_row = *(const idx_t *) ((const char *) src1 + i01*nb10 + i11*nb11 + i12*nb12);
    const float * x = (const float *) (src0 + i01*nb01 + i02*nb02 + i03*nb03) + ib*QK_D2;
    uint8_t     * y = (uint8_t *) (dst + dst_row*nb1 + i02*nb2 + i03*nb3) + ib*d2_block_bytes(P);
    d2_quantize_block<P>(x, y);
}

bool ggml_fraqtl_cuda_set_rows_supported(const ggml_tensor * op) {
    return ggml_is_d2(op->type) && op->src[0]->type == GGML_TYPE_F32 &&
        (op->src[1]->type == GGML_TYPE_I64 || op->src[1]->type == GGML_TYPE_I32) && op->ne[0] % QK_D2 == 0;
}

template <int P, typename idx_t>
static void d2_set_rows_cuda(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t nb_row   = src0->ne[0]/QK_D2;
    const int64_t n_blocks = nb_row*src0->ne[1]*src0->ne[2]*src0->ne[3];
    if (n_blocks == 0) {
        return;
    }
    const int threads = 64; // one block of 64 coefficients per thread: its tail lives in registers
    const int64_t grid = (n_blocks + threads - 1)/threads;
    d2_set_rows<P, idx_t><<<grid, threads, 0, stream>>>(
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
// flash attention, one query token: grid (KV head, chunk of rows). A block keeps the G query
// heads of its KV head in shared memory and walks its chunk in tiles of 64 rows: the raw bytes
// of the next tile are copied in (cp.async, 4-byte words) while the current one is decoded to
// f16 (exact rows from the f16 copies), scored, softmaxed online and multiplied into V. Chunks
// are merged by log-sum-exp.

#define D2_FA_THREADS 128
#define D2_FA_TILE    64
#define D2_FA_GMAX    8
#define D2_FA_SM_BLOCKS 16 // 2048 threads per SM

struct d2_fattn_args {
    const float   * q;
    const uint8_t * k;
    const uint8_t * v;
    const half    * mask;
    const half    * ek;
    const half    * ev;
    const int32_t * rows;
    float  * dst;
    float  * part_o;
    float2 * part_ml;
    int      n_kv;
    int      gqa;
    int      chunk_rows;
    int      n_chunks;
    float    scale;
    int64_t  q_s2;   // floats between query heads
    int64_t  k_s1;   // bytes between K rows
    int64_t  k_s2;   // bytes between KV heads
    int64_t  v_s1;
    int64_t  v_s2;
    int64_t  ek_s1;  // halves between exact rows
    int64_t  ev_s1;
};

// bytes of one head's row, and the 4-byte words that cover it wherever it starts
static constexpr __host__ __device__ int d2_seg_bytes(int hd, int p) {
    return p == 0 ? 2*hd : (hd/64)*d2_block_bytes(p);
}
static constexpr __host__ __device__ int d2_seg_words(int hd, int p) {
    return (d2_seg_bytes(hd, p) + 6)/4;
}

// shared memory of the decode kernel, in 4-byte words
template <int HD, int PK, int PV>
struct d2_fattn_smem_layout;

static constexpr __host__ __device__ size_t d2_fattn_smem_bytes(int hd, int pk, int pv) {
    return 4*(size_t) (D2_FA_GMAX*hd + D2_FA_GMAX*D2_FA_TILE + D2_FA_TILE*(hd/2 + 2) + D2_FA_TILE*hd/2 +
        2*D2_FA_TILE*(d2_seg_words(hd, pk) + d2_seg_words(hd, pv)) + 4 + 2*D2_FA_TILE + D2_FA_TILE);
}

template <int HD, int PK, int PV>
struct d2_fattn_smem_layout {
    static constexpr int KSW  = HD/2 + 2;                                  // sK row stride (half2)
    static constexpr int KW   = d2_seg_words(HD, PK);
    static constexpr int VW   = d2_seg_words(HD, PV);
    static constexpr int Q    = 0;                                         // float [GMAX][HD]
    static constexpr int P    = Q + D2_FA_GMAX*HD;                         // float [GMAX][TILE]
    static constexpr int K    = P + D2_FA_GMAX*D2_FA_TILE;                 // half2 [TILE][KSW]
    static constexpr int V    = K + D2_FA_TILE*KSW;                        // half2 [TILE][HD/2]
    static constexpr int RAW  = V + D2_FA_TILE*HD/2;                       // u32 [2][TILE][KW + VW]
    static constexpr int ROWS = RAW + 2*D2_FA_TILE*(KW + VW) + 4;          // i32 [2][TILE] (4 words: a tail read)
    static constexpr int MASK = ROWS + 2*D2_FA_TILE;                       // half2 [2][TILE/2]
    static constexpr int END  = MASK + D2_FA_TILE;
    static constexpr size_t bytes = 4*(size_t) END;
    static_assert(bytes == d2_fattn_smem_bytes(HD, PK, PV), "one formula for the layout and the launch");
};

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

// 4 bytes at any byte address of shared memory (reads the next aligned word too)
static __device__ __forceinline__ uint32_t d2_sm_u32(const uint8_t * p) {
    const uint32_t * w = (const uint32_t *) ((uintptr_t) p & ~(uintptr_t) 3);
    return __funnelshift_r(w[0], w[1], 8*(unsigned) ((uintptr_t) p & 3));
}

static __device__ __forceinline__ half2 d2_u32_as_half2(const uint32_t u) {
    half2 h;
    memcpy(&h, &u, sizeof(h));
    return h;
}

// elements [8*span, 8*span + 8) of one head's row staged in shared memory, as four half2
template <int P>
static __device__ __forceinline__ void d2_sm_span(const uint8_t * row, const int span, half2 out[4]) {
    if constexpr (P == 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            out[j] = d2_u32_as_half2(d2_sm_u32(row + 16*span + 4*j));
        }
    } else {
        const uint8_t * blk = row + (span/8)*d2_block_bytes(P);
        const int e0 = 8*(span % 8);
        if (e0 < P) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                out[j] = d2_u32_as_half2(d2_sm_u32(blk + 2 + 2*e0 + 4*j));
            }
        } else {
            const float    s    = __half2float(__ushort_as_half((unsigned short) (d2_sm_u32(blk) & 0xFFFF)));
            const uint32_t bits = d2_sm_u32(blk + 2 + 2*P + 3*((e0 - P)/8));
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                out[j] = __floats2half2_rn((float) ((int) ((bits >> (6*j    )) & 7) - 4)*s,
                                           (float) ((int) ((bits >> (6*j + 3)) & 7) - 4)*s);
            }
        }
    }
}

static __device__ __forceinline__ void d2_gl_span_f16(const half * src, half2 out[4]) {
    const uint4 raw = *(const uint4 *) src; // exact copies are 16-byte aligned
    out[0] = d2_u32_as_half2(raw.x);
    out[1] = d2_u32_as_half2(raw.y);
    out[2] = d2_u32_as_half2(raw.z);
    out[3] = d2_u32_as_half2(raw.w);
}

template <int HD, int PK, int PV>
__launch_bounds__(D2_FA_THREADS, 2)
static __global__ void d2_fattn_decode(const d2_fattn_args a) {
    using L = d2_fattn_smem_layout<HD, PK, PV>;
    constexpr int SPR    = HD/8;                   // spans of 8 per row
    constexpr int KSEG   = d2_seg_bytes(HD, PK);
    constexpr int VSEG   = d2_seg_bytes(HD, PV);
    constexpr int NCOL   = HD/2;                   // half2 columns of V
    constexpr int RSPLIT = D2_FA_THREADS/NCOL > 1 ? D2_FA_THREADS/NCOL : 1;
    constexpr int CPT    = NCOL/(D2_FA_THREADS/RSPLIT);     // columns per thread
    constexpr int RPT    = D2_FA_TILE/RSPLIT;      // rows per thread in P·V
    static_assert(D2_FA_TILE == 64 && D2_FA_THREADS == 2*D2_FA_TILE, "a thread quad per row pair");

    extern __shared__ uint32_t smem_u32[];
    float   * sQ    = (float *) (smem_u32 + L::Q);
    float   * sP    = (float *) (smem_u32 + L::P);
    half2   * sK    = (half2 *) (smem_u32 + L::K);
    half2   * sV    = (half2 *) (smem_u32 + L::V);
    uint32_t* sRaw  = smem_u32 + L::RAW;
    int32_t * sRows = (int32_t *) (smem_u32 + L::ROWS);
    half    * sMask = (half *) (smem_u32 + L::MASK);
    __shared__ float sM[D2_FA_GMAX];
    __shared__ float sL[D2_FA_GMAX];
    __shared__ float sA[D2_FA_GMAX];

    const int h   = blockIdx.x;
    const int c   = blockIdx.y;
    const int tid = threadIdx.x;
    const int G   = a.gqa;

    const int r0 = c*a.chunk_rows;
    const int r1 = min(r0 + a.chunk_rows, a.n_kv);
    const uint8_t * k_head = a.k + h*a.k_s2;
    const uint8_t * v_head = a.v + h*a.v_s2;

    // the raw bytes, row map and mask of the tile at t0 into buffer b
    auto stage = [&](const int t0, const int b) {
        uint32_t * raw = sRaw + b*D2_FA_TILE*(L::KW + L::VW);
        for (int i = tid; i < D2_FA_TILE*(L::KW + L::VW); i += D2_FA_THREADS) {
            const int r   = i / (L::KW + L::VW);
            const int j   = i % (L::KW + L::VW);
            const int row = t0 + r;
            if (row >= r1) {
                continue;
            }
            const bool      is_k = j < L::KW;
            const uint8_t * p    = is_k ? k_head + row*a.k_s1 : v_head + row*a.v_s1;
            const int       w    = is_k ? j : j - L::KW;
            const int       nw   = ((int) ((uintptr_t) p & 3) + (is_k ? KSEG : VSEG) + 3)/4;
            if (w < nw) {
                d2_cp4(raw + i, (const uint8_t *) ((uintptr_t) p & ~(uintptr_t) 3) + 4*w);
            }
        }
        if (tid < D2_FA_TILE) {
            const int row = t0 + tid;
            if (a.rows && row < r1) {
                d2_cp4(sRows + b*D2_FA_TILE + tid, a.rows + row);
            }
        } else if (tid < D2_FA_TILE + D2_FA_TILE/2) {
            const int i = tid - D2_FA_TILE;
            if (t0 + 2*i < r1) {
                d2_cp4(sMask + b*D2_FA_TILE + 2*i, a.mask + t0 + 2*i); // t0 is even: word-aligned
            }
        }
        d2_cp_commit();
    };

    for (int i = tid; i < G*HD; i += D2_FA_THREADS) {
        const int g = i / HD;
        sQ[g*HD + i % HD] = a.q[(int64_t) (h*G + g)*a.q_s2 + i % HD]*a.scale;
    }
    if (tid < D2_FA_GMAX) {
        sM[tid] = -INFINITY;
        sL[tid] = 0.0f;
    }

    float acc[D2_FA_GMAX][CPT][2];
#pragma unroll
    for (int g = 0; g < D2_FA_GMAX; ++g) {
#pragma unroll
        for (int k = 0; k < CPT; ++k) {
            acc[g][k][0] = acc[g][k][1] = 0.0f;
        }
    }

    if (r0 < r1) {
        stage(r0, 0);
    }
    int buf = 0;
    for (int t0 = r0; t0 < r1; t0 += D2_FA_TILE, buf ^= 1) {
        if (t0 + D2_FA_TILE < r1) {
            stage(t0 + D2_FA_TILE, buf ^ 1); // its buffer was last read before the previous tile's scores
            d2_cp_wait<1>();
        } else {
            d2_cp_wait<0>();
        }
        __syncthreads(); // this tile's bytes are in; the previous tile is consumed; sQ, sM, sL are set

        // decode to f16: exact rows from the f16 copies, the rest from the staged bytes
        const uint32_t * raw  = sRaw + buf*D2_FA_TILE*(L::KW + L::VW);
        const int32_t  * rmap = sRows + buf*D2_FA_TILE;
        for (int i = tid; i < D2_FA_TILE*SPR; i += D2_FA_THREADS) {
            const int r   = i / SPR;
            const int sp  = i % SPR;
            const int row = t0 + r;
            half2 k4[4];
            half2 v4[4];
            const int src = row < r1 ? (a.rows ? rmap[r] : row) : -1;
            if (src >= a.n_kv) {
                const int64_t slot = src - a.n_kv;
                d2_gl_span_f16(a.ek + slot*a.ek_s1 + (int64_t) h*HD + 8*sp, k4);
                d2_gl_span_f16(a.ev + slot*a.ev_s1 + (int64_t) h*HD + 8*sp, v4);
            } else if (src >= 0) {
                const uint8_t * kr = (const uint8_t *) (raw + r*(L::KW + L::VW))        + ((uintptr_t) (k_head + row*a.k_s1) & 3);
                const uint8_t * vr = (const uint8_t *) (raw + r*(L::KW + L::VW) + L::KW) + ((uintptr_t) (v_head + row*a.v_s1) & 3);
                d2_sm_span<PK>(kr, sp, k4);
                d2_sm_span<PV>(vr, sp, v4);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    k4[j] = v4[j] = __float2half2_rn(0.0f);
                }
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sK[r*L::KSW + 4*sp + j] = k4[j];
                sV[r*NCOL   + 4*sp + j] = v4[j];
            }
        }
        __syncthreads();

        // scores: a thread quad per row pair, each thread taking every fourth half2 of both rows
        {
            const int rp = tid >> 2;          // row pair
            const int t  = tid & 3;
            const half2 * k0 = sK + (2*rp + 0)*L::KSW;
            const half2 * k1 = sK + (2*rp + 1)*L::KSW;
            float s0[D2_FA_GMAX];
            float s1[D2_FA_GMAX];
#pragma unroll
            for (int g = 0; g < D2_FA_GMAX; ++g) {
                s0[g] = s1[g] = 0.0f;
            }
#pragma unroll 4
            for (int w = t; w < HD/2; w += 4) {
                const float2 kf0 = __half22float2(k0[w]);
                const float2 kf1 = __half22float2(k1[w]);
#pragma unroll
                for (int g = 0; g < D2_FA_GMAX; ++g) {
                    if (g < G) {
                        const float2 qf = *(const float2 *) (sQ + g*HD + 2*w);
                        s0[g] = fmaf(qf.x, kf0.x, fmaf(qf.y, kf0.y, s0[g]));
                        s1[g] = fmaf(qf.x, kf1.x, fmaf(qf.y, kf1.y, s1[g]));
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < D2_FA_GMAX; ++g) {
                s0[g] += __shfl_xor_sync(0xFFFFFFFF, s0[g], 1);
                s0[g] += __shfl_xor_sync(0xFFFFFFFF, s0[g], 2);
                s1[g] += __shfl_xor_sync(0xFFFFFFFF, s1[g], 1);
                s1[g] += __shfl_xor_sync(0xFFFFFFFF, s1[g], 2);
            }
            if (t < 2) {
                const int   r   = 2*rp + t;
                const float mv  = t0 + r < r1 ? __half2float(sMask[buf*D2_FA_TILE + r]) : -INFINITY;
#pragma unroll
                for (int g = 0; g < D2_FA_GMAX; ++g) {
                    if (g < G) {
                        sP[g*D2_FA_TILE + r] = (t == 0 ? s0[g] : s1[g]) + mv;
                    }
                }
            }
        }
        __syncthreads();

        // online softmax: one warp per query head
        {
            const int warp = tid / WARP_SIZE;
            const int lane = tid % WARP_SIZE;
            for (int g = warp; g < G; g += D2_FA_THREADS/WARP_SIZE) {
                const float x0 = sP[g*D2_FA_TILE + lane];
                const float x1 = sP[g*D2_FA_TILE + lane + WARP_SIZE];
                const float m_old = sM[g];
                const float m_new = fmaxf(m_old, warp_reduce_max(fmaxf(x0, x1)));
                const float p0 = m_new == -INFINITY ? 0.0f : expf(x0 - m_new);
                const float p1 = m_new == -INFINITY ? 0.0f : expf(x1 - m_new);
                sP[g*D2_FA_TILE + lane]             = p0;
                sP[g*D2_FA_TILE + lane + WARP_SIZE] = p1;
                const float sum = warp_reduce_sum(p0 + p1);
                if (lane == 0) {
                    const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
                    sA[g] = alpha;
                    sL[g] = sL[g]*alpha + sum;
                    sM[g] = m_new;
                }
            }
        }
        __syncthreads();

        // P·V: each thread a half2 column (or CPT of them) over a contiguous quarter/half of the rows
        {
            const int rs   = tid / (D2_FA_THREADS/RSPLIT);
            const int col0 = tid % (D2_FA_THREADS/RSPLIT);
#pragma unroll
            for (int g = 0; g < D2_FA_GMAX; ++g) {
                if (g < G) {
                    const float alpha = sA[g];
#pragma unroll
                    for (int k = 0; k < CPT; ++k) {
                        acc[g][k][0] *= alpha;
                        acc[g][k][1] *= alpha;
                    }
                }
            }
#pragma unroll 2
            for (int r = rs*RPT; r < (rs + 1)*RPT; r += 4) {
                float4 p4[D2_FA_GMAX];
#pragma unroll
                for (int g = 0; g < D2_FA_GMAX; ++g) {
                    if (g < G) {
                        p4[g] = *(const float4 *) (sP + g*D2_FA_TILE + r);
                    }
                }
#pragma unroll
                for (int k = 0; k < CPT; ++k) {
                    const int col = col0 + k*(D2_FA_THREADS/RSPLIT);
                    float2 vf[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        vf[j] = __half22float2(sV[(r + j)*NCOL + col]);
                    }
#pragma unroll
                    for (int g = 0; g < D2_FA_GMAX; ++g) {
                        if (g < G) {
                            acc[g][k][0] = fmaf(p4[g].x, vf[0].x, fmaf(p4[g].y, vf[1].x, fmaf(p4[g].z, vf[2].x, fmaf(p4[g].w, vf[3].x, acc[g][k][0]))));
                            acc[g][k][1] = fmaf(p4[g].x, vf[0].y, fmaf(p4[g].y, vf[1].y, fmaf(p4[g].z, vf[2].y, fmaf(p4[g].w, vf[3].y, acc[g][k][1]))));
                        }
                    }
                }
            }
        }
    }

    const int rs   = tid / (D2_FA_THREADS/RSPLIT);
    const int col0 = tid % (D2_FA_THREADS/RSPLIT);
    if constexpr (RSPLIT > 1) {
        // add up the row groups' partial outputs (sK is free now)
        static_assert(CPT == 1 && (RSPLIT - 1)*D2_FA_GMAX*HD <= D2_FA_TILE*(HD/2 + 2), "the reduction fits in sK");
        __syncthreads();
        float2 * red = (float2 *) sK;
        if (rs > 0) {
#pragma unroll
            for (int g = 0; g < D2_FA_GMAX; ++g) {
                if (g < G) {
                    red[((rs - 1)*D2_FA_GMAX + g)*NCOL + col0] = make_float2(acc[g][0][0], acc[g][0][1]);
                }
            }
        }
        __syncthreads();
        if (rs == 0) {
            for (int j = 1; j < RSPLIT; ++j) {
#pragma unroll
                for (int g = 0; g < D2_FA_GMAX; ++g) {
                    if (g < G) {
                        const float2 o = red[((j - 1)*D2_FA_GMAX + g)*NCOL + col0];
                        acc[g][0][0] += o.x;
                        acc[g][0][1] += o.y;
                    }
                }
            }
        }
    }
    __syncthreads();

    if (rs == 0) {
#pragma unroll
        for (int g = 0; g < D2_FA_GMAX; ++g) {
            if (g < G) {
                const int64_t qh = (int64_t) h*G + g;
#pragma unroll
                for (int k = 0; k < CPT; ++k) {
                    const int d = 2*(col0 + k*(D2_FA_THREADS/RSPLIT));
                    float2 o = make_float2(acc[g][k][0], acc[g][k][1]);
                    if (a.n_chunks == 1) {
                        const float inv = sL[g] > 0.0f ? 1.0f/sL[g] : 0.0f;
                        o.x *= inv;
                        o.y *= inv;
                        *(float2 *) (a.dst + qh*HD + d) = o;
                    } else {
                        *(float2 *) (a.part_o + (qh*a.n_chunks + c)*HD + d) = o;
                    }
                }
            }
        }
    }
    if (a.n_chunks > 1 && tid < G) {
        a.part_ml[((int64_t) h*G + tid)*a.n_chunks + c] = make_float2(sM[tid], sL[tid]);
    }
}

template <int HD>
__launch_bounds__(HD)
static __global__ void d2_fattn_combine(const float * __restrict__ part_o, const float2 * __restrict__ part_ml,
        float * __restrict__ dst, const int n_chunks) {
    const int64_t qh = blockIdx.x;
    const int     d  = threadIdx.x;
    float m = -INFINITY;
    for (int c = 0; c < n_chunks; ++c) {
        m = fmaxf(m, part_ml[qh*n_chunks + c].x);
    }
    float num = 0.0f;
    float den = 0.0f;
    for (int c = 0; c < n_chunks; ++c) {
        const float2 ml = part_ml[qh*n_chunks + c];
        const float  w  = ml.x == -INFINITY ? 0.0f : expf(ml.x - m);
        num += w*part_o[(qh*n_chunks + c)*HD + d];
        den += w*ml.y;
    }
    dst[qh*HD + d] = den > 0.0f ? num/den : 0.0f;
}

// ---------------------------------------------------------------------------------------
// many query tokens: one KV head at a time to f16 (exact rows applied), then upstream's kernels

template <int HD, int P>
static __global__ void d2_head_to_f16(const uint8_t * __restrict__ src, const int32_t * __restrict__ rows,
        const half * __restrict__ exact, half * __restrict__ dst, const int n_kv, const int h,
        const int64_t s1, const int64_t s2, const int64_t e_s1) {
    constexpr int SPR = HD/8;
    const int64_t i = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (i >= (int64_t) n_kv*SPR) {
        return;
    }
    const int row = (int) (i / SPR);
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
    *(uint4 *) (dst + (int64_t) row*HD + 8*sp) = *(const uint4 *) out;
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
    return { (int) K->ne[0], d2_cuda_protected(K->type), d2_cuda_protected(V->type), (int) K->ne[1],
             (int) Q->ne[2], (int) K->ne[2], (int) Q->ne[1] };
}

static void d2_fattn_chunking(const int nsm, const size_t smpbo, const d2_fattn_shape & s, int & chunk_rows, int & n_chunks) {
    // one wave: as many blocks as fit on the device at once (shared memory bounds them), the rows
    // of each KV head split evenly among its share of them
    const size_t smem    = d2_fattn_smem_bytes(s.hd, s.pk, s.pv) + 1024; // the system's 1 KiB per block
    const int    per_sm  = std::max(1, std::min(D2_FA_SM_BLOCKS, (int) ((smpbo + 1024)/smem)));
    const int    n_tiles = (s.n_kv + D2_FA_TILE - 1)/D2_FA_TILE;
    const int    want    = std::max(1, nsm*per_sm/std::max(1, s.n_head_kv));
    const int    per     = std::max(1, (n_tiles + want - 1)/want);
    chunk_rows = per*D2_FA_TILE;
    n_chunks   = std::max(1, (s.n_kv + chunk_rows - 1)/chunk_rows);
}

bool ggml_fraqtl_cuda_fattn_applies(const ggml_tensor * dst) {
    return dst->op == GGML_OP_FLASH_ATTN_EXT && (ggml_is_d2(dst->src[1]->type) || ggml_is_d2(dst->src[2]->type));
}

bool ggml_fraqtl_cuda_fattn_supported(int device, const ggml_tensor * dst) {
    const auto [Q, K, V, mask, ek, ev, rows] = d2_fattn_srcs_of(dst);
    if (Q->ne[1] == 1 && d2_fattn_smem_bytes((int) K->ne[0], d2_cuda_protected(K->type), d2_cuda_protected(V->type)) >
            ggml_cuda_info().devices[device].smpbo) {
        return false; // the decode kernel's tiles do not fit this GPU's shared memory
    }
    float max_bias = 0.0f;
    float softcap  = 0.0f;
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&softcap,  (const float *) dst->op_params + 2, sizeof(float));
    const bool types = (ggml_is_d2(K->type) || K->type == GGML_TYPE_F16) && (ggml_is_d2(V->type) || V->type == GGML_TYPE_F16);
    const bool head  = (K->ne[0] == 64 || K->ne[0] == 128 || K->ne[0] == 256) && V->ne[0] == K->ne[0];
    const bool exact = (!ek && !ev && !rows) ||
        (ek && ev && rows && ek->type == GGML_TYPE_F16 && ev->type == GGML_TYPE_F16 && rows->type == GGML_TYPE_I32 &&
         rows->ne[0] >= K->ne[1] && ek->ne[0] == K->ne[0]*K->ne[2] && ev->ne[0] == V->ne[0]*V->ne[2]);
    return types && head && exact && Q->type == GGML_TYPE_F32 && mask && mask->type == GGML_TYPE_F16 &&
        mask->ne[2] == 1 && mask->ne[3] == 1 && Q->ne[3] == 1 && K->ne[3] == 1 && dst->src[4] == nullptr &&
        max_bias == 0.0f && softcap == 0.0f && Q->ne[2] % K->ne[2] == 0 && Q->ne[2]/K->ne[2] <= D2_FA_GMAX &&
        Q->nb[0] == sizeof(float) && ggml_is_contiguous(dst);
}

static size_t d2_pad(const size_t x) {
    return GGML_PAD(x, 128);
}

size_t ggml_fraqtl_cuda_fattn_alloc_size(int device, const ggml_tensor * dst) {
    const d2_fattn_shape s = d2_fattn_shape_of(dst);
    size_t size = d2_pad(ggml_nbytes(dst));
    if (s.n_tokens == 1) {
        int chunk_rows = 0;
        int n_chunks   = 0;
        d2_fattn_chunking(ggml_cuda_info().devices[device].nsm, ggml_cuda_info().devices[device].smpbo, s, chunk_rows, n_chunks);
        if (n_chunks > 1) {
            size += d2_pad((size_t) s.n_head*n_chunks*s.hd*sizeof(float));
            size += d2_pad((size_t) s.n_head*n_chunks*sizeof(float2));
        }
    } else {
        const int G = s.n_head/s.n_head_kv;
        size += 2*d2_pad((size_t) s.n_kv*s.hd*sizeof(half));
        size += d2_pad((size_t) s.hd*G*s.n_tokens*sizeof(float));
    }
    return size;
}

template <int HD>
static void d2_launch_decode(const d2_fattn_args & a, const d2_fattn_shape & s, cudaStream_t stream) {
    const dim3   grid(s.n_head_kv, a.n_chunks, 1);
#define D2_CASE(PK, PV)                                                                           \
    if (s.pk == PK && s.pv == PV) {                                                               \
        const size_t smem = d2_fattn_smem_layout<HD, PK, PV>::bytes;                              \
        if (smem > 48*1024) { /* per device: cheap, so set on every launch */                    \
            CUDA_CHECK(cudaFuncSetAttribute(d2_fattn_decode<HD, PK, PV>,                          \
                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem));                    \
        }                                                                                         \
        d2_fattn_decode<HD, PK, PV><<<grid, D2_FA_THREADS, smem, stream>>>(a);                    \
        CUDA_CHECK(cudaGetLastError());                                                           \
        return;                                                                                   \
    }
    D2_CASE( 8,  8) D2_CASE( 8, 16) D2_CASE( 8, 32) D2_CASE( 8, 0)
    D2_CASE(16,  8) D2_CASE(16, 16) D2_CASE(16, 32) D2_CASE(16, 0)
    D2_CASE(32,  8) D2_CASE(32, 16) D2_CASE(32, 32) D2_CASE(32, 0)
    D2_CASE( 0,  8) D2_CASE( 0, 16) D2_CASE( 0, 32)
#undef D2_CASE
    GGML_ABORT("fraqtl: no D2 decode kernel for K p%d / V p%d", s.pk, s.pv);
}

// one query token: the split-KV kernel, then the log-sum-exp merge of its chunks
static void d2_fattn_decode_launch(const d2_fattn_args & a, const d2_fattn_shape & s, cudaStream_t stream) {
    switch (s.hd) {
        case  64: d2_launch_decode< 64>(a, s, stream); break;
        case 128: d2_launch_decode<128>(a, s, stream); break;
        case 256: d2_launch_decode<256>(a, s, stream); break;
        default: GGML_ABORT("fraqtl: head size %d", s.hd);
    }
    if (a.n_chunks > 1) {
        switch (s.hd) {
            case  64: d2_fattn_combine< 64><<<s.n_head,  64, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_chunks); break;
            case 128: d2_fattn_combine<128><<<s.n_head, 128, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_chunks); break;
            case 256: d2_fattn_combine<256><<<s.n_head, 256, 0, stream>>>(a.part_o, a.part_ml, a.dst, a.n_chunks); break;
        }
        CUDA_CHECK(cudaGetLastError());
    }
}

template <int HD>
static void d2_launch_to_f16(const int p, const uint8_t * src, const int32_t * rows, const half * exact, half * out,
        const d2_fattn_shape & s, const int h, const int64_t s1, const int64_t s2, const int64_t e_s1, cudaStream_t stream) {
    const int64_t n      = (int64_t) s.n_kv*(HD/8);
    const int     blocks = (int) ((n + 255)/256);
    switch (p) {
        case  0: d2_head_to_f16<HD,  0><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, s1, s2, e_s1); break;
        case  8: d2_head_to_f16<HD,  8><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, s1, s2, e_s1); break;
        case 16: d2_head_to_f16<HD, 16><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, s1, s2, e_s1); break;
        case 32: d2_head_to_f16<HD, 32><<<blocks, 256, 0, stream>>>(src, rows, exact, out, s.n_kv, h, s1, s2, e_s1); break;
        default: GGML_ABORT("fraqtl: no D2 dequantizer for p%d", p);
    }
    CUDA_CHECK(cudaGetLastError());
}

static void d2_fattn_many(ggml_backend_cuda_context & ctx, ggml_tensor * dst, const d2_fattn_shape & s) {
    const auto [Q, K, V, mask, ek, ev, rows] = d2_fattn_srcs_of(dst);
    GGML_UNUSED(mask);
    cudaStream_t stream = ctx.stream();
    const int G = s.n_head/s.n_head_kv;

    char * extra = (char *) dst->data + d2_pad(ggml_nbytes(dst));
    half  * k16  = (half *) extra;
    half  * v16  = (half *) (extra + d2_pad((size_t) s.n_kv*s.hd*sizeof(half)));
    float * part = (float *) (extra + 2*d2_pad((size_t) s.n_kv*s.hd*sizeof(half)));

    // one KV head: Q of its G query heads, f16 K/V of that head, a dense output for them
    ggml_tensor q_h = *Q;
    q_h.ne[2] = G;
    q_h.view_src = nullptr;

    ggml_tensor k_h = *K;
    k_h.type = GGML_TYPE_F16;
    k_h.ne[0] = s.hd; k_h.ne[1] = s.n_kv; k_h.ne[2] = 1; k_h.ne[3] = 1;
    k_h.nb[0] = sizeof(half); k_h.nb[1] = s.hd*sizeof(half);
    k_h.nb[2] = k_h.nb[1]*s.n_kv; k_h.nb[3] = k_h.nb[2];
    k_h.view_src = nullptr;
    k_h.data = k16;
    ggml_tensor v_h = k_h;
    v_h.data = v16;

    ggml_tensor out_h = *dst;
    out_h.ne[1] = G;
    out_h.nb[2] = out_h.nb[1]*G;
    out_h.nb[3] = out_h.nb[2]*out_h.ne[2];
    out_h.data = part;
    out_h.src[0] = &q_h;
    out_h.src[1] = &k_h;
    out_h.src[2] = &v_h;
    out_h.src[5] = out_h.src[6] = out_h.src[7] = nullptr;

    const int32_t * rows_d = rows ? (const int32_t *) rows->data : nullptr;
    const int64_t n_out = (int64_t) s.hd*G*s.n_tokens;
    for (int h = 0; h < s.n_head_kv; ++h) {
        q_h.data = (char *) Q->data + (size_t) h*G*Q->nb[2];
#define D2_TO_F16(HD)                                                                                          \
        d2_launch_to_f16<HD>(s.pk, (const uint8_t *) K->data, rows_d, ek ? (const half *) ek->data : nullptr,  \
                k16, s, h, K->nb[1], K->nb[2], ek ? ek->nb[1]/sizeof(half) : 0, stream);                      \
        d2_launch_to_f16<HD>(s.pv, (const uint8_t *) V->data, rows_d, ev ? (const half *) ev->data : nullptr,  \
                v16, s, h, V->nb[1], V->nb[2], ev ? ev->nb[1]/sizeof(half) : 0, stream);
        switch (s.hd) {
            case  64: D2_TO_F16(64);  break;
            case 128: D2_TO_F16(128); break;
            case 256: D2_TO_F16(256); break;
            default: GGML_ABORT("fraqtl: head size %d", s.hd);
        }
#undef D2_TO_F16
        ggml_cuda_flash_attn_ext(ctx, &out_h);
        d2_scatter_heads<<<(int) ((n_out + 255)/256), 256, 0, stream>>>(part, (float *) dst->data, s.hd, G, s.n_head, h, n_out);
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

    d2_fattn_args a = {};
    a.q    = (const float *) Q->data;
    a.k    = (const uint8_t *) K->data;
    a.v    = (const uint8_t *) V->data;
    a.mask = (const half *) mask->data;
    a.ek   = ek ? (const half *) ek->data : nullptr;
    a.ev   = ev ? (const half *) ev->data : nullptr;
    a.rows = rows ? (const int32_t *) rows->data : nullptr;
    a.dst  = (float *) dst->data;
    a.n_kv = s.n_kv;
    a.gqa  = s.n_head/s.n_head_kv;
    memcpy(&a.scale, (const float *) dst->op_params + 0, sizeof(float));
    a.q_s2  = Q->nb[2]/sizeof(float);
    a.k_s1  = K->nb[1];
    a.k_s2  = K->nb[2];
    a.v_s1  = V->nb[1];
    a.v_s2  = V->nb[2];
    a.ek_s1 = ek ? ek->nb[1]/sizeof(half) : 0;
    a.ev_s1 = ev ? ev->nb[1]/sizeof(half) : 0;
    d2_fattn_chunking(ggml_cuda_info().devices[ctx.device].nsm, ggml_cuda_info().devices[ctx.device].smpbo, s, a.chunk_rows, a.n_chunks);
    if (a.n_chunks > 1) {
        char * extra = (char *) dst->data + d2_pad(ggml_nbytes(dst));
        a.part_o  = (float *) extra;
        a.part_ml = (float2 *) (extra + d2_pad((size_t) s.n_head*a.n_chunks*s.hd*sizeof(float)));
    }

    d2_fattn_decode_launch(a, s, ctx.stream());
}
