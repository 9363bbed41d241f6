#!/usr/bin/env bash
# Warns, in one line on stderr, when a folder's disk has less free space than the set-up or the tests need there.
#   tools/check_disk.sh DIR NEED_MB WHAT     (`make setup`: the checkout for .venv, the temporary folder for tests)
# Measured on the project's machine: .venv is 6.3 GB (torch's CUDA build); the tests use under 0.5 GB of $TMPDIR at
# a time (a passing test's tmp_path is deleted when it ends, see pyproject.toml). Without the warning a full disk
# shows as hundreds of "No space left on device" tracebacks. Always exits 0: the set-up goes on and may still fit.
set -uo pipefail
dir=$1 need_mb=$2 what=$3
# POSIX df: one header line, then "filesystem 1024-blocks used available capacity mount".
free_kb=$(df -Pk "$dir" 2>/dev/null | { read -r _; read -r _ _ _ avail _; echo "${avail:-}"; })
[[ $free_kb =~ ^[0-9]+$ ]] || { echo "check_disk: could not read the free space of $dir with df; going on" >&2; exit 0; }
free_mb=$((free_kb / 1024))
dir=$(cd "$dir" && pwd)
if ((free_mb < need_mb)); then
  echo "only ${free_mb} MB free on the disk of $dir; $what needs about ${need_mb} MB: free some space" \
       "(old clones, /tmp/pytest-of-*) or the set-up or tests may fail with 'No space left on device'" >&2
fi
exit 0
