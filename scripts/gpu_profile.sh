#!/bin/bash
# gpu_profile.sh — where the GPU time goes: each phase of bench_gpu (prefill
# of 512 tokens, decode at batch 1 and 32, one LoRA training step) alone under
# Nsight Compute, which times every kernel (real clocks, warm caches); prints
# per phase the kernels by total time with their DRAM read bandwidth.
#   scripts/gpu_profile.sh [shape ...]      (default: 7b 0.5b)
# Needs ncu, and a build made by scripts/gpu_check.sh (or the same make line).
# PHASES="prefill decode1 ..." picks phases, TRAIN_SEQS the sequences of the
# training step (default 1; one packed pass either way), TOP the kernels listed,
# NCU_ARGS more ncu options (e.g. --launch-count N: the first N kernels only).
# Logs go to $OUT. A training step has thousands of kernels and outlasts NCU_TIMEOUT under ncu on the 7B shape:
# PRISM_CUDA_PROFILE=1 (gpu_check.sh) splits its time by span instead.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/prism-gpu}
mkdir -p "$OUT"
command -v ncu >/dev/null || { echo "gpu_profile: ncu (Nsight Compute) is not installed"; exit 1; }
shapes=${*:-7b 0.5b}
for shape in $shapes; do
    for phase in ${PHASES:-prefill decode1 decode32 train}; do
        log="$OUT/ncu-$shape-$phase.csv"
        echo "== $shape $phase"
        PRISM_CUDA_GRAPHS=0 timeout "${NCU_TIMEOUT:-300}" ncu --csv --page raw --print-units base --cache-control none --clock-control none ${NCU_ARGS:-} \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum \
            ./build/bench/bench_gpu --shape "$shape" --only "$phase" --runs 1 --new 4 --train-seqs "${TRAIN_SEQS:-1}" >"$log" 2>&1
        python3 - "$log" "$phase" "${TOP:-18}" <<'PY'
import csv, sys, collections
path, phase, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l for l in open(path, errors="replace") if l.startswith('"')]
if not rows:
    print("  no kernel rows; ncu said:"); print("".join(open(path, errors="replace").readlines()[-15:])); sys.exit()
r = list(csv.reader(rows))
hdr = r[0]; data = r[2:]
def col(*names):
    for n in names:
        if n in hdr: return hdr.index(n)
    sys.exit(f"  no column {names} in {hdr}")
ki = col("Kernel Name", "Function Name", "Demangled Name")
ti, bi = col("gpu__time_duration.sum"), col("dram__bytes_read.sum")
num = lambda v: float(v.replace(",", "") or 0)
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
skip = ("fill_uniform",)  # the random model's own initialisation
for d in data:
    name = d[ki].split("(")[0].split("<")[0].replace("void ", "")[:60]
    if any(s in d[ki].lower() for s in skip): continue
    a = agg[name]; a[0] += 1; a[1] += num(d[ti]); a[2] += num(d[bi])
tot = sum(a[1] for a in agg.values())
print(f"  {len(data)} kernels, {tot/1e6:.2f} ms of kernel time")
for name, (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f"  {100*t/tot:5.1f}%  {t/1e6:8.3f} ms  {n:6d}x  {t/n/1e3:8.1f} us  {b/t if t else 0:7.0f} GB/s  {name}")
PY
    done
done
