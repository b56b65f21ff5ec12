#!/usr/bin/env bash
# How the committed GPU receipts are made on a lent H200 (no network there), in back-to-back
# calls while the machine stays warm (files under /tmp survive between them):
#   phase start: install the carried wheels, unpack the exported source, start the CUDA build
#                (then llama-bench and the Mistral-7B-shape model with its random control
#                sidecars) in the background and return at once
#   phase gpu:   wait for the build; GPU tests (D2 cache in VRAM, agreement with the CPU
#                reference, an answer with d2); SmolLM2 KLD with d2 on the GPU beside d2@cpu;
#                Mistral-shape memory/speed at the contexts in $CTX
#   phase rebuild: after an edit of our CUDA sources, rebuild incrementally in the kept build dir
#   phase long:  Mistral-shape memory/speed at 128K and llama-bench from the same build
#   phase split: on a 2-GPU machine (nvidia-h200-x2; after start): the Mistral shape at 128K with
#                f16, q8_0 and d2 on GPU 0 alone and split by layer over both GPUs (peak VRAM per
#                GPU and in total, prefill/decode tok/s, llama.cpp's buffers beside the per-GPU
#                estimate), then SmolLM2 d2 split vs d2 on one GPU logits (ARMS, CTX override)
# Carried: .whl/ (pure-Python wheels the image lacks), .dev/src.tar.gz (python -m engine.build
# export-source), .dev/smol.part* (SmolLM2, split to fit the 64 MiB per call). Receipts and
# logs land in $OUT.
set -uo pipefail
phase=$1
export PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD
DATA=/root/.local/share/fraqtl-chat
SMOL=$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf
SHAPE=/tmp/mistral-shape-q4km.gguf
mkdir -p /tmp/receipts "$DATA/models"
for p in .dev/smol.part*; do [ -f "$p" ] && cp "$p" /tmp/; done

wait_build() {
  for _ in $(seq 1 120); do
    [ -f /tmp/build.done ] && break
    [ -f /tmp/build.failed ] && { tail -60 /tmp/build.out; exit 1; }
    sleep 5
  done
  cat /tmp/build.out | tail -5
  [ -f /tmp/build.done ] || { echo "build still running"; tail -3 /tmp/build.out; exit 1; }
}

smol() {
  if [ ! -f "$SMOL" ]; then
    cat /tmp/smol.part* > "$SMOL"
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $SMOL" | sha256sum -c || exit 1
  fi
}

# the wheel loads without preloading the system libstdc++ since libggml-cuda exports only its C
# API; preload only where a model load without it fails (and say so)
preload() {
  smol
  if python3 -c "from engine.runtime import Runtime; Runtime('$SMOL', 'f16', n_ctx=512)" > /tmp/preload.log 2>&1; then
    echo "a model loads without LD_PRELOAD"
  else
    echo "MODEL LOAD FAILED WITHOUT LD_PRELOAD (rc $?): $(tail -2 /tmp/preload.log)"
    export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
  fi
}

# the engine's own CUDA build options (engine/build.py make_plan, for sm_90), and a wheel of the
# unpacked tree built in the kept build dir, installed where the phases import it
cuda_wheel() {
  CMAKE_ARGS="$(python3 -c 'import shlex; from engine.build import make_plan; print(shlex.join(make_plan("cuda", "90").cmake_args))')" \
    || { echo "no build options from engine.build"; return 1; }
  export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$(nproc); echo "CMAKE_ARGS=$CMAKE_ARGS"
  rm -rf /tmp/wheel
  python3 -m pip wheel -q --no-deps --no-build-isolation -w /tmp/wheel -C build-dir=/tmp/build "$(ls -d /tmp/src/*)" \
    > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log; return 1; }
  python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site /tmp/wheel/*.whl
}

case $phase in
start)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  rm -rf /tmp/src /tmp/repo && mkdir -p /tmp/src && tar xzf .dev/src.tar.gz -C /tmp/src
  cp -r "$PWD" /tmp/repo
  cp bench/h200.sh /tmp/h200.sh
  (cd /tmp/repo && setsid nohup bash /tmp/h200.sh build > /tmp/build.out 2>&1 < /dev/null &)
  sleep 2; cat /tmp/build.out
  ;;
build)
  t0=$(date +%s)
  cuda_wheel || { touch /tmp/build.failed; exit 1; }
  echo "build done in $(( $(date +%s) - t0 )) s"
  python3 -c "import llama_cpp; print(llama_cpp.llama_cpp.llama_fraqtl_version())" || { touch /tmp/build.failed; exit 1; }
  touch /tmp/build.done
  # the upstream reference from the same tree: llama-bench only
  (cmake -DLLAMA_BUILD_TOOLS=ON /tmp/build > /tmp/bench-build.log 2>&1 &&
   cmake --build /tmp/build --target llama-bench -j $(nproc) >> /tmp/bench-build.log 2>&1 &&
   echo "llama-bench built in $(( $(date +%s) - t0 )) s") || echo "llama-bench build failed"
  python3 -m bench.cli shape-model -o $SHAPE && echo "shape model done in $(( $(date +%s) - t0 )) s"
  touch /tmp/shape.done
  ;;
rebuild)
  # after a change to our own sources (not the patches) on a warm machine: copy them into the
  # unpacked tree as engine/build.py does, and rebuild in the kept build dir (only their objects
  # and the links: about 110 s for the CUDA file)
  wait_build
  tree=$(ls -d /tmp/src/*)
  # only the files that differ: a touched header would rebuild every upstream file including it
  python3 -c "from engine.build import OUR_SRC_DEST; [print(k, v) for k, v in OUR_SRC_DEST.items()]" |
    while read -r from to; do
      for f in engine/llama.cpp-fraqtl/src/$from/*; do
        cmp -s "$f" "$tree/$to/$(basename "$f")" || { cp "$f" "$tree/$to/"; echo "changed: $f"; }
      done
    done
  t0=$(date +%s)
  cuda_wheel || exit 1
  echo "rebuilt in $(( $(date +%s) - t0 )) s"
  ;;
gpu)
  wait_build; smol
  # which libstdc++ the image's python has mapped before llama.cpp loads (the preload question)
  python3 -c "import numpy, ctypes; print([l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l][:1])"
  preload
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
  FRAQTL_GPU_RESULTS=$OUT timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/functional/test_d2_cuda.py \
    2>&1 | tail -30
  timeout 200 python3 -m bench.cli kld --model $SMOL --arms f16,q8_0,q4_0,d2,d2@cpu --timeout 120 \
    --name kld-smollm2-135m-d2-cuda-h200 --out /tmp/receipts 2>&1 | grep -v "━" | tail -20
  for _ in $(seq 1 60); do [ -f /tmp/shape.done ] && break; sleep 5; done
  timeout 400 python3 -m bench.cli memory --model $SHAPE --arms f16,q8_0,q4_0,d2 --ctx ${CTX:-32k,64k} --decode 64 \
    --timeout 150 --name memory-mistral-shape-d2-cuda-h200 --out /tmp/receipts 2>&1 | grep -v "━" | tail -20
  ;;
diag)
  # the GPU d2 path against its CPU reference, piece by piece: all rows exact (window >= chunk),
  # no exact rows at all (quantizer and dequantizer alone), and without CUDA op fusion
  wait_build; smol; preload
  timeout 240 python3 -m bench.cli kld --model $SMOL --chunks 3 --timeout 60 --name kld-d2-cuda-diag --out /tmp/receipts \
    --arms f16,d2,d2@cpu,d2:k32v16s8w8192,d2:k32v16s8w8192@cpu,d2:k32v16s0w0,d2:k32v16s0w0@cpu 2>&1 | grep -v "━" | tail -3
  GGML_CUDA_DISABLE_FUSION=1 timeout 60 python3 -m bench.cli kld --model $SMOL --chunks 3 --timeout 60 \
    --name kld-d2-cuda-diag-nofusion --out /tmp/receipts --arms f16,d2 2>&1 | grep -v "━" | tail -3
  FRAQTL_GPU_RESULTS=$OUT timeout 200 python3 -m pytest -q -p no:cacheprovider tests/functional/test_d2_cuda.py \
    -k "agrees or less_memory" 2>&1 | grep -v "^E  .*llama_\|print_info\|load_tensors" | tail -25
  ;;
kcheck)
  # the D2 kernels alone against a CPU reference, and the decode kernel's time; no llama.cpp build
  # (about 40 s). Our kernel sources come from the work tree, the rest from the exported source.
  # KVAR="D2_FA_STAGES=2 ..." also builds and times those variants of the kernel (in parallel).
  # (its own copy of the source: the build of phase start may be reading /tmp/src)
  rm -rf /tmp/ksrc && mkdir -p /tmp/ksrc && tar xzf .dev/src.tar.gz -C /tmp/ksrc
  cuda=$(ls -d /tmp/ksrc/*)/vendor/llama.cpp/ggml/src/ggml-cuda
  cp engine/llama.cpp-fraqtl/check/d2_kernels_check.cu engine/llama.cpp-fraqtl/src/ggml-cuda/ggml-fraqtl-cuda.* "$cuda/"
  for v in default ${KVAR:-}; do
    def=$([ "$v" = default ] || echo "-D$v")
    (cd "$cuda" && nvcc -std=c++17 -arch=sm_90 -use_fast_math -extended-lambda -I../../include -I.. -I. $def \
      d2_kernels_check.cu -Xlinker --unresolved-symbols=ignore-all -o "/tmp/d2check-$v" 2>&1 | grep -i error) &
  done
  wait
  [ -x /tmp/d2check-default ] || exit 1
  [ -n "${KQUICK:-}" ] || /tmp/d2check-default | grep -v "head [1-9]"
  /tmp/d2check-default decode
  for v in ${KVAR:-}; do echo "== variant $v"; /tmp/d2check-$v ${VMODE:-timing} | grep time; done
  exit 0
  ;;
prof)
  # the decode kernel under Nsight Compute (run while the build of phase start goes on)
  rm -rf /tmp/ksrc && mkdir -p /tmp/ksrc && tar xzf .dev/src.tar.gz -C /tmp/ksrc
  cuda=$(ls -d /tmp/ksrc/*)/vendor/llama.cpp/ggml/src/ggml-cuda
  cp engine/llama.cpp-fraqtl/check/d2_kernels_check.cu engine/llama.cpp-fraqtl/src/ggml-cuda/ggml-fraqtl-cuda.* "$cuda/"
  (cd "$cuda" && nvcc -std=c++17 -arch=sm_90 -use_fast_math -lineinfo -extended-lambda -I../../include -I.. -I. \
    d2_kernels_check.cu -Xlinker --unresolved-symbols=ignore-all -o /tmp/d2prof) || exit 1
  /tmp/d2prof ${PMODE:-time}
  timeout 200 ncu --kernel-name regex:d2_fattn_decode --launch-count 1 --section SpeedOfLight \
    --section WarpStateStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section InstructionStats --section SourceCounters \
    /tmp/d2prof ${PMODE:-time} > $OUT/ncu.txt 2>&1
  grep -v "^    ---\|^ *$" $OUT/ncu.txt | head -120
  ;;
kprof)
  # per-kernel GPU time of a decoded token after a long prefill (bench/gpu_profile.py), f16 vs d2
  wait_build; preload
  for _ in $(seq 1 60); do [ -f /tmp/shape.done ] && break; sleep 5; done
  timeout 300 python3 -m bench.gpu_profile --model $SHAPE --arms ${ARMS:-f16,d2} --ctx ${PCTX:-131072} 2>&1 \
    | grep -v "^llama\|^load\|^print_info\|^\.\|^graph\|^sched\|^init\|^ggml\|^~" | tail -60
  ;;
mem)
  # Mistral-shape memory/speed at $CTX (all four arms in one run), then llama-bench from the same build
  wait_build; preload
  for _ in $(seq 1 60); do [ -f /tmp/shape.done ] && break; sleep 5; done
  timeout ${MEMT:-420} python3 -m bench.cli memory --model $SHAPE --arms ${ARMS:-f16,q8_0,q4_0,d2} --ctx ${CTX:-32k,64k,128k} --decode 64 \
    --timeout 200 --name ${NAME:-memory-mistral-shape-d2-h200} --out /tmp/receipts 2>&1 | grep -v "━" | tail -20
  lb=$(find /tmp/build -name llama-bench -type f -perm -u+x | head -1)
  if [ -n "$lb" ]; then
    d=$(ls -d /tmp/receipts/*${NAME:-memory-mistral-shape-d2-h200} | tail -1)
    timeout 150 "$lb" -m $SHAPE -fa 1 -ub 2048 -p 0 -n 64 -d ${LBD:-32768,131072} \
      -ctk f16 -ctv f16 -o md 2>&1 | tee "$d/llama-bench.md" | tail -8
    cp "$d/llama-bench.md" $OUT/
  fi
  ;;
tests)
  # the GPU tests: the D2 cache in VRAM with no CPU split, agreement with the CPU reference, an answer
  wait_build; smol; preload
  FRAQTL_GPU_RESULTS=$OUT timeout 300 python3 -m pytest -q -p no:cacheprovider tests/functional/test_d2_cuda.py \
    2>&1 | grep -v "^E  .*llama_\|print_info\|load_tensors" | tail -30
  ;;
agree)
  # D2 on the GPU against its CPU reference beside the f16 floor and an all-exact D2 (bench/gpu_agree.py)
  wait_build; smol; preload
  timeout 300 python3 -m bench.gpu_agree --out $OUT/agree.json \
    --pairs f16@cpu/f16,d2@cpu/d2,f16/d2,f16/d2@cpu,d2:k32v16s8w8192@cpu/d2:k32v16s8w8192 2>&1 | grep " vs "
  ;;
ldiag)
  # why a model load crashes without preloading the system libstdc++: which library's C++ symbols
  # the loading libraries bound to, and a native backtrace
  wait_build; smol
  lib=$(python3 -c "import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__))")/lib
  ls $lib; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  for f in $lib/*.so; do echo "== $f"; ldd $f | grep -i "stdc\|gcc_s"; done
  python3 -c "import numpy; print([l.split()[-1] for l in open('/proc/self/maps') if 'stdc++' in l][:2])"
  LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/ldb timeout 60 python3 -c \
    "from engine.runtime import Runtime; Runtime('$SMOL', 'f16', n_ctx=512)" > /dev/null 2>&1
  cat /tmp/ldb.* | grep "binding file" | grep -v "to /lib\|to /usr/lib" | grep "_ZNS\|_ZNK\|_ZSt\|_ZTV\|_ZTI\|_ZGV" \
    | sed 's/.*binding file \([^ ]*\) \[0\] to \([^ ]*\) \[0\]: normal symbol .\(.*\).*/\1 -> \2 \3/' \
    | awk '{split($1,a,"/"); split($2,b,"/"); print a[length(a)], "->", b[length(b)], $3}' | sort | uniq -c | sort -rn | head -25
  timeout 120 python3 -X faulthandler -c "from engine.runtime import Runtime; Runtime('$SMOL', 'f16', n_ctx=512)" \
    2>&1 | grep -v "^llama\|^load\|^print_info\|^\.\|^graph\|^sched\|^init\|^ggml\|^~" | tail -25
  [ -n "${GDB:-}" ] && timeout 120 cuda-gdb -batch -ex run -ex bt --args python3 -c \
    "from engine.runtime import Runtime; Runtime('$SMOL', 'f16', n_ctx=512)" 2>&1 | grep -v "^\[\|^warning\|^llama\|^print_info\|^load" | tail -25
  ;;
long)
  wait_build; preload
  timeout 400 python3 -m bench.cli memory --model $SHAPE --arms f16,q8_0,q4_0,d2 --ctx 128k --decode 64 \
    --timeout 200 --name memory-mistral-shape-d2-cuda-h200-128k --out /tmp/receipts 2>&1 | grep -v "━" | tail -20
  lb=$(find /tmp/build -name llama-bench -type f -perm -u+x | head -1)
  if [ -n "$lb" ]; then
    timeout 150 "$lb" -m $SHAPE -fa 1 -ub 2048 -p 0 -n 64 -d 32768,131072 \
      -ctk f16 -ctv f16 -o md 2>&1 | tee $OUT/llama-bench.md | tail -8
  fi
  ;;
split)
  wait_build; smol
  for _ in $(seq 1 60); do [ -f /tmp/shape.done ] && break; sleep 5; done
  preload
  nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
  [ "$(nvidia-smi -L | grep -c '^GPU')" -ge 2 ] || { echo "phase split needs 2 GPUs (kind nvidia-h200-x2)"; exit 1; }
  timeout 570 python3 -m bench.cli split --model $SHAPE --arms ${ARMS:-f16,q8_0,d2} --ctx ${CTX:-128k} --gpus 2 \
    --split-mode layer --decode 64 --timeout 150 --agreement-model $SMOL \
    --name split-mistral-shape-2xh200 --out /tmp/receipts 2>&1 | grep -v "━" | tail -30
  ;;
esac
tar cf "$OUT/receipts-$phase.tar" -C /tmp/receipts . 2>/dev/null || true
cp /tmp/build.log $OUT/ 2>/dev/null || true
for f in /tmp/receipts/*/receipt.md; do [ -f "$f" ] && sed -n '/^| arm/,/^$/p' "$f"; done
exit 0
