# Compressed rows only (no sinks, no window): KLD vs f16 over 1,024 tokens of the Sherlock text, with the
# shipped SmolLM2 bases and their eigenvalues raised to 2*alpha (scale of tail column c: (lambda_ref/lambda_c)^alpha).
# Run at commit f500f03 (the whitening build): KP=16 VP=8 python compressed_only.py k0_v0 k0.5_v0.5 k0.5_v0 k0_v0.5
# with the v2 sidecars of that commit in the folder named below.
import os, sys, numpy as np
from pathlib import Path
from engine import metrics, sidecar as sc
from engine.arms import Recipe
from engine.d2 import D2Settings
from engine.runtime import Runtime
from engine.models import resolve
model = resolve(None)
text = next(Path("bench/evaltext").glob("*sherlock*.txt")).read_text()
rt = Runtime(model, "f16", n_ctx=256); toks = rt.tokenize(text)[:1024]; rt.close()
def run(arm, d2=None):
    rt = Runtime(model, arm, n_ctx=2048, logits_all=True, d2=d2)
    try:
        rt.llm.eval(toks); return np.array(rt.llm.scores[:len(toks)], dtype=np.float64)
    finally: rt.close()
def kld(a, b): return float(metrics.kld(metrics.log_softmax(a), metrics.log_softmax(b)).mean())
ref = run("f16")
d = Path("sidecars/smollm2-135m-instruct-q4_1")
K = sc.read_sidecar(d/"smollm2-135m-instruct-q4_1.fraqtl-k-eigenbasis.bin", "k")
V = sc.read_sidecar(d/"sidecar_real_u_smollm2-135m-instruct-q4_1.bin", "v")
out = Path("/tmp/whitening-variants"); out.mkdir(exist_ok=True)
def files(tag, ak, av):
    k = sc.SidecarFile("k", K.basis, ranks=K.ranks, eigenvalues=None if ak == 0 else K.eigenvalues ** (2 * ak))
    v = sc.SidecarFile("v", V.basis, protect=V.protect, eigenvalues=None if av == 0 else V.eigenvalues ** (2 * av))
    return sc.write_sidecar(k, out / f"{tag}.k.bin"), sc.write_sidecar(v, out / f"{tag}.v.bin")
for tag, ak, av in [(a, float(a.split("_")[0][1:]), float(a.split("_")[1][1:])) for a in sys.argv[1:]]:
    kp, vp = files(tag, ak, av)
    s = D2Settings(recipe=Recipe(sinks=0, window=0), k_sidecar=kp, v_sidecar=vp, k_protect=int(os.environ.get("KP", 16)), v_protect=int(os.environ.get("VP", 8)))
    print(f"window 0 KP {os.environ.get('KP', 16)} VP {os.environ.get('VP', 8)} K alpha {ak} V alpha {av}: KLD {kld(ref, run('d2', s)):.5f}", flush=True)
