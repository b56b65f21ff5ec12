#!/usr/bin/env bash
# How the committed GPU receipts were made on a lent H200 (no network there).
#   phase build: wheels + CUDA build of the exported source, shaped Mistral-7B model
#   phase d2:    SmolLM2 KLD + NIAH with the D2 arms (after build)
#   phase smol:  Mistral-shape memory grid, SmolLM2 KLD + NIAH (the model travels in two parts, see the receipts' README)
# Expects: .whl/ (gguf, platformdirs, diskcache), .dev/src-lite.tar.gz (engine.build export-source,
# without .git), .dev/smol.part00 / part01. Receipts land in $OUT as one tarball.
set -euo pipefail
phase=$1
export PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD
case $phase in
build)
  t0=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  [ -f .dev/smol.part00 ] && cp .dev/smol.part00 /tmp/smol.part00
  mkdir -p /tmp/src && tar xzf .dev/src-lite.tar.gz -C /tmp/src
  tree=$(ls -d /tmp/src/*)
  export CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90"
  export CMAKE_BUILD_PARALLEL_LEVEL=16
  python3 -m pip wheel -q --no-deps --no-build-isolation -w /tmp/wheel -C build-dir=/tmp/build "$tree" \
    > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheel/*.whl
  echo "build done in $(( $(date +%s) - t0 )) s"
  python3 -c "import llama_cpp; print(llama_cpp.llama_cpp.llama_fraqtl_version())"
  if [ "${FRAQTL_SKIP_SHAPE:-0}" != 1 ]; then
    python3 -m bench.cli shape-model -o /tmp/mistral-shape-q4km.gguf
    echo "shape done in $(( $(date +%s) - t0 )) s"
  fi
  ;;
smol)
  cat /tmp/smol.part00 .dev/smol.part01 > /tmp/smol.gguf
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/smol.gguf" | sha256sum -c
  python3 -m bench.cli memory --model /tmp/mistral-shape-q4km.gguf --arms f16,q8_0,q4_0 \
    --ctx 32k,64k,128k --decode 64 --timeout 150 --out /tmp/receipts 2>&1 | grep -v "━" || true
  python3 -m bench.cli kld --model /tmp/smol.gguf --arms f16,q8_0,q4_0,d2 --timeout 90 \
    --out /tmp/receipts 2>&1 | grep -v "━" || true
  python3 -m bench.cli niah --model /tmp/smol.gguf --arms f16,q8_0,q4_0,d2 --timeout 150 \
    --out /tmp/receipts 2>&1 | grep -v "━" || true
  ;;
d2)
  # the D2 arms beside the upstream ones (D2 runs with its cache in host memory on CUDA builds)
  cat /tmp/smol.part00 .dev/smol.part01 > /tmp/smol.gguf
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/smol.gguf" | sha256sum -c
  python3 -m bench.cli kld --model /tmp/smol.gguf --arms f16,q8_0,q4_0,d2,d2:k16v32 --timeout 150 \
    --name kld-smollm2-135m-d2-h200 --out /tmp/receipts 2>&1 | grep -v "━" || true
  python3 -m bench.cli niah --model /tmp/smol.gguf --arms f16,d2 --timeout 150 \
    --name niah-smollm2-135m-d2-h200 --out /tmp/receipts 2>&1 | grep -v "━" || true
  ;;
esac
tar cf "$OUT/receipts-$phase.tar" -C /tmp/receipts . 2>/dev/null || true
for f in /tmp/receipts/*/receipt.md; do [ -f "$f" ] && sed -n '/^| arm/,/^$/p' "$f"; done
