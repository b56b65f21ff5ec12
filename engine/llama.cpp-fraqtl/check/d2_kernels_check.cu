// fraqtl: standalone GPU check of the D2 kernels against a CPU transliteration of the reference
// quantizer (ggml-fraqtl.c), without building llama.cpp. Build on a GPU host, from the patched
// tree's ggml/src/ggml-cuda folder (see bench/h200.sh phase kcheck):
//   nvcc -std=c++17 -arch=sm_90 -use_fast_math -I../../include -I.. -I. d2_kernels_check.cu \
//        -Xlinker --unresolved-symbols=ignore-all -o /tmp/d2check && /tmp/d2check
#include "ggml-fraqtl-cuda.cu"

#include <cstdio>
#include <random>
#include <vector>

static float h_r16(float x) { return __half2float(__float2half_rn(x)); }
static float h_code(float t, float inv) { return fminf(fmaxf(rintf(t*inv), -4.0f), 3.0f); }
static void h_sth(uint8_t * d, float v) { const __half h = __float2half_rn(v); uint16_t b; memcpy(&b, &h, 2); d[0] = b & 0xFF; d[1] = b >> 8; }
static float h_ldh(const uint8_t * p) { const uint16_t b = p[0] | (p[1] << 8); __half h; memcpy(&h, &b, 2); return __half2float(h); }

template <int P> static void h_quant(const float * x, uint8_t * y) {
    constexpr int NT = 64 - P;
    float tail[NT]; float mp = 0, mn = 0;
    for (int i = 0; i < NT; i++) { tail[i] = x[P + i]; mp = fmaxf(mp, tail[i]); mn = fmaxf(mn, -tail[i]); }
    auto err = [&](float s) { float inv = 1.0f/s, e = 0; for (int i = 0; i < NT; i++) { float d = tail[i] - h_code(tail[i], inv)*s; e += d*d; } return e; };
    float scale = fmaxf(mp/3.0f, mn/4.0f);
    if (scale > 0) {
        float be = err(h_r16(scale)), best = scale;
        for (int k = 1; k <= 6; k++) { float c = scale*(1.0f - 0.05f*(float) k); float s16 = h_r16(c); if (s16 <= 0) break; float e = err(s16); if (e < be) { be = e; best = c; } }
        scale = best;
    }
    h_sth(y, scale); const float s = h_r16(scale); const float inv = s > 0 ? 1.0f/s : 0;
    for (int i = 0; i < P; i++) h_sth(y + 2 + 2*i, x[i]);
    uint8_t * qs = y + 2 + 2*P;
    for (int g = 0; g < NT/8; g++) { uint32_t b = 0; for (int j = 0; j < 8; j++) b |= (uint32_t) ((int) h_code(tail[8*g + j], inv) + 4) << (3*j); qs[3*g] = b; qs[3*g + 1] = b >> 8; qs[3*g + 2] = b >> 16; }
}

template <int P> static float h_deq(const uint8_t * blk, int e) {
    if (e < P) return h_ldh(blk + 2 + 2*e);
    const int t = e - P; const uint8_t * qs = blk + 2 + 2*P + 3*(t/8);
    const uint32_t b = qs[0] | (qs[1] << 8) | (qs[2] << 16);
    return (float) ((int) ((b >> (3*(t % 8))) & 7) - 4)*h_ldh(blk);
}

// the scale search of one block on the device: [0] no-clip scale, then (s16, err) for k = 0..6
template <int P> static __global__ void d2_debug_search(const float * x, float * out) {
    constexpr int NT = QK_D2 - P;
    float tail[NT];
    float mp = 0.0f, mn = 0.0f;
    for (int i = 0; i < NT; ++i) { tail[i] = x[P + i]; mp = fmaxf(mp, tail[i]); mn = fmaxf(mn, -tail[i]); }
    const float scale = fmaxf(__fdiv_rn(mp, 3.0f), __fdiv_rn(mn, 4.0f));
    out[0] = scale;
    for (int k = 0; k <= 6; ++k) {
        const float s16 = d2_fp16_round(__fmul_rn(scale, __fsub_rn(1.0f, __fmul_rn(0.05f, (float) k))));
        out[1 + 2*k] = s16;
        out[2 + 2*k] = d2_tail_error<NT>(tail, s16);
    }
}

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %d\n", cudaGetErrorString(e_), __LINE__); return 1; } } while (0)

template <int HD, int P> static int check(int n_head, int n_rows) {
    const int ne0 = HD*n_head;              // one cache row: every KV head
    const int bpr = ne0/64;                 // blocks per row
    const size_t row_bytes = (size_t) bpr*d2_block_bytes(P);
    std::mt19937 rng(7); std::normal_distribution<float> nd(0, 1);
    std::vector<float> x((size_t) ne0*n_rows);
    for (auto & v : x) v = nd(rng)*((rng() % 4) ? 1.0f : 40.0f);
    std::vector<int64_t> idx(n_rows);
    for (int i = 0; i < n_rows; i++) idx[i] = (i*7 + 3) % n_rows; // a permutation
    std::vector<uint8_t> want(row_bytes*n_rows);
    for (int i = 0; i < n_rows; i++) for (int b = 0; b < bpr; b++)
        h_quant<P>(x.data() + (size_t) i*ne0 + 64*b, want.data() + idx[i]*row_bytes + b*d2_block_bytes(P));

    float * dx; int64_t * didx; uint8_t * dy; half * dh;
    CK(cudaMalloc(&dx, x.size()*4)); CK(cudaMalloc(&didx, n_rows*8)); CK(cudaMalloc(&dy, want.size() + 64));
    CK(cudaMalloc(&dh, (size_t) n_rows*HD*2));
    CK(cudaMemcpy(dx, x.data(), x.size()*4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(didx, idx.data(), n_rows*8, cudaMemcpyHostToDevice));
    CK(cudaMemset(dy, 0xAB, want.size() + 64));
    const int64_t n_blocks = (int64_t) bpr*n_rows;
    d2_set_rows<P, int64_t><<<(n_blocks + 63)/64, 64>>>((const char *) dx, didx, (char *) dy, n_blocks, bpr, n_rows, 1,
        (int64_t) ne0*4, (int64_t) ne0*4*n_rows, (int64_t) ne0*4*n_rows, 8, 8*n_rows, 8*n_rows, 1, 1,
        (int64_t) row_bytes, (int64_t) row_bytes*n_rows, (int64_t) row_bytes*n_rows);
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    std::vector<uint8_t> got(want.size());
    CK(cudaMemcpy(got.data(), dy, got.size(), cudaMemcpyDeviceToHost));
    size_t diff = 0, first = SIZE_MAX;
    for (size_t i = 0; i < got.size(); i++) if (got[i] != want[i]) { diff++; if (first == SIZE_MAX) first = i; }
    printf("HD %d P %d set_rows: %zu of %zu bytes differ (first at %zd)\n", HD, P, diff, got.size(), first == SIZE_MAX ? -1 : (ssize_t) first);
    if (first != SIZE_MAX && HD == 64 && P == 8) {
        // the first differing block: its input, the CPU bytes and the GPU bytes
        const size_t out_row = first / row_bytes, blk = (first % row_bytes) / d2_block_bytes(P);
        int in_row = 0;
        while (idx[in_row] != (int64_t) out_row) in_row++;
        printf("  block %zu of output row %zu (input row %d):\n  x:", blk, out_row, in_row);
        for (int e = 0; e < 64; e++) printf(" %.6g", x[(size_t) in_row*ne0 + 64*blk + e]);
        const uint8_t * w = want.data() + out_row*row_bytes + blk*d2_block_bytes(P);
        const uint8_t * g = got.data()  + out_row*row_bytes + blk*d2_block_bytes(P);
        printf("\n  cpu:"); for (int b = 0; b < d2_block_bytes(P); b++) printf(" %02x", w[b]);
        printf("\n  gpu:"); for (int b = 0; b < d2_block_bytes(P); b++) printf(" %02x", g[b]);
        printf("\n  scales cpu %.6g gpu %.6g\n", h_ldh(w), h_ldh(g));
        float * dout; float hout[16];
        CK(cudaMalloc(&dout, sizeof(hout)));
        d2_debug_search<P><<<1, 1>>>(dx + (size_t) in_row*ne0 + 64*blk, dout);
        CK(cudaGetLastError()); CK(cudaMemcpy(hout, dout, sizeof(hout), cudaMemcpyDeviceToHost));
        const float * xb = x.data() + (size_t) in_row*ne0 + 64*blk + P;
        float mp = 0, mn = 0;
        for (int i = 0; i < 64 - P; i++) { mp = fmaxf(mp, xb[i]); mn = fmaxf(mn, -xb[i]); }
        const float sc = fmaxf(mp/3.0f, mn/4.0f);
        printf("  no-clip scale cpu %.9g gpu %.9g\n", sc, hout[0]);
        for (int k = 0; k <= 6; k++) {
            const float s16 = h_r16(sc*(1.0f - 0.05f*(float) k)), inv = 1.0f/s16;
            float e = 0; for (int i = 0; i < 64 - P; i++) { float d = xb[i] - h_code(xb[i], inv)*s16; e += d*d; }
            printf("  k %d: cpu s16 %.9g err %.9g | gpu s16 %.9g err %.9g\n", k, s16, e, hout[1 + 2*k], hout[2 + 2*k]);
        }
        cudaFree(dout);
    }

    int bad = diff > got.size()/1000;
    for (int h = 0; h < n_head; h++) {
        const int64_t n = (int64_t) n_rows*(HD/8);
        d2_head_to_f16<HD, P><<<(int) ((n + 255)/256), 256>>>(dy, nullptr, nullptr, dh, n_rows, h, (int64_t) row_bytes,
            (int64_t) (HD/64)*d2_block_bytes(P), 0);
        CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        std::vector<half> deq((size_t) n_rows*HD);
        CK(cudaMemcpy(deq.data(), dh, deq.size()*2, cudaMemcpyDeviceToHost));
        double maxrel = 0;
        for (int r = 0; r < n_rows; r++) for (int e = 0; e < HD; e++) {
            const uint8_t * blk = want.data() + r*row_bytes + (size_t) (h*(HD/64) + e/64)*d2_block_bytes(P);
            const float ref = h_deq<P>(blk, e % 64);
            const float g = __half2float(deq[(size_t) r*HD + e]);
            maxrel = fmax(maxrel, fabs(g - ref)/fmax(fabs(ref), 1e-3));
        }
        if (h == 0 || maxrel > 1e-3) printf("HD %d P %d head %d dequant to f16: max rel diff %.3g\n", HD, P, h, maxrel);
        bad |= maxrel > 1e-3;
    }
    cudaFree(dx); cudaFree(didx); cudaFree(dy); cudaFree(dh);
    return bad;
}

int main() {
    int bad = 0;
    bad |= check< 64,  8>(3, 4096); bad |= check< 64, 16>(3, 4096); bad |= check< 64, 32>(3, 4096);
    bad |= check<128,  8>(8, 4096); bad |= check<128, 16>(8, 4096); bad |= check<128, 32>(8, 4096);
    printf(bad ? "D2 KERNEL CHECK FAILED\n" : "D2 kernel check passed\n");
    return bad;
}
