// fraqtl: standalone GPU check of the D2 kernels against a CPU transliteration of the reference
// quantizer (ggml-fraqtl.c), without building llama.cpp. Build on a GPU host, from the patched
// tree's ggml/src/ggml-cuda folder (see bench/h200.sh phase kcheck):
//   nvcc -std=c++17 -arch=sm_90 -use_fast_math -I../../include -I.. -I. d2_kernels_check.cu \
//        -Xlinker --unresolved-symbols=ignore-all -o /tmp/d2check && /tmp/d2check
#include "ggml-fraqtl-cuda.cu"

#include <cstdio>
#include <random>
#include <vector>
#include <string>
#include <cmath>

static float h_r16(float x) { return __half2float(__float2half_rn(x)); }
static float h_code(float t, float inv) { return fminf(fmaxf(rintf(t*inv), -4.0f), 3.0f); }
static void h_sth(uint8_t * d, float v) { const __half h = __float2half_rn(v); uint16_t b; memcpy(&b, &h, 2); d[0] = b & 0xFF; d[1] = b >> 8; }
static float h_ldh(const uint8_t * p) { const uint16_t b = p[0] | (p[1] << 8); __half h; memcpy(&h, &b, 2); return __half2float(h); }

// K: a block kind (P protected, P + D2_I8 for the int8-protected types)
template <int K> static void h_quant(const float * x, uint8_t * y) {
    constexpr int P = d2_np(K), NT = 64 - P;
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
    if (d2_is_i8(K)) { // ggml-fraqtl.c's d2i8_quantize_block
        float amax = 0; for (int i = 0; i < P; i++) amax = fmaxf(amax, fabsf(x[i]));
        h_sth(y + 2, amax/127.0f); const float dp = h_ldh(y + 2), ip = dp > 0 ? 1.0f/dp : 0;
        for (int i = 0; i < P; i++) y[4 + i] = (uint8_t) (int8_t) fminf(fmaxf(nearbyintf(x[i]*ip), -127.0f), 127.0f);
    } else {
        for (int i = 0; i < P; i++) h_sth(y + 2 + 2*i, x[i]);
    }
    uint8_t * qs = y + d2_tail_at(K);
    for (int g = 0; g < NT/8; g++) { uint32_t b = 0; for (int j = 0; j < 8; j++) b |= (uint32_t) ((int) h_code(tail[8*g + j], inv) + 4) << (3*j); qs[3*g] = b; qs[3*g + 1] = b >> 8; qs[3*g + 2] = b >> 16; }
}

template <int K> static float h_deq(const uint8_t * blk, int e) {
    constexpr int P = d2_np(K);
    if (e < P) return d2_is_i8(K) ? (float) (int8_t) blk[4 + e]*h_ldh(blk + 2) : h_ldh(blk + 2 + 2*e);
    const int t = e - P; const uint8_t * qs = blk + d2_tail_at(K) + 3*(t/8);
    const uint32_t b = qs[0] | (qs[1] << 8) | (qs[2] << 16);
    return (float) ((int) ((b >> (3*(t % 8))) & 7) - 4)*h_ldh(blk);
}

// the scale search of one block on the device: [0] no-clip scale, then (s16, err) for k = 0..6
template <int K> static __global__ void d2_debug_search(const float * x, float * out) {
    constexpr int P = d2_np(K), NT = QK_D2 - P;
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

// one block of 64 as the cache stores it: D2 bytes, or 64 halves when P == 0 (an f16 cache)
template <int P> static void h_store64(const float * x, uint8_t * y) {
    if constexpr (P == 0) { for (int e = 0; e < 64; e++) h_sth(y + 2*e, x[e]); } else { h_quant<P>(x, y); }
}
template <int P> static float h_load64(const uint8_t * blk, int e) {
    if constexpr (P == 0) { return h_ldh(blk + 2*e); } else { return h_deq<P>(blk, e); }
}
template <int P> static constexpr int h_bytes64() { return P == 0 ? 128 : d2_block_bytes(P); }

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
    d2_set_rows<P, int64_t><<<(n_blocks*D2_SR_LANES + D2_SR_THREADS - 1)/D2_SR_THREADS, D2_SR_THREADS>>>((const char *) dx, didx, (char *) dy, n_blocks, bpr, n_rows, 1,
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
        d2_head_to_f16<HD, P><<<(int) ((n + 255)/256), 256>>>(dy, nullptr, nullptr, dh, n_rows, h, 1, (int64_t) row_bytes,
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

// one query token against n_kv rows: the decode kernel (exact sink/window rows through the row
// map) against attention computed here in double from the CPU quantizer's bytes; then its time.
// The exact copies end with a scratch slot no cell maps to, holding values that would show.
template <int HD, int PK, int PV> static int check_decode(const int n_head_kv, const int G, const int n_kv, const bool timing,
        const int n_window = 128) {
    const int n_sink = 4, n_ex = n_sink + n_window + 1, n_head = n_head_kv*G, ne0 = HD*n_head_kv;
    const size_t kseg = d2_seg_bytes(HD, PK), vseg = d2_seg_bytes(HD, PV);
    std::mt19937 rng(11); std::normal_distribution<float> nd(0, 1);
    std::vector<float> xk((size_t) ne0*n_kv), xv((size_t) ne0*n_kv), q((size_t) HD*n_head);
    for (auto & v : xk) v = nd(rng)*((rng() % 8) ? 1.0f : 6.0f);
    for (auto & v : xv) v = nd(rng);
    for (auto & v : q)  v = nd(rng);
    std::vector<uint8_t> kb(kseg*n_head_kv*n_kv), vb(vseg*n_head_kv*n_kv);
    for (int r = 0; r < n_kv; r++) for (int b = 0; b < ne0/64; b++) {
        h_store64<PK>(xk.data() + (size_t) r*ne0 + 64*b, kb.data() + r*kseg*n_head_kv + b*h_bytes64<PK>());
        h_store64<PV>(xv.data() + (size_t) r*ne0 + 64*b, vb.data() + r*vseg*n_head_kv + b*h_bytes64<PV>());
    }
    std::vector<int32_t> rows(n_kv + n_ex, -1); // the row map, then the cell of each exact slot
    std::vector<half> ek((size_t) n_ex*ne0, __float2half_rn(50.0f)), ev((size_t) n_ex*ne0, __float2half_rn(1e4f));
    for (int r = 0; r < n_kv; r++) {
        const int slot = r < n_sink ? r : (r >= n_kv - n_window ? n_sink + r - (n_kv - n_window) : -1);
        rows[r] = slot < 0 ? r : n_kv + slot;
        if (slot >= 0) rows[n_kv + slot] = r;
        if (slot >= 0) for (int e = 0; e < ne0; e++) {
            ek[(size_t) slot*ne0 + e] = __float2half_rn(xk[(size_t) r*ne0 + e]);
            ev[(size_t) slot*ne0 + e] = __float2half_rn(xv[(size_t) r*ne0 + e]);
        }
    }
    const float scale = 1.0f/sqrtf((float) HD);
    // the reference, in double
    std::vector<double> want((size_t) n_head*HD, 0.0);
    double out_max = 0;
    for (int h = 0; h < n_head_kv && !timing; h++) for (int g = 0; g < G; g++) { // timing runs are too long to check here
        std::vector<double> sc(n_kv);
        double m = -1e300;
        for (int r = 0; r < n_kv; r++) {
            double d = 0;
            for (int e = 0; e < HD; e++) {
                const float kv = rows[r] >= n_kv ? __half2float(ek[(size_t) (rows[r] - n_kv)*ne0 + h*HD + e])
                    : h_load64<PK>(kb.data() + r*kseg*n_head_kv + h*kseg + (e/64)*h_bytes64<PK>(), e % 64);
                d += (double) q[(size_t) (h*G + g)*HD + e]*kv;
            }
            sc[r] = d*scale; m = fmax(m, sc[r]);
        }
        double den = 0; std::vector<double> o(HD, 0.0);
        for (int r = 0; r < n_kv; r++) {
            const double p = exp(sc[r] - m); den += p;
            for (int e = 0; e < HD; e++) {
                const float vv = rows[r] >= n_kv ? __half2float(ev[(size_t) (rows[r] - n_kv)*ne0 + h*HD + e])
                    : h_load64<PV>(vb.data() + r*vseg*n_head_kv + h*vseg + (e/64)*h_bytes64<PV>(), e % 64);
                o[e] += p*vv;
            }
        }
        for (int e = 0; e < HD; e++) { want[(size_t) (h*G + g)*HD + e] = o[e]/den; out_max = fmax(out_max, fabs(o[e]/den)); }
    }

    cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
    d2_fattn_shape s = { HD, PK, PV, n_kv, n_head, n_head_kv, 1 };
    d2_fattn_plan plan = d2_fattn_plan_of(prop.multiProcessorCount, prop.sharedMemPerBlockOptin, s, n_ex);
    d2_fattn_args & a = plan.main;
    const int n_parts = a.n_parts, chunk_rows = a.chunk_rows;
    uint8_t * dk; uint8_t * dv; half * dek; half * dev_; half * dmask; int32_t * drows; float * dq; float * dout; float * dpo; float2 * dpml;
    CK(cudaMalloc(&dk, kb.size() + 128)); CK(cudaMalloc(&dv, vb.size() + 128));
    CK(cudaMalloc(&dek, ek.size()*2)); CK(cudaMalloc(&dev_, ev.size()*2)); CK(cudaMalloc(&dmask, (size_t) n_kv*2));
    CK(cudaMalloc(&drows, rows.size()*4)); CK(cudaMalloc(&dq, q.size()*4)); CK(cudaMalloc(&dout, q.size()*4));
    CK(cudaMalloc(&dpo, (size_t) n_head*n_parts*HD*4)); CK(cudaMalloc(&dpml, (size_t) n_head*n_parts*8));
    CK(cudaMemcpy(dk, kb.data(), kb.size(), cudaMemcpyHostToDevice)); CK(cudaMemcpy(dv, vb.data(), vb.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dek, ek.data(), ek.size()*2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(dev_, ev.data(), ev.size()*2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dmask, 0, (size_t) n_kv*2));
    CK(cudaMemcpy(drows, rows.data(), rows.size()*4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(dq, q.data(), q.size()*4, cudaMemcpyHostToDevice));
    for (d2_fattn_args * x : { &plan.main, &plan.exact }) {
        x->q = dq; x->mask = dmask; x->dst = dout; x->part_o = dpo; x->part_ml = dpml; x->scale = scale; x->q_s2 = HD;
    }
    a.k = dk; a.v = dv; a.rows = drows;
    plan.exact.k = (const uint8_t *) dek; plan.exact.v = (const uint8_t *) dev_; plan.exact.cell_of = drows + n_kv;
    d2_fattn_decode_launch(plan, s, 0);
    CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    std::vector<float> got(q.size());
    CK(cudaMemcpy(got.data(), dout, got.size()*4, cudaMemcpyDeviceToHost));
    double err = 0;
    for (size_t i = 0; i < got.size(); i++) err = timing ? (std::isfinite(got[i]) ? err : INFINITY) : fmax(err, fabs(got[i] - want[i]));
    const int bad = timing ? !(err == 0) : !(err <= 2e-3*out_max);
    printf("decode HD %d K p%d V p%d G %d n_kv %d window %d: %d partial results, chunks of %d rows, max abs err %.3g (max |out| %.3g)%s\n",
        HD, PK, PV, G, n_kv, n_window, n_parts, chunk_rows, err, out_max, bad ? " FAILED" : "");
    if (timing) {
        cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        for (int i = 0; i < 5; i++) d2_fattn_decode_launch(plan, s, 0);
        const int iters = 50;
        CK(cudaEventRecord(e0));
        for (int i = 0; i < iters; i++) d2_fattn_decode_launch(plan, s, 0);
        CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
        float ms = 0; CK(cudaEventElapsedTime(&ms, e0, e1));
        const double us = 1e3*ms/iters, bytes = (double) (kseg + vseg)*n_head_kv*n_kv;
        printf("  time %.1f us per call, %.0f GB/s of D2 cache read (f16 would read %.0f MB)\n", us, bytes/us/1e3, 4.0*HD*n_head_kv*n_kv/1e6);
    }
    cudaFree(dk); cudaFree(dv); cudaFree(dek); cudaFree(dev_); cudaFree(dmask); cudaFree(drows); cudaFree(dq); cudaFree(dout); cudaFree(dpo); cudaFree(dpml);
    return bad;
}

// D2's rotations (d2_rotate_many) against a double-precision product: nh_x heads of N tokens by
// nh_kv matrices of M x K (each serving r2 = nh_x/nh_kv heads). inverse: each matrix stored as K
// rows of M and read transposed, as the OUT_PROD of the inverse rotation reads rot_v
static int check_rotate(const int K, const int M, const int N, const int nh_kv, const int nh_x, const bool inverse = false) {
    std::mt19937 rng(5); std::normal_distribution<float> nd(0, 1);
    std::vector<float> a((size_t) K*M*nh_kv), b((size_t) K*N*nh_x), d((size_t) M*N*nh_x);
    for (auto & v : a) v = nd(rng);
    for (auto & v : b) v = nd(rng);
    float * da; float * db; float * dd;
    CK(cudaMalloc(&da, a.size()*4)); CK(cudaMalloc(&db, b.size()*4)); CK(cudaMalloc(&dd, d.size()*4));
    CK(cudaMemcpy(da, a.data(), a.size()*4, cudaMemcpyHostToDevice)); CK(cudaMemcpy(db, b.data(), b.size()*4, cudaMemcpyHostToDevice));
    const d2_mm_operand oa = inverse ? d2_mm_operand{ da, 1, M, (int64_t) K*M } : d2_mm_operand{ da, K, 1, (int64_t) K*M };
    const d2_mm_operand ob = { db, K, 1, (int64_t) K*N };
    d2_rotate(oa, ob, dd, K, M, N, M, (int64_t) M*N, nh_x, nh_x/nh_kv, 0);
    CK(cudaGetLastError()); CK(cudaMemcpy(d.data(), dd, d.size()*4, cudaMemcpyDeviceToHost));
    double err = 0, mx = 0;
    for (int h = 0; h < nh_x; h++) for (int n = 0; n < N; n++) for (int m = 0; m < M; m++) {
        const size_t hk = h/(nh_x/nh_kv);
        double want = 0;
        for (int k = 0; k < K; k++) {
            want += (double) a[inverse ? (hk*K + k)*M + m : (hk*M + m)*K + k]*b[((size_t) h*N + n)*K + k];
        }
        err = fmax(err, fabs(want - d[((size_t) h*N + n)*M + m])); mx = fmax(mx, fabs(want));
    }
    const int bad = !(err <= 1e-5*mx*K);
    printf("rotate%s K %d M %d N %d heads %d/%d: max abs err %.3g (max %.3g)%s\n", inverse ? " (inverse)" : "", K, M, N, nh_x, nh_kv,
           err, mx, bad ? " FAILED" : "");
    if (N == 1) { // a decoded token's: the time of one launch
        cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        CK(cudaEventRecord(e0));
        for (int i = 0; i < 200; i++) d2_rotate(oa, ob, dd, K, M, N, M, (int64_t) M*N, nh_x, nh_x/nh_kv, 0);
        CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
        float ms = 0; CK(cudaEventElapsedTime(&ms, e0, e1));
        printf("  time %.2f us per call\n", ms*1e3/200);
    }
    cudaFree(da); cudaFree(db); cudaFree(dd);
    return bad;
}

int main(int argc, char ** argv) {
    if (argc > 1 && std::string(argv[1]) == "time") { // the Mistral-7B shape at 32K only (for a profiler)
        return check_decode<128, 8, 16>(8, 4, 32768, true, 1024);
    }
    if (argc > 1 && std::string(argv[1]) == "time128") {
        return check_decode<128, 8, 16>(8, 4, 131072, true, 1024);
    }
    if (argc > 1 && std::string(argv[1]) == "timing") { // the decode time only (variants of the kernel)
        return check_decode<128, 8, 16>(8, 4, 32768, true, 1024) | check_decode<128, 8, 16>(8, 4, 131072, true, 1024) |
               check_decode<128, 32, 16>(8, 4, 131072, true, 1024) |
               check_decode<128, 32 + D2_I8, 16 + D2_I8>(8, 4, 131072, true, 1024);
    }
    if (argc > 1 && std::string(argv[1]) == "decode") {
        int bad = 0;
        bad |= check_decode< 64, 16, 16>(3, 3, 3000, false);     // SmolLM2: 9 query heads on 3 KV heads
        bad |= check_decode< 64, 16, 16>(3, 3, 50, false);       // one chunk, one partial tile
        bad |= check_decode< 64,  8, 16>(3, 3, 1000, false);     // 39-byte blocks: rows at every alignment
        bad |= check_decode<128,  8,  0>(2, 4, 700, false);      // an f16 V
        bad |= check_decode<128,  8, 16>(8, 4, 2000, false);     // Mistral-7B
        bad |= check_decode<128,  8, 16>(8, 4, 3000, false, 1024); // the engine's window: many exact chunks
        bad |= check_decode<128,  8, 16>(8, 4, 32768, true, 1024);
        bad |= check_decode<128,  8, 16>(8, 4, 131072, true, 1024);
        bad |= check_decode<256, 32, 32>(2, 8, 2000, false);
        bad |= check_decode<128, 16 + D2_I8,  8 + D2_I8>(8, 4, 3000, false, 1024); // d2:lite
        bad |= check_decode< 64, 32 + D2_I8, 16 + D2_I8>(3, 3, 1000, false);       // k64v32i8 at head size 64
        bad |= check_decode<128,  0,          8 + D2_I8>(2, 4, 700, false);        // kauto: an f16 K layer
        printf(bad ? "D2 DECODE CHECK FAILED\n" : "D2 decode check passed\n");
        return bad;
    }
    int bad = 0;
    bad |= check< 64,  8>(3, 4096); bad |= check< 64, 16>(3, 4096); bad |= check< 64, 32>(3, 4096);
    bad |= check<128,  8>(8, 4096); bad |= check<128, 16>(8, 4096); bad |= check<128, 32>(8, 4096);
    bad |= check< 64,  8 + D2_I8>(3, 4096); bad |= check<128, 16 + D2_I8>(8, 4096); bad |= check<128, 32 + D2_I8>(8, 4096);
    bad |= check_rotate(128, 128, 300, 8, 32); // Mistral's Q: 32 heads on 8 bases, a partial tile of tokens
    bad |= check_rotate(64, 64, 2048, 3, 3);   // SmolLM2's K
    bad |= check_rotate(128, 128, 300, 8, 32, true); // Mistral's inverse V rotation of a prompt's output
    bad |= check_rotate(128, 128, 1, 8, 32, true);   // and of one decoded token's
    bad |= check_rotate(64, 64, 1, 3, 9, true);      // SmolLM2's, one token
    bad |= check_rotate(128, 128, 3, 8, 32, true);   // a few tokens: one block per (head, token)
    bad |= check_rotate(128, 128, 5, 8, 32, true);   // more: the tiles again
    bad |= check_rotate(256, 256, 1, 2, 8, true);    // head size 256
    bad |= check_rotate(128, 128, 1, 8, 32);         // a forward one-token rotation (rows along k: tiles)
    printf(bad ? "D2 KERNEL CHECK FAILED\n" : "D2 kernel check passed\n");
    return bad;
}
