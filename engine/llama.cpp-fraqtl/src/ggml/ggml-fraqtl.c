// fraqtl: D2 KV-cache block types for ggml - reference quantizer, dequantizer and dot product.
#include "ggml-fraqtl.h"

#include "ggml-impl.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define D2_X86_SIMD 1
#endif

int ggml_d2_protected(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_D2_P8:  return 8;
        case GGML_TYPE_D2_P16: return 16;
        case GGML_TYPE_D2_P32: return 32;
        default:               return 0;
    }
}

bool ggml_is_d2(enum ggml_type type) {
    return ggml_d2_protected(type) > 0;
}

int ggml_d2b2_protected(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_D2_P8B2:  return 8;
        case GGML_TYPE_D2_P16B2: return 16;
        case GGML_TYPE_D2_P32B2: return 32;
        default:                 return 0;
    }
}

bool ggml_is_d2b2(enum ggml_type type) {
    return ggml_d2b2_protected(type) > 0;
}

int ggml_d2i8_protected(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_D2_P8I8:  return 8;
        case GGML_TYPE_D2_P16I8: return 16;
        case GGML_TYPE_D2_P32I8: return 32;
        default:                 return 0;
    }
}

bool ggml_is_d2i8(enum ggml_type type) {
    return ggml_d2i8_protected(type) > 0;
}

static inline size_t d2_block_size(int p) {
    return 2 + (size_t) p*2 + (size_t) (QK_D2 - p)*3/8;
}

static inline ggml_fp16_t d2_load_half(const uint8_t * src) {
    ggml_fp16_t h;
    memcpy(&h, src, sizeof(h)); // blocks are byte-aligned: never dereference as ggml_fp16_t
    return h;
}

static inline void d2_store_half(uint8_t * dst, float v) {
    const ggml_fp16_t h = GGML_FP32_TO_FP16(v);
    memcpy(dst, &h, sizeof(h));
}

// the 3-bit code of t at 1/scale inv: clamp(round(t*inv), -4, 3). fmaxf/fminf also give a NaN
// a valid code (-4, as the CUDA kernel does): casting NaN to int is undefined behaviour.
static inline float d2_code(float t, float inv) {
    return fminf(fmaxf(nearbyintf(t*inv), -4.0f), 3.0f);
}

// a tail group's eight 3-bit codes (three bytes, code j at bit 3j)
static inline uint32_t d2_group_bits(const uint8_t * qs) {
    return (uint32_t) qs[0] | ((uint32_t) qs[1] << 8) | ((uint32_t) qs[2] << 16);
}

// squared error of quantizing t[0..n) with scale s
static float d2_tail_error(const float * t, int n, float s) {
    const float inv = 1.0f/s;
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float q = d2_code(t[i], inv);
        const float e = t[i] - q*s;
        err += e*e;
    }
    return err;
}

// the 3-bit tail's scale: all 8 levels (the largest positive value maps to +3, the largest
// negative one to -4), then a short search below that no-clipping scale
static float d2_tail_scale(const float * tail, int nt) {
    float max_pos = 0.0f;
    float max_neg = 0.0f;
    for (int i = 0; i < nt; ++i) {
        max_pos = fmaxf(max_pos,  tail[i]);
        max_neg = fmaxf(max_neg, -tail[i]);
    }
    float scale = fmaxf(max_pos/3.0f, max_neg/4.0f);

    if (scale > 0.0f) {
        // a short search below the no-clipping scale lowers the error of peaked tails
        float best_err = d2_tail_error(tail, nt, GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(scale)));
        float best     = scale;
        for (int k = 1; k <= 6; ++k) {
            const float cand = scale*(1.0f - 0.05f*k);
            const float s16  = GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(cand));
            if (s16 <= 0.0f) {
                break;
            }
            const float err = d2_tail_error(tail, nt, s16);
            if (err < best_err) {
                best_err = err;
                best     = cand;
            }
        }
        scale = best;
    }
    return scale;
}

// 3-bit codes of tail[0..nt) at the stored scale s, eight to three bytes
static void d2_pack_tail(const float * tail, int nt, float s, uint8_t * qs) {
    const float inv = s > 0.0f ? 1.0f/s : 0.0f;
    for (int g = 0; g < nt/8; ++g) {
        uint32_t bits = 0;
        for (int j = 0; j < 8; ++j) {
            bits |= (uint32_t) ((int) d2_code(tail[8*g + j], inv) + 4) << (3*j);
        }
        qs[3*g + 0] = (uint8_t) (bits      );
        qs[3*g + 1] = (uint8_t) (bits >>  8);
        qs[3*g + 2] = (uint8_t) (bits >> 16);
    }
}

static void d2_unpack_tail(const uint8_t * qs, int nt, float s, float * tail) {
    for (int g = 0; g < nt/8; ++g) {
        const uint32_t bits = d2_group_bits(qs + 3*g);
        for (int j = 0; j < 8; ++j) {
            tail[8*g + j] = (float) ((int) ((bits >> (3*j)) & 7) - 4)*s;
        }
    }
}

// sum of code*y over the tail (times the scale: the caller's)
static float d2_dot_tail(const uint8_t * qs, int nt, const float * yt) {
    float sum = 0.0f;
    for (int g = 0; g < nt/8; ++g) {
        const uint32_t bits = d2_group_bits(qs + 3*g);
        for (int j = 0; j < 8; ++j) {
            sum += (float) ((int) ((bits >> (3*j)) & 7) - 4)*yt[8*g + j];
        }
    }
    return sum;
}

#ifdef D2_X86_SIMD
// AVX2 forms of the block's dot product and dequantization (attention on the CPU calls them for
// every cached row and query head): eight codes at once by variable shifts, the protected
// coefficients by F16C (d2_p*) or by widening eight int8 codes (d2_p*i8). Same values as the
// scalar forms; the dot's sums are added in another order.
#define D2_SIMD __attribute__((target("avx2,fma,f16c")))

D2_SIMD static inline __m256 d2_codes8(const uint8_t * qs) {
    const __m256i shifts = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    const __m256i c = _mm256_srlv_epi32(_mm256_set1_epi32((int) d2_group_bits(qs)), shifts);
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(c, _mm256_set1_epi32(7)), _mm256_set1_epi32(4)));
}

D2_SIMD static float d2_dot_block_avx2(const uint8_t * x, const float * y, int p) {
    const uint8_t * ph = x + 2;
    const uint8_t * qs = ph + 2*p;
    __m256 acc_p = _mm256_setzero_ps();
    for (int i = 0; i < p; i += 8) {
        const __m256 h = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (ph + 2*i)));
        acc_p = _mm256_fmadd_ps(h, _mm256_loadu_ps(y + i), acc_p);
    }
    __m256 acc_t = _mm256_setzero_ps();
    for (int g = 0; g < (QK_D2 - p)/8; ++g) {
        acc_t = _mm256_fmadd_ps(d2_codes8(qs + 3*g), _mm256_loadu_ps(y + p + 8*g), acc_t);
    }
    const __m256 acc = _mm256_fmadd_ps(acc_t, _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x))), acc_p);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

D2_SIMD static void d2_dequantize_block_avx2(const uint8_t * x, float * y, int p) {
    const uint8_t * ph = x + 2;
    const uint8_t * qs = ph + 2*p;
    for (int i = 0; i < p; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (ph + 2*i))));
    }
    const __m256 s = _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x)));
    for (int g = 0; g < (QK_D2 - p)/8; ++g) {
        _mm256_storeu_ps(y + p + 8*g, _mm256_mul_ps(d2_codes8(qs + 3*g), s));
    }
}

// the int8 protected part of a d2i8 block (codes at pq, scale dp) times y, eight at a time
D2_SIMD static inline __m256 d2i8_protected8(const int8_t * pq, int i) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) (pq + i))));
}

D2_SIMD static float d2i8_dot_block_avx2(const uint8_t * x, const float * y, int p) {
    const int8_t  * pq = (const int8_t *) (x + 4);
    const uint8_t * qs = x + 4 + p;
    __m256 acc_p = _mm256_setzero_ps();
    for (int i = 0; i < p; i += 8) {
        acc_p = _mm256_fmadd_ps(d2i8_protected8(pq, i), _mm256_loadu_ps(y + i), acc_p);
    }
    __m256 acc_t = _mm256_setzero_ps();
    for (int g = 0; g < (QK_D2 - p)/8; ++g) {
        acc_t = _mm256_fmadd_ps(d2_codes8(qs + 3*g), _mm256_loadu_ps(y + p + 8*g), acc_t);
    }
    const __m256 acc = _mm256_fmadd_ps(acc_t, _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x))),
                                       _mm256_mul_ps(acc_p, _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x + 2)))));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

D2_SIMD static void d2i8_dequantize_block_avx2(const uint8_t * x, float * y, int p) {
    const int8_t  * pq = (const int8_t *) (x + 4);
    const uint8_t * qs = x + 4 + p;
    const __m256 dp = _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x + 2)));
    for (int i = 0; i < p; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_mul_ps(d2i8_protected8(pq, i), dp));
    }
    const __m256 s = _mm256_set1_ps(GGML_FP16_TO_FP32(d2_load_half(x)));
    for (int g = 0; g < (QK_D2 - p)/8; ++g) {
        _mm256_storeu_ps(y + p + 8*g, _mm256_mul_ps(d2_codes8(qs + 3*g), s));
    }
}

// chosen once: the CPU running this may lack AVX2 (the library is built for any x86-64);
// FRAQTL_D2_NO_SIMD=1 keeps the scalar forms (the tests compare the two)
static int d2_simd_state = -1;

static inline bool d2_use_simd(void) {
    if (d2_simd_state < 0) {
        const char * off = getenv("FRAQTL_D2_NO_SIMD");
        __builtin_cpu_init();
        d2_simd_state = !(off && off[0] == '1') && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
    }
    return d2_simd_state > 0;
}
#endif

static void d2_quantize_block(const float * x, uint8_t * y, int p) {
    const int nt = QK_D2 - p;
    d2_store_half(y, d2_tail_scale(x + p, nt));
    uint8_t * ph = y + 2;
    for (int i = 0; i < p; ++i) {
        d2_store_half(ph + 2*i, x[i]);
    }
    d2_pack_tail(x + p, nt, GGML_FP16_TO_FP32(d2_load_half(y)), ph + 2*p);
}

static void d2_dequantize_block(const uint8_t * x, float * y, int p) {
#ifdef D2_X86_SIMD
    if (d2_use_simd()) {
        d2_dequantize_block_avx2(x, y, p);
        return;
    }
#endif
    const uint8_t * ph = x + 2;
    for (int i = 0; i < p; ++i) {
        y[i] = GGML_FP16_TO_FP32(d2_load_half(ph + 2*i));
    }
    d2_unpack_tail(ph + 2*p, QK_D2 - p, GGML_FP16_TO_FP32(d2_load_half(x)), y + p);
}

static float d2_dot_block(const uint8_t * x, const float * y, int p) {
#ifdef D2_X86_SIMD
    if (d2_use_simd()) {
        return d2_dot_block_avx2(x, y, p);
    }
#endif
    const uint8_t * ph = x + 2;
    float sum_p = 0.0f;
    for (int i = 0; i < p; ++i) {
        sum_p += GGML_FP16_TO_FP32(d2_load_half(ph + 2*i))*y[i];
    }
    return sum_p + GGML_FP16_TO_FP32(d2_load_half(x))*d2_dot_tail(ph + 2*p, QK_D2 - p, y + p);
}

// the row functions ggml calls for a block family FAM (d2, d2b2, d2i8: its FAM##_block_size and
// FAM##_quantize/dequantize/dot_block) with P protected coefficients; SUF names the type (d2_p8SUF)
#define D2_ROW_FUNCS(FAM, P, SUF)                                                                      \
void quantize_row_d2_p##P##SUF##_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT vy, int64_t k) { \
    GGML_ASSERT(k % QK_D2 == 0);                                                                       \
    uint8_t * y = (uint8_t *) vy;                                                                      \
    for (int64_t b = 0; b < k/QK_D2; ++b) {                                                            \
        FAM##_quantize_block(x + b*QK_D2, y + b*FAM##_block_size(P), P);                               \
    }                                                                                                  \
}                                                                                                      \
void dequantize_row_d2_p##P##SUF(const void * GGML_RESTRICT vx, float * GGML_RESTRICT y, int64_t k) {  \
    GGML_ASSERT(k % QK_D2 == 0);                                                                       \
    const uint8_t * x = (const uint8_t *) vx;                                                          \
    for (int64_t b = 0; b < k/QK_D2; ++b) {                                                            \
        FAM##_dequantize_block(x + b*FAM##_block_size(P), y + b*QK_D2, P);                             \
    }                                                                                                  \
}                                                                                                      \
void ggml_vec_dot_d2_p##P##SUF##_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, \
        size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {                                \
    assert(nrc == 1);                                                                                  \
    GGML_UNUSED(bs); GGML_UNUSED(bx); GGML_UNUSED(by); GGML_UNUSED(nrc);                               \
    const uint8_t * x = (const uint8_t *) vx;                                                          \
    const float   * y = (const float *) vy;                                                            \
    float sum = 0.0f;                                                                                  \
    for (int b = 0; b < n/QK_D2; ++b) {                                                                \
        sum += FAM##_dot_block(x + b*FAM##_block_size(P), y + b*QK_D2, P);                             \
    }                                                                                                  \
    *s = sum;                                                                                          \
}

D2_ROW_FUNCS(d2,  8, )
D2_ROW_FUNCS(d2, 16, )
D2_ROW_FUNCS(d2, 32, )

// ---------------------------------------------------------------------------------------
// 2-bit tails (D2-lite): levels (2c - 3)*d for c in [0, 3], four codes to a byte

static inline size_t d2b2_block_size(int p) {
    return 2 + (size_t) p*2 + (size_t) (QK_D2 - p)/4;
}

// the 2-bit code of t at 1/scale inv: the nearest of -3, -1, 1, 3 (in units of d); a NaN gets
// code 0 (fmaxf/fminf: casting NaN to int is undefined behaviour)
static inline int d2b2_code(float t, float inv) {
    return (int) fminf(fmaxf(nearbyintf(0.5f*(t*inv + 3.0f)), 0.0f), 3.0f);
}

static float d2b2_tail_error(const float * t, int n, float d) {
    const float inv = 1.0f/d;
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float e = t[i] - (float) (2*d2b2_code(t[i], inv) - 3)*d;
        err += e*e;
    }
    return err;
}

// the scale with the smallest squared error: a grid from the no-clipping scale (largest |t| at
// level 3) down to 0.4 of it - a 4-level Gaussian tail wants about 0.6 - then one least-squares
// refit of the scale to the chosen codes; every candidate is compared at its fp16 value
static float d2b2_scale(const float * t, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        amax = fmaxf(amax, fabsf(t[i]));
    }
    const float d0 = amax/3.0f;
    if (!(d0 > 0.0f)) {
        return 0.0f;
    }
    float best     = GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(d0));
    float best_err = d2b2_tail_error(t, n, best);
    for (int k = 1; k <= 15; ++k) {
        const float d16 = GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(d0*(1.0f - 0.04f*k)));
        if (!(d16 > 0.0f)) {
            break;
        }
        const float err = d2b2_tail_error(t, n, d16);
        if (err < best_err) {
            best_err = err;
            best     = d16;
        }
    }
    const float inv = 1.0f/best;
    float tv = 0.0f;
    float vv = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float v = (float) (2*d2b2_code(t[i], inv) - 3);
        if (!isnan(t[i])) {
            tv += t[i]*v;
        }
        vv += v*v;
    }
    const float d16 = GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(tv/vv));
    if (d16 > 0.0f && isfinite(d16) && d2b2_tail_error(t, n, d16) < best_err) {
        best = d16;
    }
    return best;
}

static void d2b2_quantize_block(const float * x, uint8_t * y, int p) {
    const int     nt   = QK_D2 - p;
    const float * tail = x + p;

    d2_store_half(y, d2b2_scale(tail, nt));
    const float d   = GGML_FP16_TO_FP32(d2_load_half(y));
    const float inv = d > 0.0f ? 1.0f/d : 0.0f;

    uint8_t * ph = y + 2;
    for (int i = 0; i < p; ++i) {
        d2_store_half(ph + 2*i, x[i]);
    }

    uint8_t * qs = ph + 2*p;
    for (int g = 0; g < nt/4; ++g) {
        uint8_t bits = 0;
        for (int j = 0; j < 4; ++j) {
            bits |= (uint8_t) (d2b2_code(tail[4*g + j], inv) << (2*j));
        }
        qs[g] = bits;
    }
}

static void d2b2_dequantize_block(const uint8_t * x, float * y, int p) {
    const float     d  = GGML_FP16_TO_FP32(d2_load_half(x));
    const uint8_t * ph = x + 2;
    for (int i = 0; i < p; ++i) {
        y[i] = GGML_FP16_TO_FP32(d2_load_half(ph + 2*i));
    }
    const uint8_t * qs = ph + 2*p;
    float * tail = y + p;
    for (int g = 0; g < (QK_D2 - p)/4; ++g) {
        for (int j = 0; j < 4; ++j) {
            tail[4*g + j] = (float) (2*((qs[g] >> (2*j)) & 3) - 3)*d;
        }
    }
}

static float d2b2_dot_block(const uint8_t * x, const float * y, int p) {
    const float     d  = GGML_FP16_TO_FP32(d2_load_half(x));
    const uint8_t * ph = x + 2;
    float sum_p = 0.0f;
    for (int i = 0; i < p; ++i) {
        sum_p += GGML_FP16_TO_FP32(d2_load_half(ph + 2*i))*y[i];
    }
    const uint8_t * qs = ph + 2*p;
    const float   * yt = y + p;
    float sum_t = 0.0f;
    for (int g = 0; g < (QK_D2 - p)/4; ++g) {
        for (int j = 0; j < 4; ++j) {
            sum_t += (float) (2*((qs[g] >> (2*j)) & 3) - 3)*yt[4*g + j];
        }
    }
    return sum_p + d*sum_t;
}

D2_ROW_FUNCS(d2b2,  8, b2)
D2_ROW_FUNCS(d2b2, 16, b2)
D2_ROW_FUNCS(d2b2, 32, b2)

// ---------------------------------------------------------------------------------------
// int8 protected coefficients (D2-lite): the 3-bit tail of d2_p*, the protected part as int8
// codes with their own fp16 scale

static inline size_t d2i8_block_size(int p) {
    return 4 + (size_t) p + (size_t) (QK_D2 - p)*3/8;
}

// the int8 code of v at 1/scale inv: clamp(round(v*inv), -127, 127); a NaN gets -127
static inline int8_t d2i8_code(float v, float inv) {
    return (int8_t) fminf(fmaxf(nearbyintf(v*inv), -127.0f), 127.0f);
}

static void d2i8_quantize_block(const float * x, uint8_t * y, int p) {
    const int nt = QK_D2 - p;
    d2_store_half(y, d2_tail_scale(x + p, nt));

    float amax = 0.0f;
    for (int i = 0; i < p; ++i) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    d2_store_half(y + 2, amax/127.0f);
    const float dp  = GGML_FP16_TO_FP32(d2_load_half(y + 2));
    const float inv = dp > 0.0f ? 1.0f/dp : 0.0f;
    int8_t * pq = (int8_t *) (y + 4);
    for (int i = 0; i < p; ++i) {
        pq[i] = d2i8_code(x[i], inv);
    }
    d2_pack_tail(x + p, nt, GGML_FP16_TO_FP32(d2_load_half(y)), y + 4 + p);
}

static void d2i8_dequantize_block(const uint8_t * x, float * y, int p) {
#ifdef D2_X86_SIMD
    if (d2_use_simd()) {
        d2i8_dequantize_block_avx2(x, y, p);
        return;
    }
#endif
    const float    dp = GGML_FP16_TO_FP32(d2_load_half(x + 2));
    const int8_t * pq = (const int8_t *) (x + 4);
    for (int i = 0; i < p; ++i) {
        y[i] = (float) pq[i]*dp;
    }
    d2_unpack_tail(x + 4 + p, QK_D2 - p, GGML_FP16_TO_FP32(d2_load_half(x)), y + p);
}

static float d2i8_dot_block(const uint8_t * x, const float * y, int p) {
#ifdef D2_X86_SIMD
    if (d2_use_simd()) {
        return d2i8_dot_block_avx2(x, y, p);
    }
#endif
    const int8_t * pq = (const int8_t *) (x + 4);
    float sum_p = 0.0f;
    for (int i = 0; i < p; ++i) {
        sum_p += (float) pq[i]*y[i];
    }
    return GGML_FP16_TO_FP32(d2_load_half(x + 2))*sum_p +
           GGML_FP16_TO_FP32(d2_load_half(x))*d2_dot_tail(x + 4 + p, QK_D2 - p, y + p);
}

D2_ROW_FUNCS(d2i8,  8, i8)
D2_ROW_FUNCS(d2i8, 16, i8)
D2_ROW_FUNCS(d2i8, 32, i8)

bool ggml_d2_validate_row(enum ggml_type type, const void * data, size_t nbytes) {
    if (ggml_is_d2i8(type)) {
        // two fp16 scales, then int8 and packed codes: only the scales can be non-finite
        const size_t bsz = d2i8_block_size(ggml_d2i8_protected(type));
        if (nbytes % bsz != 0) {
            return false;
        }
        for (size_t b = 0; b < nbytes/bsz; ++b) {
            const uint8_t * blk = (const uint8_t *) data + b*bsz;
            if (!isfinite(GGML_FP16_TO_FP32(d2_load_half(blk))) || !isfinite(GGML_FP16_TO_FP32(d2_load_half(blk + 2)))) {
                return false;
            }
        }
        return true;
    }
    const int p = ggml_is_d2b2(type) ? ggml_d2b2_protected(type) : ggml_d2_protected(type);
    if (p == 0) {
        return false;
    }
    const size_t bsz = ggml_is_d2b2(type) ? d2b2_block_size(p) : d2_block_size(p);
    if (nbytes % bsz != 0) {
        return false;
    }
    const uint8_t * x = (const uint8_t *) data;
    for (size_t b = 0; b < nbytes/bsz; ++b) {
        const uint8_t * blk = x + b*bsz;
        for (int i = 0; i <= p; ++i) {
            const float v = GGML_FP16_TO_FP32(d2_load_half(blk + 2*i));
            if (!isfinite(v)) {
                return false;
            }
        }
    }
    return true;
}
