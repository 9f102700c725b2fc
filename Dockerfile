# syntax=docker/dockerfile:1
#
# Kastell — DICOMweb archive (STOW-RS / QIDO-RS / WADO-RS).
#
#   docker build -t kastell .
#
# Credentials first. The container listens on 0.0.0.0, and Kastell refuses to
# serve on a non-loopback address while requests without credentials may write
# or delete (the default auth.anonymous) or the master key is the generated
# development key; the refusal names what to configure. So give it:
#
#   1. a master key file, readable by uid 10001 only (a key file its group or
#      others may read is refused):
#        head -c 32 /dev/urandom > master.key
#        chmod 600 master.key && sudo chown 10001:10001 master.key
#   2. credentials for the clients, with anonymous writes off:
#      KASTELL__AUTH__ANONYMOUS='[]' (or '["read"]'), then API keys
#      (`kastell apikeys add`, below) and/or OIDC tokens
#      (KASTELL__AUTH__JWT__ISSUER, __AUDIENCE, __JWKS_URL).
#
#   cat > kastell.env <<'EOF'
#   KASTELL__KEYS__MASTER_KEY_FILE=/run/secrets/master_key
#   KASTELL__AUTH__ANONYMOUS=[]
#   EOF
#   KEY="$PWD/master.key:/run/secrets/master_key:ro"
#   docker run --rm -p 8080:8080 --env-file kastell.env -v "$KEY" -v kastell-data:/var/lib/kastell kastell
#   docker run --rm --env-file kastell.env -v "$KEY" -v kastell-data:/var/lib/kastell kastell apikeys add --tenant default --name CT_SCANNER_1 --permissions read,write
#
# (the second prints the API key once; clients send `Authorization: ApiKey kst_…`).
#
# Behind a reverse proxy, name it in KASTELL__SERVER__TRUSTED_PROXIES (e.g.
# '["172.16.0.0/12"]') so that the audit trail records the client's address from
# its X-Forwarded-For instead of the proxy's. A throwaway trial on the embedded
# defaults needs -e KASTELL__SERVER__ALLOW_INSECURE_EXPOSURE=true: anyone who
# reaches the port may then store and delete, and the key sits in the volume.
#
# The server runs as uid/gid 10001. A named volume inherits the ownership (and
# the 0700 mode) of /var/lib/kastell; for a bind mount, `chown 10001:10001` and
# `chmod 700` the host directory first.
# README.md ("Operating Kastell") runs it with PostgreSQL and S3 (compose).
#
# Requires BuildKit (the default builder since Docker 23) for the cache mounts.
# tests/run-all.sh lints this file with hadolint; the `hadolint ignore` lines say
# why each ignored rule does not apply.

############################
# Build stage
############################
FROM rust:1-bookworm AS builder

WORKDIR /build

# cmake and g++ build CharLS, the JPEG-LS codec of the default build; libpq-dev
# is what diesel's PostgreSQL backend links against.
# Versions are not pinned (DL3008): Debian drops superseded versions from its
# archive at each point release, so pins would break the build; the release is
# fixed by the image tag (bookworm) and its security updates should come in.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ libpq-dev \
 && rm -rf /var/lib/apt/lists/*

# The whole (filtered, see .dockerignore) source tree: manifest, lockfile,
# src/ and anything embedded at compile time (e.g. schema/ migrations).
COPY . .

# --locked: fail instead of silently resolving a different dependency set.
# The registry and target dir are cache mounts, so the binary is copied out
# of target/ inside the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin kastell \
 && install -D -m 0755 target/release/kastell /out/kastell

############################
# Runtime stage
############################
FROM debian:bookworm-slim AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="Kastell" \
      org.opencontainers.image.description="A sovereign DICOMweb archive: STOW-RS, QIDO-RS and WADO-RS over an encrypted blob layer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/kastell" \
      org.opencontainers.image.documentation="https://example.invalid/kastell#operating-kastell"

# What the binary needs at run time: libpq (the PostgreSQL index), the CA
# certificates (TLS to S3, Azure, GCS, a JWKS URL or PostgreSQL with
# sslmode=verify-full), and curl for HEALTHCHECK. Not pinned, as above (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libpq5 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kastell \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/kastell --shell /usr/sbin/nologin kastell \
 && install -d -o kastell -g kastell -m 0700 /var/lib/kastell

COPY --from=builder /out/kastell /usr/local/bin/kastell

# The same settings as CMD, so `docker run kastell migrate` / `stats` / `import`
# agree with `serve`.
ENV KASTELL__SERVER__LISTEN=0.0.0.0:8080 \
    KASTELL__STORAGE__DATA_DIR=/var/lib/kastell

USER 10001:10001
WORKDIR /var/lib/kastell
# The embedded SQLite index and the local blob store live here (and the
# development master key, only with ALLOW_INSECURE_EXPOSURE); with PostgreSQL and
# S3 configured it holds nothing that must persist.
VOLUME /var/lib/kastell
EXPOSE 8080
# SIGTERM stops accepting connections and gives in-flight requests up to
# [server] shutdown_timeout_secs (default 30 s); `docker stop` only waits 10 s
# before SIGKILL unless given --time (compose: stop_grace_period).
STOPSIGNAL SIGTERM

# /healthz: the process answers (liveness). Readiness (/readyz: index and blob
# store reachable) is for load balancers, not for restarting the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["/usr/local/bin/kastell"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/kastell"]
