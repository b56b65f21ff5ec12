# Gaussian estimate of D2 tail whitening from the calibration moments (the study behind this receipt).
# Run at commit f500f03: python whitening_sim.py STATE.npz, where STATE.npz is the .fraqtl-calibrate-state.npz
# that `fraqtl-calibrate SmolLM2-135M-Instruct.Q4_1.gguf --tokens 16384 --ctx 8192 --threads 2` leaves when
# it is stopped before deleting it (the moments of the shipped calibration; its sidecars were reproduced bit for bit).
"""Gaussian simulation of D2 tail whitening from the calibration moments (state npz).
Per (layer, KV head): coefficients in the sidecar basis are independent N(0, lambda_c);
tail of the 64-block quantized INT3 with one fp16 scale (the quantizer's scale search).
Reports tail MSE (V) and score error E[(q.e)^2] (K), with scale s_c on tail dims."""
import sys, numpy as np
from engine.calibrate.spectrum import eigenbasis, query_order
z = np.load(sys.argv[1])
mk, mv, mq, nq = z["mk"], z["mv"], z["mq"], int(z["nq"])
n = int(z["tokens_done"])
wk, uk = eigenbasis(mk, n); wv, uv = eigenbasis(mv, n)
wk, uk = query_order(wk, uk, mq, nq)
Q = mq / nq
L, H, d, _ = uk.shape
rng = np.random.default_rng(0)
N = 2000

def f16(x): return np.asarray(x, np.float16).astype(np.float32)

def quant_tail(t):  # t [N, nt] -> dequantized, the C quantizer's scale rule
    mp = np.maximum(t.max(1), 0); mn = np.maximum((-t).max(1), 0)
    s0 = np.maximum(mp/3, mn/4)
    best = None; beste = None
    for k in range(7):
        s = f16(s0*(1-0.05*k)); s = np.where(s > 0, s, 1e-30)
        q = np.clip(np.rint(t/s[:, None]), -4, 3)*s[:, None]
        e = ((t-q)**2).sum(1)
        if best is None: best, beste = q, e
        else:
            m = e < beste; best[m] = q[m]; beste = np.where(m, e, beste)
    return best

def q8_err(x):  # x [N, d] original-domain; q8_0 in 32-blocks after a Hadamard (as +rotation)
    Hm = np.array([[1.]])
    while len(Hm) < d: Hm = np.block([[Hm, Hm], [Hm, -Hm]])
    Hm = Hm/np.sqrt(d)
    y = x @ Hm
    yb = y.reshape(len(y), -1, 32)
    s = f16(np.abs(yb).max(2)/127); s = np.where(s > 0, s, 1e-30)
    q = np.rint(yb/s[..., None]).clip(-127, 127)*s[..., None]
    return (q.reshape(len(y), d) - y) @ Hm.T

def run(kind, P, scales_fn):
    tot = 0.0; ref = 0.0; out = []
    for l in range(L):
        for h in range(H):
            lam = (wk if kind == "k" else wv)[l, h]
            u = (uk if kind == "k" else uv)[l, h]
            c = rng.standard_normal((N, d))*np.sqrt(lam)
            s = scales_fn(l, h, lam, u, P)
            t = c[:, P:]*s
            e = np.zeros_like(c); e[:, P:] = (quant_tail(t) - t)/s
            if kind == "k":
                Qb = u.T @ Q[l, h] @ u  # query moment in the basis (summed over query heads)
                err = np.einsum("ni,ij,nj->n", e, Qb, e).mean()
                sig = np.einsum("ni,ij,nj->n", c, Qb, c).mean()
            else:
                err = (e**2).sum(1).mean(); sig = (c**2).sum(1).mean()
            out.append(err/sig)
    return np.array(out)

def plain(l, h, lam, u, P): return np.ones(d-P)
def white(alpha, cap=32.0, qaware=0.0):
    def f(l, h, lam, u, P):
        t = np.maximum(lam[P:], 1e-12)
        r = (t.max()/t)**alpha
        if qaware:
            qv = np.clip(np.einsum("dc,de,ec->c", u, Q[l, h], u)[P:], 1e-12, None)
            r = r*(qv/qv.max())**qaware
        r = r/r.min()
        return np.minimum(r, cap)
    return f

def q8(kind):
    out = []
    for l in range(L):
        for h in range(H):
            lam = (wk if kind == "k" else wv)[l, h]; u = (uk if kind == "k" else uv)[l, h]
            c = rng.standard_normal((N, d))*np.sqrt(lam)
            x = c @ u.T
            e = q8_err(x) @ u
            if kind == "k":
                Qb = u.T @ Q[l, h] @ u
                out.append(np.einsum("ni,ij,nj->n", e, Qb, e).mean()/np.einsum("ni,ij,nj->n", c, Qb, c).mean())
            else:
                out.append((e**2).sum(1).mean()/(c**2).sum(1).mean())
    return np.array(out)

print("tail spread: K lam[16:] max/min median", np.median(wk[..., 16:].max(-1)/np.maximum(wk[..., 16:].min(-1),1e-12)),
      " V lam[8:]", np.median(wv[..., 8:].max(-1)/np.maximum(wv[..., 8:].min(-1),1e-12)))
for kind, P in (("k", 16), ("v", 8)):
    print(kind, "P", P, "q8_0+rot rel err mean %.3g" % q8(kind).mean())
    base = run(kind, P, plain)
    print("  plain        rel err mean %.4g" % base.mean())
    for name, fn in (("white a=.5 cap32", white(0.5)), ("half a=.25", white(0.25)), ("anti a=-.25", white(-0.25)),
                     ("qaware a=.5 b=.25", white(0.5, 32, 0.25))):
        if kind == "v" and "qaware" in name: continue
        r = run(kind, P, fn)
        print("  %-20s rel err mean %.4g  (x%.2f of plain; per-head median ratio %.2f)" % (name, r.mean(), r.mean()/base.mean(), np.median(r/base)))
