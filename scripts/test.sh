#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the real peers
# the tests talk to (scripts/apt.d/*.txt), runs set-up hooks (scripts/test.d/*.sh,
# e.g. starting PostgreSQL), then fmt, clippy, every test and the doctests.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(cat scripts/apt.d/*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | grep -v '^$' | sort -u || true)
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] || continue
  echo "set-up: $hook"
  # shellcheck disable=SC1090
  source "$hook"
done

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -j2 -- -D warnings
cargo nextest run --workspace -j2 --profile ci
cargo test --workspace --doc -j2
# Broken intra-doc links and malformed rustdoc fail the build too.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -j2 --quiet
