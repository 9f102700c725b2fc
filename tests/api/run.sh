#!/usr/bin/env bash
# Property-based API test: schemathesis against the OpenAPI document the real
# server serves (GET /dicomweb/openapi.json, generated from its route table).
# Starts Kastell on loopback with the embedded defaults in a temp dir, stores a
# few of pydicom's test files (tests/api/store.py) so that real UIDs exist, runs
# schemathesis bounded in examples and time, then checks the server still answers.
# Any 5xx, dropped connection or timeout fails the step (see CHECKS below).
#
#   tests/api/run.sh [extra schemathesis args...]
#
# Needs python3 with pydicom and requests (conformance/requirements.txt) for the
# STOW-RS of the fixtures; schemathesis itself is installed into a venv.
# Env: KASTELL_BIN (default $CARGO_TARGET_DIR/debug/kastell),
#      KASTELL_API_MAX_EXAMPLES (default 25 per operation and phase),
#      KASTELL_API_MAX_TIME (default 110 s for the schemathesis run, then up to 15 s
#      for the DELETE operations),
#      KASTELL_API_SEED (default fixed, so that a red run reproduces; "random" for
#      a fresh seed), KASTELL_SCHEMATHESIS_VENV (default ~/.cache/kastell-schemathesis),
#      KEEP_TMP=1 keeps the temp dir (server log, schemathesis report).
# Nothing leaves loopback: the server listens on 127.0.0.1 without an OTLP
# exporter, proxies are bypassed, redirects are not followed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
SCHEMATHESIS_VERSION=4.32.5
# not_a_server_error: no 5xx. status_code_conformance, content_type_conformance,
# response_schema_conformance: the document says what the server answers.
# unsupported_method: other methods get 405 with Allow. Left out:
# positive_data_acceptance (a well-formed random UID is a 404, not a success),
# negative_data_rejection (DICOMweb ignores unknown query keys and renders
# from lenient values by design), response_headers_conformance and the
# stateful checks (no links in the document).
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,unsupported_method

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
bin="${KASTELL_BIN:-$target_dir/debug/kastell}"
venv="${KASTELL_SCHEMATHESIS_VENV:-$HOME/.cache/kastell-schemathesis}"
max_examples="${KASTELL_API_MAX_EXAMPLES:-25}"
max_time="${KASTELL_API_MAX_TIME:-110}"
seed="${KASTELL_API_SEED:-20261203}"
[[ -x "$bin" ]] || { echo "api: server binary not found: $bin (cargo build first)" >&2; exit 2; }

if [[ ! -x "$venv/bin/st" ]] || ! "$venv/bin/st" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kastell-api.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" == "1" ]]; then echo "api: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT INT TERM

# Loopback only: no proxy for anything, no telemetry export.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy OTEL_EXPORTER_OTLP_ENDPOINT
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
mkdir -p "$tmp/data"
KASTELL__TELEMETRY__OTLP_ENDPOINT="" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" >"$tmp/server.log" 2>&1 &
server_pid=$!
origin="http://127.0.0.1:$port"

alive() {
    kill -0 "$server_pid" 2>/dev/null &&
        python3 -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('$origin/healthz', timeout=5).status == 200 else 1)" 2>/dev/null
}
for i in $(seq 1 150); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "api: server exited early; log follows" >&2
        cat "$tmp/server.log" >&2
        exit 3
    fi
    alive && break
    if [[ $i -eq 150 ]]; then
        echo "api: server not healthy after 30s; log follows" >&2
        cat "$tmp/server.log" >&2
        exit 3
    fi
    sleep 0.2
done

python3 "$here/store.py" "$origin/dicomweb" "$tmp/known.json"

seed_args=(--seed "$seed")
[[ "$seed" == "random" ]] && seed_args=()
schemathesis() {
    # From the temp dir: schemathesis keeps a cache of failing cases (.schemathesis/)
    # in its working directory.
    (cd "$tmp" && PYTHONPATH="$here" SCHEMATHESIS_HOOKS=hooks KASTELL_API_KNOWN="$tmp/known.json" \
        "$venv/bin/st" run "$origin/dicomweb/openapi.json" \
        --url "$origin" \
        --checks "$CHECKS" \
        --mode all \
        --phases examples,coverage,fuzzing \
        --max-examples "$max_examples" \
        --request-timeout 30 \
        --max-redirects 0 \
        --workers 2 \
        --generation-database none \
        --suppress-health-check too_slow,filter_too_much,data_too_large \
        --no-color \
        "${seed_args[@]}" "$@")
}
# Everything but DELETE, then DELETE on its own: deleting the stored studies while
# the others run would leave them only 404 and 410 to test.
rc=0
schemathesis --exclude-method DELETE --max-time "$max_time" \
    --report junit --report-dir "$tmp/report" "$@" || rc=1
schemathesis --include-method DELETE --max-time 15 "$@" || rc=1

if ! alive; then
    echo "api: the server is down after the run; log tail follows" >&2
    tail -n 100 "$tmp/server.log" >&2
    exit 1
fi
if grep -q "panicked" "$tmp/server.log"; then
    echo "api: a handler panicked (the process survived); log lines follow" >&2
    grep -A3 "panicked" "$tmp/server.log" | head -n 40 >&2
    rc=1
fi
if [[ $rc -ne 0 ]]; then
    echo "api: schemathesis found failures (reproduce with the curl commands above; KEEP_TMP=1 keeps the server log)" >&2
    [[ "${SHOW_SERVER_LOG:-0}" == "1" ]] && tail -n 200 "$tmp/server.log" >&2
fi
exit $rc
