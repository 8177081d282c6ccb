#!/usr/bin/env bash
# kiln's build example side by side with `buildah bud` (vfs driver, chroot
# isolation, a fresh store per run, docker format): alternating, median of
# RUNS (default 5), page cache warmed by an untimed first run of each. Prints
# medians and ratios and writes them to WORK/results.txt.
#
#   benches/build_peers.sh ROOTFS WORK   (benches/peers.sh runs it)
#
# ROOTFS: e.g. `debootstrap --variant=minbase bookworm ROOTFS`. Cases:
#   copy    FROM scratch + COPY rootfs/ / (kiln: gzip at its default level into a fresh OCI
#           layout, empty cache)                              target <= 0.10x (issue 22)
#   run     FROM <rootfs image in a local registry> + a RUN that writes a
#           file and removes a directory; the base already pulled for both
#           (buildah: pulled into its fresh store untimed; kiln: its cache
#           holds the base, the RUN is forced with --no-cache) target <= 0.3x
#   floor   the copy build with --compression none and again with the default,
#           alternating (kiln only), against the copy case's buildah median:
#           what the build costs besides the codec
#   cached  the copy build again with a warm cache (kiln only) target < 0.5 s
# Needs buildah, docker-registry, curl, python3, runc and bc (installs them
# when missing, as root).
set -euo pipefail
# shellcheck source=benches/need.sh
. "$(dirname "$0")/need.sh"
need buildah:buildah docker-registry:docker-registry curl:curl python3:python3 runc:runc bc:bc
ROOTFS=$(realpath "$1"); WORK=$(realpath -m "$2")
RUNS=${RUNS:-5}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
(cd "$HERE" && cargo build --release -q --example build >&2)
TARGET=$(cd "$HERE" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
KILN=$TARGET/release/examples/build
RESULTS=$WORK/results.txt
: > "$RESULTS"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# time_of CMD...: seconds taken by CMD (output discarded, failure fatal)
time_of() {
  local t0=$EPOCHREALTIME
  "$@" >"$WORK/last.out" 2>"$WORK/last.err" || { echo "failed: $*" >&2; cat "$WORK/last.err" >&2; exit 1; }
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.4f\n", b - a}'
}

# a registry for the run case's base image
dir=$(mktemp -d "$WORK/registry.XXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}}
http: {addr: 127.0.0.1:$port}
YAML
docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
REG_PID=$!
trap 'kill $REG_PID 2>/dev/null || true; wait $REG_PID 2>/dev/null || true; rm -rf "$dir"' EXIT
REG=127.0.0.1:$port
for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.05; done

# contexts: the rootfs hard-linked into a context, and the RUN Dockerfile
rm -rf "$WORK/ctx-copy" "$WORK/ctx-run"
mkdir -p "$WORK/ctx-copy" "$WORK/ctx-run"
cp -al "$ROOTFS" "$WORK/ctx-copy/rootfs"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$WORK/ctx-copy/Dockerfile"
printf 'FROM %s/bench/rootfs:v1\nRUN echo hello > /hello.txt && rm -rf /usr/share/doc\n' "$REG" >"$WORK/ctx-run/Dockerfile"
# the base image, built and pushed by kiln (untimed)
"$KILN" "$WORK/ctx-copy" -t "$REG/bench/rootfs:v1" --output registry --cache-dir "$WORK/kiln-base-cache" >/dev/null

# Old outputs are moved aside, not deleted, before a timed run: on ext4,
# creating files soon after deleting thousands stalls in the inode
# allocator (see BENCHMARKS.md), which would slow whichever tool runs next.
mkdir -p "$WORK/trash"
aside() { local p; for p in "$@"; do [ -e "$p" ] && mv "$p" "$(mktemp -d "$WORK/trash/XXXXXX")/"; done; return 0; }
buildah_cmd() { buildah --root "$WORK/b/root" --runroot "$WORK/b/runroot" --storage-driver vfs "$@"; }
buildah_fresh() { aside "$WORK/b"; mkdir -p "$WORK/b"; }
buildah_pull() { buildah_fresh; buildah_cmd pull --tls-verify=false "$REG/bench/rootfs:v1" >/dev/null 2>&1; }
bud() { buildah_cmd bud --isolation=chroot --format docker --tls-verify=false -t bench/out -f "$1/Dockerfile" "$1"; }
export -f buildah_cmd bud aside
export WORK

kiln_copy() { aside "$WORK/k-out" "$WORK/k-cache"; }
kiln_run_warm() {
  aside "$WORK/k-out"
  [ -d "$WORK/k-run-cache" ] || "$KILN" "$WORK/ctx-run" --cache-dir "$WORK/k-run-cache" --output "oci:$WORK/k-warm" >/dev/null
  aside "$WORK/k-warm"
}

# compare NAME SETUP_A A SETUP_B B TARGET: alternates, RUNS times after a warm-up each.
# Every timed run starts after a sync, as in layer_peers.sh: buildah leaves
# about 230 MB of its store unwritten when it exits, and that writeback
# would otherwise share the disk with the next run, whichever tool it is
compare() {
  local name=$1 setup_a=$2 a=$3 setup_b=$4 b=$5 limit=$6 ta=() tb=()
  eval "$setup_a"; time_of bash -c "$a" >/dev/null
  eval "$setup_b"; time_of bash -c "$b" >/dev/null
  for i in $(seq "$RUNS"); do
    if [ $((i % 2)) -eq 1 ]; then
      eval "$setup_a"; sync; ta+=("$(time_of bash -c "$a")"); eval "$setup_b"; sync; tb+=("$(time_of bash -c "$b")")
    else
      eval "$setup_b"; sync; tb+=("$(time_of bash -c "$b")"); eval "$setup_a"; sync; ta+=("$(time_of bash -c "$a")")
    fi
  done
  local ma mb
  ma=$(printf '%s\n' "${ta[@]}" | median); mb=$(printf '%s\n' "${tb[@]}" | median)
  printf '%-34s kiln %7.3fs  buildah %7.3fs  ratio %.3f  (target %s)\n' "$name" "$ma" "$mb" \
    "$(echo "$ma / $mb" | bc -l)" "$limit" | tee -a "$RESULTS"
  PEER_MEDIAN=$mb
}

compare "build: FROM scratch + COPY rootfs" "kiln_copy" \
  "$KILN $WORK/ctx-copy --cache-dir $WORK/k-cache --output oci:$WORK/k-out" \
  "buildah_fresh" "bud $WORK/ctx-copy" "<= 0.10x"

# the floor: the same build with its layer left uncompressed, alternating
# with the default (kiln only), against the buildah median just measured
copy_peer=$PEER_MEDIAN
tn=(); tg=()
for _ in $(seq "$RUNS"); do
  kiln_copy; sync; tn+=("$(time_of "$KILN" "$WORK/ctx-copy" --cache-dir "$WORK/k-cache" --output "oci:$WORK/k-out" --compression none)")
  kiln_copy; sync; tg+=("$(time_of "$KILN" "$WORK/ctx-copy" --cache-dir "$WORK/k-cache" --output "oci:$WORK/k-out")")
done
for row in "none:${tn[*]}" "gzip (default):${tg[*]}"; do
  m=$(printf '%s\n' ${row#*:} | median)
  printf '%-34s kiln %7.3fs  buildah %7.3fs  ratio %.3f  (floor: no target)\n' "build: COPY, layer ${row%%:*}" "$m" "$copy_peer" \
    "$(echo "$m / $copy_peer" | bc -l)" | tee -a "$RESULTS"
done
compare "build: FROM image + RUN (warm)" "kiln_run_warm" \
  "$KILN $WORK/ctx-run --cache-dir $WORK/k-run-cache --no-cache --output oci:$WORK/k-out" \
  "buildah_pull" "bud $WORK/ctx-run" "<= 0.3x"

# fully cached rebuilds (kiln only): same cache, fresh output layout
"$KILN" "$WORK/ctx-copy" --cache-dir "$WORK/k-cache2" --output "oci:$WORK/k-out" >/dev/null
tc=()
for _ in $(seq "$RUNS"); do aside "$WORK/k-out"; sync; tc+=("$(time_of "$KILN" "$WORK/ctx-copy" --cache-dir "$WORK/k-cache2" --output "oci:$WORK/k-out")"); done
printf '%-34s kiln %7.3fs  (target < 0.5 s)\n' "build: cached rebuild (COPY rootfs)" "$(printf '%s\n' "${tc[@]}" | median)" | tee -a "$RESULTS"
tr=()
for _ in $(seq "$RUNS"); do aside "$WORK/k-out"; sync; tr+=("$(time_of "$KILN" "$WORK/ctx-run" --cache-dir "$WORK/k-run-cache" --output "oci:$WORK/k-out")"); done
printf '%-34s kiln %7.3fs  (target < 0.5 s)\n' "build: cached rebuild (FROM + RUN)" "$(printf '%s\n' "${tr[@]}" | median)" | tee -a "$RESULTS"
rm -rf "$WORK/k-out" "$WORK/k-cache" "$WORK/k-cache2" "$WORK/k-run-cache" "$WORK/kiln-base-cache" "$WORK/b" "$WORK/ctx-copy" "$WORK/ctx-run" "$WORK/trash"
