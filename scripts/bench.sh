#!/bin/sh
# Reproduces BENCHMARKS.md: builds, makes the random-weight Qwen2.5-0.5B-shaped
# BF16 model once (bench/models/, ~1 GB, not committed), then runs the matmul
# engine and training benchmarks (bench/bench_server.c is run as BENCHMARKS.md
# says). Run on an otherwise idle machine.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)" all
M=bench/models/qwen2.5-0.5b-shape
[ -f "$M/model.safetensors" ] || ./build/bench/make_model "$M"
echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/\(Flags:\).*\(avx512_bf16\).*/\1 ... \2 .../'
echo "== matmul kernels"; ./build/bench/bench_matmul
echo "== engine (precision fast)"; ./build/bench/bench_engine "$M" --precision fast
echo "== engine (precision exact)"; ./build/bench/bench_engine "$M" --precision exact
echo "== LoRA training step (CPU)"; ./build/bench/bench_train "$M" --tokens 256
