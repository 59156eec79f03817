#!/usr/bin/env bash
# Docker for the container runtime's tests, where this machine can have it (root, apt): Docker's
# daemon running (started here if it is not, host networking only: no bridge, no iptables) and the
# test image built from Debian's packages, cached. Prints the image's name; prints nothing where
# Docker cannot run (the tests then skip, saying why).
#
# The image is a Debian bookworm base (debootstrap, minbase) with python3 (the fake engine runs on
# it, with this checkout's packages mounted) and llama-server's libraries (libgomp1, libssl3;
# the binary and the models are mounted too). No registry is needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VRAMGATE_CACHE:-$HOME/.cache/vramgate}"
packages="python3,libgomp1,libssl3"
tag="vramgate-test-base:bookworm-$(echo "$packages" | sha256sum | cut -c1-8)"

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "docker: not root with apt here; the container tests will be skipped" >&2
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  echo "installing docker.io and debootstrap (Debian)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } >&2 ||
    { echo "docker: could not install; the container tests will be skipped" >&2; exit 0; }
fi
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd (host networking only)" >&2
  mkdir -p "$cache"
  # The stand-in GPU hook on its PATH: device requests work in tests without a GPU.
  PATH="$root/tests/docker:$PATH" nohup dockerd --iptables=false --bridge=none \
    >"$cache/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  if ! docker info >/dev/null 2>&1; then
    echo "docker: dockerd did not start (see $cache/dockerd.log); container tests skipped" >&2
    exit 0
  fi
fi
if ! docker image inspect "$tag" >/dev/null 2>&1; then
  rootfs="$cache/images/${tag#*:}.tar"
  if [ ! -f "$rootfs" ]; then
    echo "building the test image's root file system (debootstrap, about a minute)" >&2
    work="$(mktemp -d)"
    mkdir -p "$cache/images"
    if ! debootstrap --variant=minbase --include="$packages" bookworm "$work/root" \
      >"$cache/images/debootstrap.log" 2>&1; then
      tail -n 20 "$cache/images/debootstrap.log" >&2
      echo "docker: debootstrap failed; the container tests will be skipped" >&2
      rm -rf "$work"
      exit 0
    fi
    tar -C "$work/root" -cf "$rootfs.partial" .
    mv "$rootfs.partial" "$rootfs"
    rm -rf "$work"
  fi
  docker import "$rootfs" "$tag" >&2
fi
echo "$tag"
