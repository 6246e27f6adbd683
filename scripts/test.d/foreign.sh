# Sourced by scripts/test.sh. torsion-cocoa cannot run here; compile-check it
# (and torsion-core's Apple code paths) for macOS. About a minute the first
# time (rustup fetches the target's standard library), seconds afterwards.
# Idempotent: `rustup target add` is a no-op once the target is installed.
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
