#!/usr/bin/env bash
# Run the DICOMweb conformance suite once per emulated cloud blob store, each
# emulator on loopback and stopped afterwards whatever happens:
#
#   tests/backends/run_suites.sh [s3] [azure]     (default: both, in that order)
#
#   s3     moto's S3 server, KASTELL_BLOB_URL=s3://kastell-test/suite
#   azure  Azurite,          KASTELL_BLOB_URL=az://kastell-test/suite
#   (the bucket and container are named by KASTELL_S3_BUCKET and
#   KASTELL_AZURE_CONTAINER, default kastell-test)
#
# Env: KASTELL_BIN as for conformance/run_suite.sh; extra pytest arguments can be
# given in KASTELL_PYTEST_ARGS (e.g. "-k privacy"). Exits non-zero on the first
# failing step. tests/run-all.sh calls this after the file-backend run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

step() { printf '\n==> %s\n' "$*"; }

states=()
stop_all() {
    local s
    for s in "${states[@]}"; do tests/backends/stop.sh "$s" || true; done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

read -r -a pytest_args <<<"${KASTELL_PYTEST_ARGS:-}"

# run_on NAME START_SCRIPT SCHEME CONTAINER_VARIABLE: start the emulator, run the
# suite with the emulator's environment on SCHEME://<its bucket>/suite, stop it.
run_on() {
    local name="$1" start="$2" scheme="$3" container_var="$4" state
    state="$(mktemp -d "${TMPDIR:-/tmp}/kastell-$name.XXXXXX")"
    states+=("$state")
    step "starting $name on loopback"
    "$start" "$state" >/dev/null
    (
        # shellcheck disable=SC1091
        source "$state/env"
        url="$scheme://${!container_var}/suite"
        step "DICOMweb conformance suite with blob store $url ($name)"
        KASTELL_BLOB_URL="$url" conformance/run_suite.sh ${pytest_args[@]+"${pytest_args[@]}"}
    )
    step "stopping $name"
    tests/backends/stop.sh "$state"
}

backends=("$@")
[[ ${#backends[@]} -gt 0 ]] || backends=(s3 azure)
for b in "${backends[@]}"; do
    case "$b" in
        s3) run_on moto tests/backends/start_s3.sh s3 KASTELL_S3_BUCKET ;;
        azure | az) run_on azurite tests/backends/start_azurite.sh az KASTELL_AZURE_CONTAINER ;;
        *) echo "run_suites.sh: unknown backend $b (s3, azure)" >&2; exit 2 ;;
    esac
done
