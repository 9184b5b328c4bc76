#!/usr/bin/env bash
# The nightly fan-out, one script for both CI files:
#   ci/nightly.sh shard I/N   shard I of N of every suite, into results/<suite>/shard-I/
#   ci/nightly.sh merge N     each suite's N shards (found under results/) into merged/<suite>/
#   ci/nightly.sh suites      the suites a shard runs, one a line
# The suites are every file in suites/, or the names in $KSTORM_SUITES (space-separated); every
# run gets --profile $KSTORM_PROFILE (default deep) and --repeat $KSTORM_REPEAT (default 3).
# Exits as `cargo xtask run` does, 0 every cell as expected, 1 some cell not (the kernel), 2 an
# infra or usage failure, and over several suites with the worst of them.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: ci/nightly.sh shard I/N | merge N | suites" >&2
  exit 2
}

suites() {
  local names
  if [ -n "${KSTORM_SUITES:-}" ]; then
    read -ra names <<<"$KSTORM_SUITES"
    printf '%s\n' "${names[@]}"
  else
    for file in suites/*.yaml; do basename "$file" .yaml; done
  fi
}

worst=0
outcomes=()
# Records one suite's exit code; anything past 2 (a signal, a panic) counts as infra.
record() {
  local suite=$1 code=$2
  if [ "$code" -gt 2 ]; then code=2; fi
  if [ "$code" -gt "$worst" ]; then worst=$code; fi
  outcomes+=("$suite: exit $code")
}

finish() {
  echo "ci: $1"
  printf 'ci:   %s\n' "${outcomes[@]}"
  exit "$worst"
}

shard() {
  local shard=$1 suite code
  [[ $shard =~ ^[0-9]+/[0-9]+$ ]] || usage
  mapfile -t list < <(suites)
  for suite in "${list[@]}"; do
    code=0
    cargo xtask run --suite "$suite" --profile "${KSTORM_PROFILE:-deep}" \
      --repeat "${KSTORM_REPEAT:-3}" --shard "$shard" \
      --results "results/$suite/shard-${shard%/*}" || code=$?
    record "$suite" "$code"
  done
  finish "shard $shard of ${#list[@]} suites"
}

# A shard folder holds one run folder (and the `latest` link, which is skipped).
run_folder() {
  find "$1" -mindepth 1 -maxdepth 1 -type d ! -name latest 2>/dev/null
}

merge() {
  local count=$1 suite index code merged found runs
  [[ $count =~ ^[0-9]+$ ]] || usage
  mapfile -t list < <(suites)
  for suite in "${list[@]}"; do
    runs=()
    code=0
    for index in $(seq 1 "$count"); do
      mapfile -t found < <(run_folder "results/$suite/shard-$index")
      if [ ${#found[@]} -eq 1 ]; then
        runs+=("${found[0]}")
      else
        echo "ci: suite $suite: shard $index/$count left ${#found[@]} run folders, not one" \
          "(its job failed before its run, or its artifacts were lost)" >&2
        code=2
      fi
    done
    if [ ${#runs[@]} -gt 0 ]; then
      merged=0
      cargo xtask report --merge "${runs[@]}" --out "merged/$suite" || merged=$?
      if [ "$merged" -gt "$code" ]; then code=$merged; fi
    fi
    record "$suite" "$code"
  done
  finish "merged ${#list[@]} suites of $count shards"
}

case "${1:-}" in
  shard) [ $# -eq 2 ] || usage; shard "$2" ;;
  merge) [ $# -eq 2 ] || usage; merge "$2" ;;
  suites) [ $# -eq 1 ] || usage; suites ;;
  *) usage ;;
esac
