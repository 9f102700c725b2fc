#!/usr/bin/env bash
# Stop an emulator started by start_s3.sh or start_azurite.sh and remove its
# state dir:  tests/backends/stop.sh STATE_DIR   (KEEP_TMP=1 keeps the dir).
# Safe to call twice, or on a dir whose emulator never started.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state="${1:?usage: stop.sh STATE_DIR}"
[[ -d "$state" ]] || exit 0
if [[ -s "$state/pid" ]]; then
    stop_pid "$(cat "$state/pid")"
fi
if [[ "${KEEP_TMP:-0}" == "1" ]]; then
    say "kept $state"
else
    rm -rf "$state"
fi
