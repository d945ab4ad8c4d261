#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time when a nightly toolchain and
# cargo-fuzz are present (skips with a note otherwise). Usage: .ci/fuzz.sh [SECONDS] [TARGET..]
# SECONDS per target (default 20, or $NTK_FUZZ_SECONDS). Exits non-zero on the first crash;
# the crashing input is left in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${NTK_FUZZ_SECONDS:-20}}"
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
for t in "${targets[@]}"; do
    echo "fuzz: $t for ${secs}s"
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    if ! cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
        rm -f "$log"
        exit 1
    fi
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$log" | sed "s/^/fuzz: $t: /" || true
    rm -f "$log"
done
echo "fuzz: all targets passed"
