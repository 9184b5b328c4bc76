#!/usr/bin/env bash
# GitHub Actions: runs a command in this checkout inside a Debian 12 container, as root, as the
# README assumes, after ci/setup.sh. The host's /dev/kvm is passed in when it has one (kstorm's
# probe still decides between KVM and TCG). The kstorm cache (.kstorm-cache/) and the cargo
# target stay in the checkout, where the workflow caches them, and are handed back to the
# runner's user afterwards so the cache step can read them.
#   ci/in-debian.sh COMMAND [ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: ci/in-debian.sh COMMAND [ARG...]" >&2; exit 2; }

devices=()
if [ -e /dev/kvm ]; then devices=(--device /dev/kvm); fi
env_args=()
for name in CI KSTORM_SUITES KSTORM_PROFILE KSTORM_REPEAT KSTORM_SHARDS; do
  env_args+=(--env "$name")
done
status=0
docker run --rm "${devices[@]}" "${env_args[@]}" \
  --env KSTORM_CACHE=/src/.kstorm-cache \
  --env GIT_CONFIG_COUNT=1 --env GIT_CONFIG_KEY_0=safe.directory --env GIT_CONFIG_VALUE_0=/src \
  --volume "$PWD:/src" --workdir /src \
  debian:12 bash -c '. ci/setup.sh && "$@"' in-debian "$@" || status=$?
sudo chown -R "$(id -u):$(id -g)" .
exit "$status"
