#!/usr/bin/env bash
# Kastell's whole test suite, the one command the README names and .ci/run calls.
# Installs what it needs (Python packages for the black-box suite), checks
# formatting and lints, runs the Rust unit and integration tests, then starts the
# real server and runs the DICOMweb conformance suite against it: on the local
# file blob store, then on a real S3-compatible server (moto) and on Azure's
# emulator (Azurite), both started on loopback by tests/backends/.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "installing the Python packages of the conformance suite"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r conformance/requirements.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo build"
cargo build --locked

step "cargo test (unit and integration tests)"
cargo test --locked

step "DICOMweb conformance suite against the running server"
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" conformance/run_suite.sh

# The same suite on emulated cloud blob stores, each on loopback and stopped by
# a trap whatever happens: moto's S3 server, then Azurite (installed from npm
# into ~/.cache/kastell-npm when missing). Prints its own ==> steps.
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" tests/backends/run_suites.sh s3 azure

step "all tests passed"
