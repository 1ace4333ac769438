#!/bin/sh
# Runs every test binary in build/tests (or $1), sums their "N passed, N failed"
# lines and prints the total as the closing line. Exits non-zero on any failure.
# The numeric tests also run capped to the AVX2 and portable kernel tiers.
# When build-asan/prism exists (make debug), the server tests run a second
# time against that AddressSanitizer + UBSan server (32 concurrent clients,
# fuzzed bodies, disconnects, shutdown). test_gpu runs once as the machine
# allows (a real GPU, or the errors users get without one) and once on the
# CUDA emulator.
B=${1:-build}
total_p=0; total_f=0

run_one() { # name, command...
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    tally "$name" "$out" "$rc"
}

tally() { # name, output, exit status: adds a finished test's summary line to the totals
    name=$1 out=$2 rc=$3
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    if [ -z "$line" ]; then
        printf '%s\n' "$out" | tail -20
        echo "== $name: crashed or printed no summary (exit $rc)"
        total_f=$((total_f + 1)); return
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    total_p=$((total_p + p)); total_f=$((total_f + f))
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
        printf '%s\n' "$out" | grep -E 'FAIL|ERROR: AddressSanitizer|runtime error' | head -40
        echo "== $name: $line (exit $rc)"
        [ "$f" -eq 0 ] && total_f=$((total_f + 1))
    else
        echo "== $name: $line"
    fi
}

for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" "$t"
done
# The numeric tests again on the kernel tiers a CPU without AVX-512 (or without
# AVX2) would take, so every dispatch path stays correct whatever CI runs on.
for isa in avx2 generic; do
    for t in test_kernels test_parity test_lora_grad test_prism; do
        [ -x "$B/tests/$t" ] && run_one "$t (PRISM_ISA=$isa)" env PRISM_ISA=$isa "$B/tests/$t"
    done
done
# The CUDA module's own code (kernels, SGMV, split-K attention, host side) on
# the CPU emulator of tests/cuda_emu: the GPU parity suite without a GPU.
# Then, with every model loaded onto the emulated device: LoRA training
# (gradients against peft, the trainer's exact resume), PRISM routing (forced
# and gated routes, chunked routed prefill) and the CLI end to end.
# The emulator runs a program on one core: test_train, the longest, runs beside the others (CI has two).
if [ -f "$B/emu/prism-cuda.so" ] && [ -x "$B/tests/test_gpu" ]; then
    emu_tmp=$(mktemp -d)
    if [ -x "$B/tests/test_train" ]; then
        (env PRISM_DEVICE=cuda PRISM_CUDA_MODULE="$B/emu/prism-cuda.so" "$B/tests/test_train" >"$emu_tmp/out" 2>&1
         echo $? >"$emu_tmp/rc") &
    fi
    run_one "test_gpu (CUDA module on the CPU emulator)" env PRISM_CUDA_MODULE="$B/emu/prism-cuda.so" "$B/tests/test_gpu"
    # the decode switches' other kernels, on one architecture: the GEMV in K slices, the q|k|v
    # post-processing as a kernel of its own, the split-K combine by attention's last block and SwiGLU in
    # the gate|up GEMV (the default is the other way round for each of the three fusions)
    run_one "test_gpu, qwen2, GEMV in 4 K slices, the other decode fusions (CPU emulator)" env PRISM_TEST_ARCH=qwen2 \
        PRISM_CUDA_GEMV_SLICES=4 PRISM_CUDA_DECODE_FUSE=combine,glu PRISM_CUDA_MODULE="$B/emu/prism-cuda.so" "$B/tests/test_gpu"
    [ -x "$B/tests/test_lora_grad" ] && run_one "test_lora_grad, llama3, LoRA's skinny products in K slices (CPU emulator)" \
        env PRISM_TEST_ARCH=llama3 PRISM_CUDA_LORA_SPLIT=2 PRISM_CUDA_LORA_SPLIT_MIN_K=16 PRISM_DEVICE=cuda \
        PRISM_CUDA_MODULE="$B/emu/prism-cuda.so" "$B/tests/test_lora_grad"
    [ -x "$B/emu/test_flash" ] && run_one "test_flash (the trainer's tensor-core attention, CPU emulator)" "$B/emu/test_flash"
    for t in test_lora_grad test_prism test_cli; do
        [ -x "$B/tests/$t" ] && run_one "$t (PRISM_DEVICE=cuda, CPU emulator)" \
            env PRISM_DEVICE=cuda PRISM_CUDA_MODULE="$B/emu/prism-cuda.so" "$B/tests/$t"
    done
    wait
    if [ -x "$B/tests/test_train" ]; then
        tally "test_train (PRISM_DEVICE=cuda, CPU emulator)" "$(cat "$emu_tmp/out")" "$(cat "$emu_tmp/rc" 2>/dev/null || echo 1)"
    fi
    rm -rf "$emu_tmp"
fi
if [ "$B" = build ] && [ -x build-asan/prism ] && [ -x build/tests/test_server ]; then
    run_one "test_server (server under ASan+UBSan)" env PRISM_SERVER_BIN=build-asan/prism ./build/tests/test_server
fi
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
