#!/usr/bin/env bash
# Replays every committed seed corpus, then fuzzes each target for a short
# smoke (FUZZ_SECONDS, default 20). Stable Rust: no sanitizer (`-s none`),
# debug assertions on (`-a`). New inputs go to a temporary directory, so the
# committed corpora only change when someone copies findings in on purpose.
# Installs cargo-fuzz if it is missing. Usage: fuzz/smoke.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -s none -a
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# run TARGET ARGS...: one cargo fuzz run; its summary line, or on failure
# the end of its output (a crash input is saved under fuzz/artifacts/TARGET/).
run() {
    if cargo fuzz run -s none -a "$@" >"$scratch/log" 2>&1; then
        grep -E '^Done' "$scratch/log" || true
    else
        tail -n 40 "$scratch/log"
        echo "fuzz/smoke.sh: $1 failed; reproduce with: cargo fuzz run -s none -a $1 fuzz/artifacts/$1/<file>" >&2
        exit 1
    fi
}

for target in "${targets[@]}"; do
    echo "-- $target: replay corpus/$target"
    run "$target" "corpus/$target" -- -runs=0
    echo "-- $target: fuzz ${seconds}s"
    mkdir -p "$scratch/$target"
    run "$target" "$scratch/$target" "corpus/$target" -- -max_total_time="$seconds"
done
