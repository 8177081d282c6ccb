#!/usr/bin/env bash
# kiln side by side with its peers on real data; see BENCHMARKS.md.
#
#   benches/peers.sh            # everything
#   RUNS=7 benches/peers.sh     # more runs per pair (default 5)
#
# Prepares (once, cached under $KILN_BENCH_DIR, default /tmp/kiln-bench) a
# `debootstrap --variant=minbase` Debian root filesystem, a second version of
# it after `apt-get install curl`, and the first packed by umoci as one gzip
# layer; builds the examples in release mode; then times each kiln/peer pair
# alternately (layer-diff against umoci, pigz and zstd through
# benches/layer_peers.sh; the registry client against skopeo with a fresh
# registry per run) and prints medians, ratios against the targets, peak RSS
# and how long each part took. Needs root (debootstrap, chroot) and the
# Debian mirror; installs what it uses when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${KILN_BENCH_DIR:-/tmp/kiln-bench}
RUNS=${RUNS:-5}
FAST=${FAST:-3}   # repeats per round of the sub-50 ms cases, so they get RUNS*FAST samples
mkdir -p "$WORK"
T0=$SECONDS
part_start=$SECONDS
parts=()
part() { # name
  parts+=("$(printf '%-28s %5ss' "$current_part" $((SECONDS - part_start)))")
  current_part=$1
  part_start=$SECONDS
  printf '\n== %s\n' "$1" >&2
}
current_part="setup"

# shellcheck source=benches/need.sh
. benches/need.sh
# every command this script and the part scripts it runs call, beyond
# Debian's required packages (coreutils, util-linux, tar, gzip, sed, mawk)
need debootstrap:debootstrap skopeo:skopeo umoci:umoci buildah:buildah runc:runc docker-registry:docker-registry \
  time:/usr/bin/time jq:jq curl:curl python3:python3 pigz:pigz zstd:zstd bc:bc rsync:rsync procps:free

part "build kiln (release)"
cargo build --release --examples -q
KILN_COPY=$ROOT/target/release/examples/copy
KILN_BUILD=$ROOT/target/release/examples/build

part "prepare rootfs image"
if [ ! -f "$WORK/rootfs.done" ]; then
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
  touch "$WORK/rootfs.done"
fi
if [ ! -f "$WORK/image.done" ]; then
  rm -rf "$WORK/image" "$WORK/bundle"
  umoci init --layout "$WORK/image"
  umoci new --image "$WORK/image:base"
  umoci unpack --image "$WORK/image:base" "$WORK/bundle" >/dev/null
  cp -a "$WORK/rootfs/." "$WORK/bundle/rootfs/"
  umoci repack --image "$WORK/image:rootfs" "$WORK/bundle"
  umoci gc --layout "$WORK/image"
  touch "$WORK/image.done"
fi
IMAGE="oci:$WORK/image:rootfs"
DIGEST=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"]=="rootfs") | .digest' "$WORK/image/index.json")
ROOTFS_MB=$(du -sm "$WORK/rootfs" | cut -f1)
LAYER_MB=$(( $(jq -r '.layers[0].size' "$WORK/image/blobs/sha256/${DIGEST#sha256:}") / 1048576 ))

REG_PIDS=()
REG_DIRS=()
# new_registry: starts one more registry and sets REG to its host:port
new_registry() {
  local dir port
  dir=$(mktemp -d "$WORK/registry.XXXX")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YAML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  REG_PIDS+=($!)
  REG_DIRS+=("$dir")
  REG="127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "registry did not start" >&2; exit 1
}
stop_registry() {
  local p d
  for p in "${REG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for d in "${REG_DIRS[@]}"; do rm -rf "$d"; done
  REG_PIDS=(); REG_DIRS=()
}
# start_registry: stops every registry, then starts a fresh one as REG
start_registry() { stop_registry; new_registry; }
trap stop_registry EXIT

# time_cmd NAME -- command...   appends "seconds maxrss_kb" to $WORK/times/NAME
# (wall time from bash's microsecond clock; peak RSS from /usr/bin/time)
mkdir -p "$WORK/times"; rm -f "$WORK/times/"*
time_cmd() {
  local name=$1; shift; shift
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$WORK/times/$name.rss" "$@" >"$WORK/times/$name.out" 2>"$WORK/times/$name.err" || {
    echo "failed: $*" >&2; cat "$WORK/times/$name.err" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}') $(tail -1 "$WORK/times/$name.rss")" >>"$WORK/times/$name"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { awk -v c="$1" '{print $c}' "$WORK/times/$2"; }

SK="skopeo --insecure-policy"
kiln_round() {
  time_cmd kiln_push -- "$KILN_COPY" "$IMAGE" "$REG/kiln/rootfs:v1"
  [ "$(tail -1 "$WORK/times/kiln_push.out")" = "$DIGEST" ] || { echo "kiln changed the digest" >&2; exit 1; }
  for j in $(seq "$FAST"); do
    time_cmd kiln_repush -- "$KILN_COPY" "$IMAGE" "$REG/kiln/rootfs:v1"
    time_cmd kiln_mount -- "$KILN_COPY" "$REG/kiln/rootfs:v1" "$REG/kiln/other$j:v1"
    grep -q "uploaded 0," "$WORK/times/kiln_mount.err" || { echo "kiln uploaded bytes on a mount" >&2; cat "$WORK/times/kiln_mount.err" >&2; exit 1; }
  done
  rm -rf "$WORK/pull-kiln"
  time_cmd kiln_pull -- "$KILN_COPY" "$REG/kiln/rootfs:v1" "oci:$WORK/pull-kiln:v1"
}
skopeo_round() {
  time_cmd skopeo_push -- $SK copy --dest-tls-verify=false "$IMAGE" "docker://$REG/skopeo/rootfs:v1"
  [ "$($SK inspect --tls-verify=false --format '{{.Digest}}' "docker://$REG/skopeo/rootfs:v1")" = "$DIGEST" ] || { echo "skopeo changed the digest" >&2; exit 1; }
  for j in $(seq "$FAST"); do
    time_cmd skopeo_repush -- $SK copy --dest-tls-verify=false "$IMAGE" "docker://$REG/skopeo/rootfs:v1"
    time_cmd skopeo_mount -- $SK copy --src-tls-verify=false --dest-tls-verify=false "docker://$REG/skopeo/rootfs:v1" "docker://$REG/skopeo/other$j:v1"
  done
  rm -rf "$WORK/pull-skopeo"
  time_cmd skopeo_pull -- $SK copy --src-tls-verify=false "docker://$REG/skopeo/rootfs:v1" "oci:$WORK/pull-skopeo:v1"
}

part "prepare rootfs v2 (+curl)"
if [ ! -f "$WORK/rootfs-v2.done" ]; then
  rm -rf "$WORK/rootfs-v2"
  cp -a "$WORK/rootfs" "$WORK/rootfs-v2"
  cp /etc/resolv.conf "$WORK/rootfs-v2/etc/resolv.conf"
  chroot "$WORK/rootfs-v2" apt-get install -y -qq curl >"$WORK/rootfs-v2.log" 2>&1
  touch "$WORK/rootfs-v2.done"
fi

part "layers: layer-diff vs umoci, pigz, zstd x$RUNS"
RUNS=$RUNS bash "$ROOT/benches/layer_peers.sh" "$WORK/rootfs" "$WORK/rootfs-v2" "$WORK/layers" >"$WORK/layers.out" 2>"$WORK/layers.err" || {
  cat "$WORK/layers.err" >&2; exit 1; }

part "build: kiln vs buildah x$RUNS"
RUNS=$RUNS bash "$ROOT/benches/build_peers.sh" "$WORK/rootfs" "$WORK/build" >"$WORK/build.out" 2>"$WORK/build.err" || {
  cat "$WORK/build.err" >&2; exit 1; }

part "registry: kiln vs skopeo x$RUNS"
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then
    start_registry; kiln_round; start_registry; skopeo_round
  else
    start_registry; skopeo_round; start_registry; kiln_round
  fi
done
part "promote: registry A -> registry B, kiln vs skopeo x$RUNS"
# a fresh pair per run; the image is put in A untimed
promote_round() { # tool
  start_registry; local a=$REG; new_registry; local b=$REG
  "$KILN_COPY" "$IMAGE" "$a/dev/rootfs:v1" >/dev/null 2>&1
  if [ "$1" = kiln ]; then
    time_cmd kiln_promote -- "$KILN_COPY" "$a/dev/rootfs:v1" "$b/prod/rootfs:v1"
    [ "$(tail -1 "$WORK/times/kiln_promote.out")" = "$DIGEST" ] || { echo "kiln changed the digest" >&2; exit 1; }
  else
    time_cmd skopeo_promote -- $SK copy --src-tls-verify=false --dest-tls-verify=false "docker://$a/dev/rootfs:v1" "docker://$b/prod/rootfs:v1"
  fi
}
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then promote_round kiln; promote_round skopeo; else promote_round skopeo; promote_round kiln; fi
done
stop_registry

part "registry floor (curl)"
LAYER_DIGEST=$(jq -r '.layers[0].digest' "$WORK/image/blobs/sha256/${DIGEST#sha256:}")
for i in $(seq "$RUNS"); do
  start_registry
  loc=$(curl -si -X POST "http://$REG/v2/floor/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  time_cmd floor -- curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    --upload-file "$WORK/image/blobs/sha256/${LAYER_DIGEST#sha256:}" "${loc}&digest=$LAYER_DIGEST"
done
stop_registry

part "memory: 2 GiB layer"
if [ ! -f "$WORK/big.done" ]; then
  rm -rf "$WORK/big-ctx" "$WORK/big"
  mkdir -p "$WORK/big-ctx"
  head -c 2G /dev/urandom >"$WORK/big-ctx/random.bin"
  printf 'FROM scratch\nCOPY random.bin /\n' >"$WORK/big-ctx/Dockerfile"
  "$KILN_BUILD" "$WORK/big-ctx" --output "oci:$WORK/big" -t kiln/big:v1 --cache-dir "$WORK/big-cache" >/dev/null
  rm -rf "$WORK/big-cache"
  rm -rf "$WORK/big-ctx"
  touch "$WORK/big.done"
fi
start_registry
time_cmd mem_push -- "$KILN_COPY" "oci:$WORK/big:v1" "$REG/kiln/big:v1"
rm -rf "$WORK/pull-big"
time_cmd mem_pull -- "$KILN_COPY" "$REG/kiln/big:v1" "oci:$WORK/pull-big:v1"
rm -rf "$WORK/pull-big"
stop_registry

part "report"
row() { # label kiln skopeo target
  local k s
  k=$(col 1 "$2" | median); s=$(col 1 "$3" | median)
  local kr sr
  kr=$(col 2 "$2" | median); sr=$(col 2 "$3" | median)
  awk -v l="$1" -v k="$k" -v s="$s" -v t="$4" -v kr="$kr" -v sr="$sr" 'BEGIN {
    r = (s > 0) ? k / s : 0;
    printf "| %-34s | %8.3f s | %8.3f s | %5.2fx | %-6s | %-6s | %6.1f MiB | %6.1f MiB |\n", l, k, s, r, t, (t == "-" || r <= t + 0) ? "met" : "MISSED", kr/1024, sr/1024 }'
}
{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $(date -u +%Y-%m-%d)"
  echo "image: debootstrap minbase bookworm, ${ROOTFS_MB} MB root filesystem, one gzip layer of ${LAYER_MB} MiB (umoci), digest $DIGEST"
  echo "runs: $RUNS rounds per tool, alternating, fresh registry per round; re-push and mount $FAST times a round; medians"
  echo
  echo "| operation                          |   kiln     |  skopeo    | ratio  | target | status | kiln RSS   | skopeo RSS |"
  echo "|---|---|---|---|---|---|---|---|"
  row "push oci: -> registry" kiln_push skopeo_push 0.5
  row "re-push (all blobs present)" kiln_repush skopeo_repush 0.5
  row "copy to new repo, same registry" kiln_mount skopeo_mount -
  row "pull registry -> oci:" kiln_pull skopeo_pull 0.5
  row "promote registry A -> registry B" kiln_promote skopeo_promote 0.5
  echo
  printf 'kiln mount copy uploaded: %s\n' "$(grep -o 'uploaded [0-9]*, mounted [0-9]*' "$WORK/times/kiln_mount.err" | tail -1)"
  printf 'registry floor: a bare curl upload of the layer (POST + PUT --upload-file), median %s s\n' "$(col 1 floor | median)"
  printf 'memory, 2 GiB layer: push %s s, peak RSS %s MiB; pull %s s, peak RSS %s MiB (target < 64 MiB)\n' \
    "$(col 1 mem_push)" "$(( $(col 2 mem_push) / 1024 ))" "$(col 1 mem_pull)" "$(( $(col 2 mem_pull) / 1024 ))"
  echo
  echo "layers (layer-diff against its peers):"
  cat "$WORK/layers/results.txt"
  echo
  echo "builds (kiln's build example against buildah bud):"
  cat "$WORK/build/results.txt"
} | tee "$WORK/report.md"
part "done"
printf '\ntime per part:\n' >&2
printf '  %s\n' "${parts[@]:1}" >&2
printf '  total %ss\n' $((SECONDS - T0)) >&2
