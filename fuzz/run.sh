#!/usr/bin/env bash
# Kastell's fuzz targets, each for SECONDS (default 20): installs cargo-fuzz if
# missing, builds the targets (nightly, libFuzzer, no sanitizer: Kastell is safe
# Rust and this doubles the executions), makes the seed corpora from pydicom's
# test files (fuzz/make_corpus.py), replays every saved crash reproducer
# (fuzz/regressions/<target>/), then fuzzes. Fails if any target crashes, leaks
# past its memory limit (1 GiB of RSS: without a sanitizer libFuzzer cannot
# check single allocations) or hangs (10 s); the input that did it is left in
# fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-20}"
shift || true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The instrumented build is kept apart from the main one (tests/run-all.sh sets
# CARGO_TARGET_DIR for that), outside the clone like the main one so that
# repeated runs on one machine reuse it; it still builds from empty.
export CARGO_TARGET_DIR="${KASTELL_FUZZ_TARGET_DIR:-$HOME/.cache/kastell-fuzz-target}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

echo "building the fuzz targets"
cargo +nightly fuzz build --sanitizer none
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

echo "making the seed corpora"
rm -rf corpus
python3 make_corpus.py corpus

# The longest input each target takes: DICOM streams and bodies are cut to
# 64 KiB by make_corpus.py; queries and headers are short.
max_len() {
    case "$1" in
        qido_query | accept_range) echo 4096 ;;
        blob_container) echo 16384 ;;
        *) echo 65536 ;;
    esac
}

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "artifacts/$target" "corpus/$target"
    options=(
        -max_len="$(max_len "$target")"
        -rss_limit_mb="${KASTELL_FUZZ_RSS_MB:-1024}"
        -timeout=10
        -artifact_prefix="artifacts/$target/"
        -print_final_stats=1
    )
    if compgen -G "regressions/$target/*" >/dev/null; then
        echo "replaying the reproducers of $target"
        if ! "$bin/$target" "${options[@]}" "regressions/$target"/* >"logs/$target.regressions.log" 2>&1; then
            echo "FAILED: a saved reproducer of $target crashes again (logs/$target.regressions.log)"
            failed+=("$target (reproducer)")
        fi
    fi
    # A fixed seed and a fixed number of runs: the same inputs every time, so
    # the test command does not turn red at random on a finding a longer run
    # would make at any moment (those runs are fuzz/README.md's); KASTELL_FUZZ_SEED
    # and KASTELL_FUZZ_RUNS=0 (run for SECONDS instead) explore.
    runs="${KASTELL_FUZZ_RUNS:-30000}"
    if [[ "$runs" == 0 ]]; then
        limit=(-max_total_time="$seconds")
        echo "fuzzing $target for ${seconds}s"
    else
        limit=(-runs="$runs" -max_total_time="$seconds" -seed="${KASTELL_FUZZ_SEED:-20261203}")
        echo "fuzzing $target: $runs inputs from seed ${KASTELL_FUZZ_SEED:-20261203} (at most ${seconds}s)"
    fi
    if "$bin/$target" "${options[@]}" "${limit[@]}" "corpus/$target" >"logs/$target.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|new_units_added)|^#[0-9]+ +DONE' "logs/$target.log" || true
    else
        echo "FAILED: $target crashed; input in artifacts/$target/, log in logs/$target.log"
        grep -E '^==[0-9]+==|panicked at|^SUMMARY' "logs/$target.log" | head -5 || true
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
echo "every fuzz target ran without a crash"
