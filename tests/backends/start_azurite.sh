#!/usr/bin/env bash
# Start Azure's storage emulator (Azurite, blob service only) on a free loopback
# port, create the test container, and print the environment Kastell and the
# suite need as `export` lines on stdout (everything else goes to stderr):
#
#   eval "$(tests/backends/start_azurite.sh)"  # or: start_azurite.sh STATE_DIR
#   KASTELL_BLOB_URL="az://$KASTELL_AZURE_CONTAINER/suite" conformance/run_suite.sh
#   tests/backends/stop.sh "$KASTELL_AZURITE_STATE"
#
# The same lines are written to STATE_DIR/env (STATE_DIR defaults to a new temp
# dir); STATE_DIR/pid holds the emulator's pid, STATE_DIR/azurite.log its output
# and STATE_DIR/data its storage.
# Installs azurite@3 from npm into KASTELL_NPM_CACHE (default
# ~/.cache/kastell-npm, outside the repo) and azure-storage-blob with pip when
# they are missing.
# Env: KASTELL_AZURE_CONTAINER (default kastell-test), KASTELL_NPM_CACHE.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state="${1:-$(mktemp -d "${TMPDIR:-/tmp}/kastell-azurite.XXXXXX")}"
mkdir -p "$state/data"
container="${KASTELL_AZURE_CONTAINER:-kastell-test}"
npm_dir="${KASTELL_NPM_CACHE:-$HOME/.cache/kastell-npm}"
azurite="$npm_dir/node_modules/.bin/azurite-blob"

if [[ ! -x "$azurite" ]]; then
    command -v npm >/dev/null || die "npm is needed to install azurite (Node.js 18+)"
    say "installing azurite@3 into $npm_dir (npm)"
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error azurite@3 >&2
fi
if ! "$PYTHON" -c 'import azure.storage.blob' 2>/dev/null; then
    say "installing azure-storage-blob (pip)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'azure-storage-blob>=12.19' >&2
fi

started=""
for attempt in 1 2 3; do # a free port can be taken between choosing and binding it
    port="$(free_port)"
    if start_emulator "$state" azurite "http://127.0.0.1:$port/devstoreaccount1?comp=list" \
        "$azurite" --blobHost 127.0.0.1 --blobPort "$port" --location "$state/data" \
        --skipApiVersionCheck --loose --disableTelemetry; then
        started=1
        break
    fi
    say "azurite did not start on port $port (attempt $attempt); log follows"
    cat "$state/azurite.log" >&2
done
[[ -n "$started" ]] || die "could not start azurite"
pid="$(cat "$state/pid")"

export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$port"
if ! "$PYTHON" "$backends_dir/blobctl.py" az create "$container" >&2; then
    stop_pid "$pid"
    die "could not create container $container"
fi
say "azurite (pid $pid) serves blobs at $AZURITE_BLOB_STORAGE_URL/devstoreaccount1, container $container"

# object_store's MicrosoftAzureBuilder::from_env: emulator mode uses the
# well-known devstoreaccount1 account and key by itself.
write_env "$state" \
    AZURE_STORAGE_USE_EMULATOR=true \
    AZURITE_BLOB_STORAGE_URL="$AZURITE_BLOB_STORAGE_URL" \
    AZURE_ALLOW_HTTP=true \
    KASTELL_AZURE_CONTAINER="$container" \
    KASTELL_AZURITE_PID="$pid" \
    KASTELL_AZURITE_STATE="$state"
