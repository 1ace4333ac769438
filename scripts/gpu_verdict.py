#!/usr/bin/env python3
"""gpu_verdict.py — issue 5's targets and the switches' effects, read from one gpu_check.sh run.

    python3 scripts/gpu_verdict.py [OUT]     (OUT: gpu_check.sh's log folder, default /tmp/prism-gpu)

Reads OUT/bench.md (bench_gpu's table, its stderr lines and the frozen-GEMM table) and
OUT/bench_variants.log (the training profile runs, the switches' runs, the decode variants) and
prints, for the card of that run: the 7B batch-1 decode against its roofline (target >= 80%),
batch-32 decode (>= 3,000 tok/s), LoRA training against transformers + peft on both shapes (>= 2x:
the issue names no shape for it), the frozen
GEMMs' rate, and each switch's training or decode speed against the default measured beside it.
Exit status 0 whatever the verdict (a missing file or a run cut short is named, not fatal)."""
import os
import re
import sys

# transformers 5.17 + peft 0.21 + torch 2.11, bf16 eager, on an H100 80GB (issue 5's reference)
PEFT = {"7B": {"train": 8800.0, "b1": 11.7, "b32": 467.0, "prefill": 16800.0},
        "0.5B": {"train": 32100.0, "b1": 13.7, "b32": 530.0, "prefill": 18600.0}}
ROW = re.compile(r"^\| Qwen2\.5-(0\.5B|7B) shape \|(.*)\|\s*$")
TRAIN = re.compile(r"(\d+(?:\.\d+)?) \(peak ([\d.]+) GiB\)")
PEER = re.compile(r"^peft (0\.5B|7B): train (\d+) tok/s .*peak ([\d.]+) GiB.* on (.+)$")
LORA = re.compile(r"with a LoRA adapter \(r 16, all seven projections\): decode b1 ([\d.]+) ms/token \(([+-][\d.]+)%\)"
                  r"(?:, b32 with 16 of the 32 sequences on it ([\d.]+) ms/step \(([+-][\d.]+)%\))?")
DECODE = re.compile(r"decode b1 ([\d.]+) ms/token \(roofline ([\d.]+) ms at (\d+) GB/s\)(?:; decode b32 ([\d.]+) ms/step)?")
NOISE = 2.0  # percent: one profiled step per run, so smaller differences say little


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError as e:
        print(f"-- {path}: {e.strerror}")
        return []


def cells(line):
    m = ROW.match(line)
    return (m.group(1), [c.strip() for c in m.group(2).split("|")]) if m else (None, None)


def num(s):
    try:
        return float(s.rstrip("%"))
    except ValueError:
        return None


def verdict(ok):
    return "MET" if ok else "MISSED"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "/tmp/prism-gpu")
    bench, var = read(os.path.join(out, "bench.md")), read(os.path.join(out, "bench_variants.log"))
    # transformers + peft measured in the same run (scripts/peft_bench.py), where it ran: the training peer
    peer = {m.group(1): (float(m.group(2)), float(m.group(3)), m.group(4)) for m in map(PEER.match, bench) if m}
    for shape, (tps, peak, card) in peer.items():
        PEFT[shape]["train"] = tps
    print("== verdict: issue 5's targets (this run's card; peft's training numbers "
          + (f"for {', '.join(peer)} measured in this run on " + next(iter(peer.values()))[2] if peer
             else "are the issue's, H100 80GB")
          + "; its decode and prefill numbers are the issue's, H100 80GB)")
    table, dec = {}, {}
    for line in bench:
        shape, c = cells(line)
        if shape and len(c) >= 6:
            table[shape] = c
        m = DECODE.search(line)
        if m and line.startswith("Qwen2.5-"):
            dec[line.split(" shape")[0].replace("Qwen2.5-", "")] = tuple(float(x) for x in m.groups())
    for line in bench:
        m = LORA.search(line)
        if m and line.startswith("Qwen2.5-"):
            shape = line.split(" shape")[0].replace("Qwen2.5-", "")
            b32 = f"; batch 32 with 16 sequences on it {m.group(3)} ms/step ({m.group(4)}%)" if m.group(3) else ""
            print(f"{shape} decode with a LoRA adapter (PRISM's routed generation): batch 1 {m.group(1)} ms/token "
                  f"({m.group(2)}% over the base model's step){b32}")
    if "7B" in dec:
        b1, roof, bw, b32 = dec["7B"]
        print(f"7B batch-1 decode: {b1:.2f} ms/token, roofline {roof:.2f} ms at {bw:.0f} GB/s: {100 * roof / b1:.1f}% "
              f"(target >= 80%): {verdict(roof / b1 >= 0.80)}")
    else:
        print("7B batch-1 decode: no bench_gpu line for the 7B shape in bench.md")
    for shape in ("7B", "0.5B"):
        c = table.get(shape)
        if not c:
            print(f"{shape}: no row in bench.md's table")
            continue
        ref = PEFT[shape]
        b32 = num(c[3])
        if b32 is not None:
            extra = f" (target >= 3,000): {verdict(b32 >= 3000)}" if shape == "7B" else ""
            print(f"{shape} batch-32 decode: {b32:,.0f} tok/s, {b32 / ref['b32']:.1f}x peft{extra}")
        pf = num(c[0])
        if pf is not None:
            print(f"{shape} prefill (512 tokens): {pf:,.0f} tok/s, {pf / ref['prefill']:.2f}x peft")
        m = TRAIN.search(c[5]) if len(c) > 5 else None
        if m:
            tr = float(m.group(1))
            extra = f" (target >= 2x = {2 * ref['train']:,.0f}): {verdict(tr >= 2 * ref['train'])}"
            src = (f"peft {ref['train']:,.0f} tok/s at {peer[shape][1]:.1f} GiB in this run" if shape in peer
                   else f"peft {ref['train']:,.0f} tok/s, the issue's H100 figure")
            print(f"{shape} LoRA training: {tr:,.0f} tok/s at {m.group(2)} GiB peak, {tr / ref['train']:.2f}x peft "
                  f"({src}){extra}")
    for line in bench:
        if line.startswith("| the 8 projections' GEMMs"):
            c = [x.strip() for x in line.strip("|").split("|")]
            print(f"frozen GEMMs of a 7B example, timed alone: {c[3]} ms at {c[4]} TFLOP/s")
        elif line.startswith("| the same with each GEMM's faster choice"):
            c = [x.strip() for x in line.strip("|").split("|")]
            print(f"  the same, each GEMM by the faster of cuBLAS's default and cuBLASLt's best: {c[5]} ms at {c[6]} TFLOP/s"
                  " (what PRISM_CUDA_GEMM_TUNE can gain)")
        elif line.startswith("| 8192"):
            c = [x.strip() for x in line.strip("|").split("|")]
            print(f"8192^3 BF16 GEMM on this card: {c[4]} TFLOP/s")

    # training runs: "== bench_gpu ARGS" or "== bench_gpu --shape 7b with WHAT (ENV=V)", then a table row
    runs, head = [], None
    for line in var:
        if line.startswith("== bench_gpu"):
            head = line[3:].strip()
        elif head:
            shape, c = cells(line)
            m = TRAIN.search(c[5]) if c and len(c) > 5 else None
            if m:
                runs.append((head, shape, float(m.group(1)), float(m.group(2))))
                head = None
    base = next((r for r in runs if r[0] == "bench_gpu --shape 7b"), None)
    if runs:
        print("training runs (PRISM_CUDA_PROFILE=1, one step each, against the default 7B run beside them):")
    for head, shape, tr, peak in runs:
        env = re.search(r"\(([A-Z_]+=\S+)\)$", head)
        label = env.group(1) if env else head.replace("bench_gpu ", "")
        rel = ""
        if base and shape == "7B" and (head, tr) != (base[0], base[2]):
            d = 100.0 * (tr / base[2] - 1.0)
            rel = f" {d:+.1f}%"
            if abs(d) <= NOISE:
                rel += " (within noise)"
            elif env and (env.group(1).split("=")[0] in ("PRISM_CUDA_FROZEN_SPLIT", "PRISM_CUDA_GU_REMAKE", "PRISM_CUDA_GEMM_TUNE")
                          or env.group(1) in ("PRISM_CUDA_LORA_SPLIT=2", "PRISM_CUDA_LORA_FUSE=1")):
                rel += " -> faster: make it the default (confirm with a rerun)" if d > 0 else " -> keep the default"
            elif env and d > 0:
                rel += " -> the baseline is faster than the default: look at it"
        print(f"  {label:<28} {shape:>4} {tr:>9,.0f} tok/s  peak {peak:5.2f} GiB{rel}")

    decs = [(l.split(":")[0], DECODE.search(l)) for l in var if re.match(r"^PRISM_CUDA_[A-Z_]+=\S+: ", l)]
    decs = [(e, m) for e, m in decs if m]
    if decs:
        print("7B batch-1 decode variants (their own roofline measurement each):")
        b1 = dec.get("7B", (None,))[0]
        for e, m in decs:
            v, roof = float(m.group(1)), float(m.group(2))
            d = f", {100 * (v / b1 - 1):+.1f}% time vs the table" if b1 else ""
            if b1 and 100 * (v / b1 - 1) < -NOISE:
                d += " -> faster than the default: look at it"
            b32 = f", b32 {float(m.group(4)):.2f} ms/step" if m.group(4) else ""
            print(f"  {e:<28} {v:.2f} ms/token ({100 * roof / v:.1f}% of roofline){b32}{d}")
    lds = [(l.split(":")[0].replace("lora-decode ", ""), LORA.search(l)) for l in var if l.startswith("lora-decode ")]
    if any(m for _, m in lds):
        print("7B batch-1 decode with a LoRA adapter (each run against its own base step):")
        for e, m in lds:
            if m:
                print(f"  {e:<28} {float(m.group(1)):.2f} ms/token ({m.group(2)}% over the base model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
