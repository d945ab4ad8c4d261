#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ when a nightly toolchain and cargo-fuzz are present
# (skips with a note otherwise): first each target's past crashes in fuzz/regressions/TARGET/,
# then fuzzing. Usage: .ci/fuzz.sh [SECONDS] [TARGET..]
# - By default each target runs SECONDS (default 20, or $NTK_FUZZ_SECONDS) with a random seed,
#   growing the local corpus fuzz/corpus/TARGET/.
# - With NTK_FUZZ_SEED set (CI), each target runs NTK_FUZZ_RUNS inputs (default 10000) from an
#   empty corpus with that libFuzzer seed: the run depends only on the commit, not on the
#   machine's speed, so running it here reproduces CI (SECONDS, default 600 then, only caps a
#   stuck run).
# Exits non-zero on the first crash; the crashing input is left in fuzz/artifacts/TARGET/
# (copy it to fuzz/regressions/TARGET/ with the fix).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
log="$scratch/log"
# budget: libFuzzer's limits besides the time cap; corpora: where each target's corpus lives.
if [ -n "${NTK_FUZZ_SEED:-}" ]; then
    secs="${1:-${NTK_FUZZ_SECONDS:-600}}"
    budget=(-runs="${NTK_FUZZ_RUNS:-10000}" -seed="$NTK_FUZZ_SEED")
    corpora="$scratch/corpus"
    label="${NTK_FUZZ_RUNS:-10000} inputs (seed $NTK_FUZZ_SEED, empty corpus)"
else
    secs="${1:-${NTK_FUZZ_SECONDS:-20}}"
    budget=()
    corpora="corpus"
    label="${secs}s"
fi
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain, skipped"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz not installed (cargo install cargo-fuzz --locked), skipped"
    exit 0
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O --target-dir "$target_dir"
# run TARGET WHAT CORPUS [LIBFUZZER ARGS..]: fails the script with the log's tail on a crash.
run() {
    local t="$1" what="$2" corpus="$3"
    shift 3
    if ! cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" "$corpus" -- \
        -rss_limit_mb=2048 -timeout=20 "$@" >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED${what:+ $what} (input in fuzz/artifacts/$t/)"
        exit 1
    fi
}
for t in "${targets[@]}"; do
    if [ -d "regressions/$t" ]; then
        n=$(find "regressions/$t" -type f | wc -l)
        echo "fuzz: $t: $n past crashes"
        # -runs=0 only executes the given inputs; a copy keeps the directory unchanged.
        mkdir -p "$scratch/past-$t"
        cp "regressions/$t"/* "$scratch/past-$t/"
        run "$t" "on a past crash" "$scratch/past-$t" -runs=0
    fi
    mkdir -p "$corpora/$t"
    echo "fuzz: $t, $label"
    run "$t" "" "$corpora/$t" -max_total_time="$secs" -print_final_stats=1 "${budget[@]}"
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | sed "s/^/fuzz: $t: /" || true
done
echo "fuzz: all targets passed"
