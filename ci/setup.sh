# Set-up of a CI job on a bare Debian 12 (sourced: `. ci/setup.sh`): what the README assumes,
# root, a C compiler and cargo, and nothing more (kstorm installs its own Debian packages).
# Each step runs only where its tool is missing, so a runner that has them, or a machine that
# reaches no download site but the package registries, skips it and says so.
# shellcheck shell=bash

kstorm_setup() {
  local packages=()
  command -v cc >/dev/null || packages+=(build-essential)
  if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    . "$HOME/.cargo/env"
  fi
  if ! command -v cargo >/dev/null; then
    command -v curl >/dev/null || packages+=(curl ca-certificates)
  fi
  if [ ${#packages[@]} -gt 0 ]; then
    echo "ci: installing ${packages[*]}"
    apt-get update -q && apt-get install -y -q "${packages[@]}" || return
  else
    echo "ci: a C compiler is there: apt-get skipped"
  fi
  if command -v cargo >/dev/null; then
    echo "ci: $(cargo --version) is there: rustup skipped"
  else
    echo "ci: installing the Rust toolchain with rustup"
    (set -o pipefail && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal) || return
    . "$HOME/.cargo/env"
  fi
}

kstorm_setup
