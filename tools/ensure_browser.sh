#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/test_book.py, tests/test_lab.py look at pages as a reader does).
#   tools/ensure_browser.sh          (`make setup`) find one; else, as root, install Debian's `chromium` with apt-get
#   tools/ensure_browser.sh --find   (the tests) print the path of the one found; never install
# When none is found and none can be installed: one line on stderr naming the command to run, exit 1.
# Only shell built-ins, `id` and `apt-get` are used, so that tests/test_setup.py can run this with a PATH of stubs.
set -euo pipefail

find_browser() {
  local name
  for name in chromium chromium-browser google-chrome; do
    command -v "$name" && return 0
  done
  return 1
}

give_up() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo "
  echo "headless Chromium is needed by the browser tests and none is on PATH:" \
       "run \`${sudo}apt-get update && ${sudo}apt-get install -y chromium\` (Debian's package), then \`make test\`" >&2
  exit 1
}

if [ "${1:-}" = --find ]; then
  find_browser || give_up
  exit 0
fi
find_browser >/dev/null && exit 0
[ "$(id -u)" = 0 ] || give_up
echo "installing Debian's chromium for the browser tests (apt-get) ..." >&2
# A fresh machine may have no package lists yet: update them first.
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
  && find_browser >/dev/null || give_up
