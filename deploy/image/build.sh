#!/usr/bin/env bash
# Build the Apiary image without any image or package registry reachable from the build.
#   deploy/image/build.sh [TAG]        (what `make image` runs)
# Steps, each cached outside the repository (APIARY_IMAGE_CACHE, default ~/.cache/apiary/image)
# and reused on the next run, never required:
#   1. base image: BASE_IMAGE if set (e.g. python:3.11-slim from a registry); otherwise a
#      Debian bookworm made with debootstrap from the archive apt already uses, imported as
#      apiary-base:bookworm (needs root, debootstrap and a Debian mirror: DEBIAN_MIRROR).
#   2. wheelhouse: the wheels requirements.lock pins (runtime only, hashes checked), fetched
#      on this host with pip.
#   3. anvil: the binary of the npm package package-lock.json pins (node_modules).
#   4. docker build with the classic builder: the build itself reaches no network.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG="${1:-${APIARY_IMAGE:-apiary:0.1.0}}"
CACHE="${APIARY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/apiary/image}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
LOCAL_BASE="apiary-base:bookworm"
STAGE="build/image"
say() { printf '[image] %s\n' "$*" >&2; }
elapsed() { printf '%ds' "$(( $(date +%s) - $1 ))"; }

command -v docker >/dev/null || { say "docker is not installed (apt-get install docker.io)"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker engine answers: start dockerd first"; exit 1; }
mkdir -p "$CACHE"

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local found
    found=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
              /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -oE '(https?|file)://[^ ]*debian/?' | grep -v security | head -n1 || true)
    echo "${found:-http://deb.debian.org/debian}"
}

local_base() {
    if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        say "base $LOCAL_BASE: already in the engine"; return
    fi
    local tarball="$CACHE/bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null \
            || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
        local rootfs start mirror
        start=$(date +%s); mirror=$(debian_mirror)
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        say "base: debootstrap bookworm from $mirror"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { say "debootstrap failed, see $CACHE/debootstrap.log"; rm -rf "$rootfs"; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
        say "base: root file system made in $(elapsed "$start")"
    fi
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "$LOCAL_BASE" >/dev/null
    say "base $LOCAL_BASE imported from $tarball"
}

wheelhouse() {
    local wheels="$CACHE/wheelhouse" start lock_sum
    start=$(date +%s)
    lock_sum=$(sha256sum requirements.lock | cut -d' ' -f1)
    mkdir -p "$wheels"
    if [ "$(cat "$wheels/.requirements.sha256" 2>/dev/null)" != "$lock_sum" ]; then
        # Only what is missing is fetched; torch 2.13.0 CPU comes from local disk.
        if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary :all: \
                --require-hashes -r requirements.lock -d "$wheels" 2>&1 \
                | { grep -v '^WARNING: Location' || true; } >&2; then
            say "pip download failed: the wheels of requirements.lock must be reachable once"
            exit 1
        fi
        echo "$lock_sum" > "$wheels/.requirements.sha256"
    fi
    rm -rf "$STAGE/wheelhouse"
    mkdir -p "$STAGE/wheelhouse"
    cp -l "$wheels"/*.whl "$STAGE/wheelhouse/" 2>/dev/null || cp "$wheels"/*.whl "$STAGE/wheelhouse/"
    say "wheelhouse: $(ls "$STAGE/wheelhouse" | wc -l) wheels in $(elapsed "$start")"
}

project_wheel() {
    rm -rf "$STAGE/dist" build/lib build/bdist.*
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        -w "$STAGE/dist" . >/dev/null
}

anvil_binary() {
    local bin
    bin=$(ls node_modules/@foundry-rs/anvil-linux-*/bin/anvil 2>/dev/null | head -n1 || true)
    [ -n "$bin" ] || { say "anvil is not in node_modules: run npm ci (or make deps)"; exit 1; }
    cp "$bin" "$STAGE/anvil"
}

build_started=$(date +%s)
mkdir -p "$STAGE"
if [ -n "${BASE_IMAGE:-}" ]; then
    base="$BASE_IMAGE"
else
    local_base; base="$LOCAL_BASE"
fi
wheelhouse
project_wheel
anvil_binary
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
say "docker build $TAG on $base"
DOCKER_BUILDKIT=0 docker build --quiet -f deploy/Dockerfile -t "$TAG" \
    --build-arg "BASE_IMAGE=$base" --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" . >/dev/null
# Earlier builds of this image, now untagged, go (the base and the build cache stay).
docker image prune --force --filter label=org.opencontainers.image.title=apiary >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$TAG")
say "$TAG built in $(elapsed "$build_started"): $(( size / 1024 / 1024 )) MiB"
