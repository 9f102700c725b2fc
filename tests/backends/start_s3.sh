#!/usr/bin/env bash
# Start a real S3-compatible server (moto's standalone server) on a free loopback
# port, create the test bucket, and print the environment Kastell and the suite
# need as `export` lines on stdout (everything else goes to stderr):
#
#   eval "$(tests/backends/start_s3.sh)"       # or: start_s3.sh STATE_DIR
#   KASTELL_BLOB_URL="s3://$KASTELL_S3_BUCKET/suite" conformance/run_suite.sh
#   tests/backends/stop.sh "$KASTELL_S3_STATE"
#
# The same lines are written to STATE_DIR/env (STATE_DIR defaults to a new temp
# dir); STATE_DIR/pid holds the server's pid and STATE_DIR/moto.log its output.
# Installs moto[server] with pip when it is missing.
# Env: KASTELL_S3_BUCKET (default kastell-test).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state="${1:-$(mktemp -d "${TMPDIR:-/tmp}/kastell-s3.XXXXXX")}"
mkdir -p "$state"
bucket="${KASTELL_S3_BUCKET:-kastell-test}"

if ! "$PYTHON" -c 'import moto.server, flask, flask_cors, boto3' 2>/dev/null; then
    say "installing moto[server] (pip)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'moto[server]>=5,<6' >&2
fi

# Credentials are arbitrary (moto checks none); they only have to be present.
export AWS_ACCESS_KEY_ID=kastell-test
export AWS_SECRET_ACCESS_KEY=kastell-test-secret
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1

started=""
for attempt in 1 2 3; do # a free port can be taken between choosing and binding it
    port="$(free_port)"
    if start_emulator "$state" moto "http://127.0.0.1:$port/" \
        "$PYTHON" -m moto.server -H 127.0.0.1 -p "$port"; then
        started=1
        break
    fi
    say "moto did not start on port $port (attempt $attempt); log follows"
    cat "$state/moto.log" >&2
done
[[ -n "$started" ]] || die "could not start moto"
pid="$(cat "$state/pid")"

export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
if ! "$PYTHON" "$backends_dir/blobctl.py" s3 create "$bucket" >&2; then
    stop_pid "$pid"
    die "could not create bucket $bucket"
fi
say "moto (pid $pid) serves S3 at $AWS_ENDPOINT_URL, bucket $bucket"

write_env "$state" \
    AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL" \
    AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
    AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
    AWS_REGION="$AWS_REGION" \
    AWS_DEFAULT_REGION="$AWS_DEFAULT_REGION" \
    AWS_ALLOW_HTTP=true \
    AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false \
    KASTELL_S3_BUCKET="$bucket" \
    KASTELL_S3_PID="$pid" \
    KASTELL_S3_STATE="$state"
