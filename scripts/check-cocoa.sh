#!/usr/bin/env bash
# torsion-cocoa cannot run here; compile-check it for macOS. Not in
# scripts/test.d: torsion-core itself does not build for Apple targets yet
# (Linux-only calls in sys/unix.rs, unix.rs, udp.rs: pidfd, SO_PEERCRED,
# MSG_CMSG_CLOEXEC, ...), so this check fails in torsion-core until that is
# ported. Idempotent: `rustup target add` is a no-op once installed.
set -euo pipefail
cd "$(dirname "$0")/.."

foreign_cocoa_check() {
  if ! command -v rustup >/dev/null; then
    echo "foreign: rustup not found; skipping the x86_64-apple-darwin check of torsion-cocoa"
    return 0
  fi
  if ! rustup target list --installed | grep -qx x86_64-apple-darwin; then
    if ! rustup target add x86_64-apple-darwin; then
      echo "foreign: could not fetch the x86_64-apple-darwin target; skipping the torsion-cocoa check"
      return 0
    fi
  fi
  cargo check -p torsion-cocoa --target x86_64-apple-darwin -j2
}
foreign_cocoa_check
