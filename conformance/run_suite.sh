#!/usr/bin/env bash
# Run the Kastell DICOMweb conformance suite against a freshly started server.
#
#   conformance/run_suite.sh [extra pytest args...]
#
# Env: KASTELL_BIN (default $HOME/.cache/kastell-target/debug/kastell),
#      KASTELL_PORT (default: a free loopback port), KEEP_TMP=1 keeps the temp dir,
#      KASTELL_INDEX_URL (default: SQLite under the data dir) is passed as --index-url,
#      e.g. postgres://postgres@127.0.0.1/kastell_test_x (the database must exist).
#      KASTELL_BLOB_URL (default: the server's own, file://<data-dir>/blobs) is
#      passed as --blob-url, e.g. s3://kastell-test/suite or az://kastell-test/suite
#      with the AWS_* / AZURE_* variables that tests/backends/start_*.sh print
#      (the whole environment reaches the server and pytest). The server makes
#      its own development master key only for its default file store, so with
#      KASTELL_BLOB_URL set and neither KASTELL__KEYS__MASTER_KEY nor
#      KASTELL__KEYS__MASTER_KEY_FILE given, a random key for this run is
#      written to the temp dir and passed as KASTELL__KEYS__MASTER_KEY_FILE.
# pytest sees KASTELL_URL, KASTELL_FIXTURES, KASTELL_DATA_DIR and, when set,
# KASTELL_BLOB_URL.
#      KASTELL_LOG_PRIVACY=1 greps the server log for the fixtures' patient data.
# Exit code: pytest's (or 1 when the log check fails).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
bin="${KASTELL_BIN:-$HOME/.cache/kastell-target/debug/kastell}"
if [[ ! -x "$bin" ]]; then
    echo "run_suite: server binary not found or not executable: $bin" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kastell-conf.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" != "1" ]]; then rm -rf "$tmp"; else echo "run_suite: kept $tmp" >&2; fi
}
trap cleanup EXIT INT TERM

port="${KASTELL_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}"
mkdir -p "$tmp/data"
blob_args=()
if [[ -n "${KASTELL_BLOB_URL:-}" ]]; then
    blob_args=(--blob-url "$KASTELL_BLOB_URL")
    if [[ -z "${KASTELL__KEYS__MASTER_KEY:-}" && -z "${KASTELL__KEYS__MASTER_KEY_FILE:-}" ]]; then
        (umask 077 && python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' \
            >"$tmp/master.key")
        export KASTELL__KEYS__MASTER_KEY_FILE="$tmp/master.key"
    fi
fi
index_args=()
if [[ -n "${KASTELL_INDEX_URL:-}" ]]; then
    index_args=(--index-url "$KASTELL_INDEX_URL")
fi
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" "${blob_args[@]}" "${index_args[@]}" >"$tmp/server.log" 2>&1 &
server_pid=$!

python3 "$here/fixtures.py" "$tmp/fixtures" >/dev/null

health="http://127.0.0.1:$port/healthz"
for i in $(seq 1 150); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run_suite: server exited early; log follows" >&2
        cat "$tmp/server.log" >&2
        exit 3
    fi
    if python3 -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('$health', timeout=1).status == 200 else 1)" 2>/dev/null; then
        break
    fi
    if [[ $i -eq 150 ]]; then
        echo "run_suite: server not healthy after 30s; log follows" >&2
        cat "$tmp/server.log" >&2
        exit 3
    fi
    sleep 0.2
done

export PYTHONDONTWRITEBYTECODE=1
export KASTELL_URL="http://127.0.0.1:$port/dicomweb"
export KASTELL_FIXTURES="$tmp/fixtures"
export KASTELL_DATA_DIR="$tmp/data"
if [[ -n "${KASTELL_BLOB_URL:-}" ]]; then
    export KASTELL_BLOB_URL
fi
cd "$repo"
set +e
python3 -m pytest -q -p no:cacheprovider conformance/suite "$@"
rc=$?
set -e
# KASTELL_LOG_PRIVACY=1: the server ran with the log level the caller chose (e.g.
# RUST_LOG=trace); no patient name, ID or UID of the fixtures may be in its log.
if [[ $rc -eq 0 && "${KASTELL_LOG_PRIVACY:-0}" == "1" ]]; then
    python3 "$here/log_privacy.py" "$tmp/server.log" "$tmp/fixtures/manifest.json" || rc=1
fi
if [[ $rc -ne 0 && "${SHOW_SERVER_LOG:-0}" == "1" ]]; then
    echo "---- server log (tail) ----" >&2
    tail -n 200 "$tmp/server.log" >&2
fi
exit $rc
