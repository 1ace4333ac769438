#!/bin/sh
# Runs every test binary in build/tests (or $1), sums their "N passed, N failed"
# lines and prints the total as the closing line. Exits non-zero on any failure.
B=${1:-build}
total_p=0; total_f=0; crashed=0
for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    out=$("$t" 2>&1); rc=$?
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    if [ -z "$line" ]; then
        printf '%s\n' "$out" | tail -20
        echo "== $name: crashed or printed no summary (exit $rc)"
        crashed=$((crashed + 1)); total_f=$((total_f + 1)); continue
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    total_p=$((total_p + p)); total_f=$((total_f + f))
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
        printf '%s\n' "$out" | grep -E 'FAIL' | head -40
        echo "== $name: $line (exit $rc)"
        [ "$f" -eq 0 ] && total_f=$((total_f + 1))
    else
        echo "== $name: $line"
    fi
done
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
