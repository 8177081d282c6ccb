#!/usr/bin/env bash
# kiln's test command: installs the Debian packages the tests use (when
# missing), then runs fmt, clippy, the whole test suite (doc tests included)
# and builds the examples. `.ci/run` calls this; CI sets CI=true, which turns
# every "tool missing, skipping" into a failure.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

# Debian packages the tests drive as real peers.
packages=(docker-registry skopeo umoci runc busybox-static apache2-utils buildah git jq zstd bzip2 xz-utils openssh-client tmux pigz containerd)
# binaries that prove each package is installed (same order)
binaries=(docker-registry skopeo umoci runc busybox htpasswd buildah git jq zstd bzip2 xz ssh-agent tmux pigz containerd)

missing=()
for i in "${!packages[@]}"; do
  command -v "${binaries[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The unprivileged user the safety tests use as the attacker (a local user
# squatting or reading kiln's cache). Made here, once, before any test runs,
# so parallel tests never race to create it (testkit::test_user also makes
# it when missing, and takes useradd's "already exists" as success).
if [ "$(id -u)" -eq 0 ] && ! id -u kiln-test >/dev/null 2>&1; then
  log "creating the test user kiln-test"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kiln-test \
    || id -u kiln-test >/dev/null
fi

# Rust components the checks need (present on a rustup toolchain; quiet when so)
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  log "adding rustfmt and clippy"
  rustup component add rustfmt clippy
fi

export KILN_SHARED_DIR="${KILN_SHARED_DIR:-$(cd .. && pwd)/shared}"

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# jsonschema (a dev-dependency) switches serde_json's float_roundtrip on in
# every test build, so no test can see whether oci-image asks for it itself;
# check oci-image's own dependency graph instead (the fuzz target found the
# lossy default: fuzz/README.md)
log "oci-image parses JSON numbers exactly without dev-dependencies"
cargo tree -p oci-image -e no-dev,features -i serde_json --locked | grep -q float_roundtrip

# flate2 without runtime_detection builds zlib-rs without `std`, and zlib-rs
# then never detects the CPU: every deflate, inflate and crc32 runs its
# portable code. Nothing a test sees changes (the bytes are the same), so
# check the dependency graph
log "zlib-rs detects the CPU at run time"
cargo tree -p layer-diff -e no-dev,features -i zlib-rs --locked | grep -q 'zlib-rs feature "std"'

log "cargo test"
cargo test --workspace --locked

log "cargo build --examples"
cargo build --workspace --examples --locked

log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

log "done"
