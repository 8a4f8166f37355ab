#!/usr/bin/env bash
# Runs the coverage-guided fuzzers (cargo-fuzz, libFuzzer; fuzz/ and
# docs/fuzzing.md): one target or every one, SECONDS each (default 60).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]
#
# Each run starts from the seeds in fuzz/corpus/TARGET and what earlier
# runs found (fuzz/work/TARGET, not committed), and prints the target's
# executions, coverage (libFuzzer's cov: edges and ft: features) and any
# crash, which libFuzzer saves under fuzz/artifacts/TARGET/. Every run is
# also appended to fuzz/work/runs.tsv with the seconds it really ran, so
# the time each target has been fuzzed in all adds up:
#   awk -F'\t' 'NR>1 {t[$2]+=$3} END {for (k in t) print k, t[k]}' fuzz/work/runs.tsv
# Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-all}"
seconds="${2:-60}"
case "$seconds" in
'' | *[!0-9]*)
    echo "fuzz.sh: SECONDS must be a number, not '$seconds'" >&2
    exit 2
    ;;
esac

# cargo-fuzz needs a nightly toolchain (-Z sanitizer flags).
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
all=()
for f in fuzz_targets/*.rs; do
    all+=("$(basename "$f" .rs)")
done
if [ "$target" = all ]; then
    targets=("${all[@]}")
elif [ -f "fuzz_targets/$target.rs" ]; then
    targets=("$target")
else
    echo "fuzz.sh: no target '$target'; the targets are: ${all[*]}" >&2
    exit 2
fi

if [ "$target" = all ]; then
    cargo +nightly fuzz build
else
    cargo +nightly fuzz build "$target"
fi
mkdir -p work
[ -f work/runs.tsv ] || printf 'date\ttarget\tseconds\texecutions\tcov\tft\tcorpus\tcrash\n' >work/runs.tsv

crashed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    echo "== $t: ${seconds}s"
    rc=0
    start=$(date +%s)
    # -timeout: an input running 10 s is a hang, reported like a crash.
    cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=4096 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    # What the target really ran: a crash ends the run early.
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ "$rc" -ne 0 ] && [ -z "$crash" ]; then
        crash="(libFuzzer exited $rc without an artifact; see fuzz/$log)"
    fi
    if [ -n "$crash" ]; then
        crashed=1
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" | head -5 || true
    fi
    line="$t: ${elapsed}s, ${execs:-0} executions, cov ${cov:-?} edges, ft ${ft:-?}, corpus ${corp:-?}, crash: ${crash:-none}"
    echo "$line"
    summary+=("$line")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$elapsed" \
        "${execs:-0}" "${cov:-}" "${ft:-}" "${corp:-}" "${crash:-}" >>work/runs.tsv
done

echo
echo "== summary (${seconds}s per target; logs in fuzz/work/TARGET.log)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
