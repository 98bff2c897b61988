# Sourced by scripts/demo and scripts/test: checks and installs what a fresh machine lacks.
# Idempotent; prints what it installs.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust >= 1.92 with rustup (https://rustup.rs)" >&2
    exit 1
fi
