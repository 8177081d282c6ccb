#!/usr/bin/env bash
# Runs layer-diff's examples and the peers (umoci, pigz, zstd) side by side on
# the same data: alternating, median of RUNS (default 5), page cache warmed by
# a first untimed run, outputs written under WORK (put it on the same disk as
# the trees). Prints medians and ratios, and writes them to WORK/results.txt.
#
#   benches/layer_peers.sh ROOTFS_V1 ROOTFS_V2 WORK   (benches/peers.sh runs it)
#
# ROOTFS_V1: e.g. `debootstrap --variant=minbase bookworm ROOTFS_V1`;
# ROOTFS_V2: a copy of it after `chroot ROOTFS_V2 apt-get install -y curl`.
# Needs umoci, pigz, zstd, rsync, GNU time and bc (installs them when missing,
# as root); builds the examples in release mode.
# ONLY=NAME runs only the comparisons whose name contains NAME (ONLY=rss: only
# the peak RSS part); SKIP_RSS=1 skips the peak RSS part. GZIP_LEVEL=N (default
# 1, kiln's default) is the level of kiln's gzip layers (1-3: its own fast deflate, 4-9:
# zlib-rs); the size of its whole-tree layer is compared with level 6's.
#
# Outputs of earlier runs are moved into WORK/trash, not deleted, until the
# end: on ext4, creating inodes shortly after deleting many (for 30 s, or
# 5.5 min while their inode table blocks are dirty) makes every create scan
# past the recently deleted ones (`recently_deleted` in `find_inode_bit`,
# about 0.6 ms per create after removing a 6,800-file tree here), which
# would time the previous run's `rm -rf` rather than the tools.
set -euo pipefail
# shellcheck source=benches/need.sh
. "$(dirname "$0")/need.sh"
need umoci:umoci pigz:pigz zstd:zstd rsync:rsync time:/usr/bin/time bc:bc
V1=$(realpath "$1"); V2=$(realpath "$2"); WORK=$(realpath -m "$3")
RUNS=${RUNS:-5}
GZIP_LEVEL=${GZIP_LEVEL:-1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
(cd "$HERE" && cargo build --release -q -p layer-diff --examples >&2)
TARGET=$(cd "$HERE" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
LAYER=$TARGET/release/examples/layer
UNPACK=$TARGET/release/examples/unpack
RESULTS=$WORK/results.txt
: > "$RESULTS"

now() { date +%s.%N; }
mkdir -p "$WORK/trash"
# retire PATH...: moves PATHs out of the way (a rename: no inode is freed)
retire() { local p; for p in "$@"; do if [ -e "$p" ]; then mv "$p" "$WORK/trash/$(basename "$p").$(date +%s%N)"; fi; done; }
export -f retire
export WORK
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# time_of CMD...: seconds taken by CMD (its output discarded)
time_of() { local t0 t1; t0=$(now); "$@" > /dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc -l; }

# compare NAME SETUP_A A SETUP_B B LIMIT: alternates A and B RUNS times (after
# one warm-up each); SETUP_* run untimed before every run; LIMIT is the
# target ratio time(A)/time(B) ("max:0.5" or "min:0.8" for throughput).
compare() {
  local name=$1 setup_a=$2 a=$3 setup_b=$4 b=$5 limit=$6 ta=() tb=()
  if [ -n "${ONLY:-}" ] && [[ "$name" != *"$ONLY"* ]]; then return; fi
  eval "$setup_a"; eval "$a" > /dev/null 2>&1
  eval "$setup_b"; eval "$b" > /dev/null 2>&1
  # sync after each setup: the setups write hundreds of MB, and their writeback
  # would otherwise land in whichever timed run comes next
  for _ in $(seq "$RUNS"); do
    eval "$setup_a"; sync; ta+=("$(time_of bash -c "$a")")
    eval "$setup_b"; sync; tb+=("$(time_of bash -c "$b")")
  done
  local ma mb ratio
  ma=$(printf '%s\n' "${ta[@]}" | median); mb=$(printf '%s\n' "${tb[@]}" | median)
  ratio=$(echo "$ma / $mb" | bc -l)
  printf '%-28s ours %6.2fs  peer %6.2fs  ratio %.2f  (target %s)\n' "$name" "$ma" "$mb" "$ratio" "$limit" | tee -a "$RESULTS"
}

export LAYER UNPACK V1 V2 WORK

# the ready-made tar for the compressors alone
"$LAYER" --upper "$V1" --out "$WORK/v1.tar" --compression none > /dev/null

if [ "${ONLY:-}" != rss ]; then

# 0. the size of the whole-tree layer at GZIP_LEVEL against zlib level 6
"$LAYER" --upper "$V1" --out "$WORK/l6.blob" --compression gzip --level 6 --threads 2 > /dev/null
"$LAYER" --upper "$V1" --out "$WORK/ln.blob" --compression gzip --level "$GZIP_LEVEL" --threads 2 > /dev/null
s6=$(stat -c %s "$WORK/l6.blob"); sn=$(stat -c %s "$WORK/ln.blob")
printf '%-28s level %s %d bytes, level 6 %d bytes, ratio %.3f  (goal <= 1.10)\n' "tree gzip size" "$GZIP_LEVEL" "$sn" "$s6" "$(echo "$sn / $s6" | bc -l)" | tee -a "$RESULTS"
rm -f "$WORK/l6.blob" "$WORK/ln.blob"

# 1. whole tree, gzip at GZIP_LEVEL, 2 threads, vs umoci repack and vs pigz -6 on the tar
umoci_base() {
  retire "$WORK/u"; mkdir -p "$WORK/u"
  umoci init --layout "$WORK/u/l" && umoci new --image "$WORK/u/l:t" && umoci unpack --image "$WORK/u/l:t" "$WORK/u/b"
  cp -a "$V1/." "$WORK/u/b/rootfs/"
} > /dev/null 2>&1
export -f umoci_base
compare "tree gzip vs umoci repack" "rm -f $WORK/o.blob" \
  "$LAYER --upper $V1 --out $WORK/o.blob --compression gzip --level $GZIP_LEVEL --threads 2" \
  "umoci_base" "umoci repack --image $WORK/u/l:t $WORK/u/b" "max:0.35"
compare "tree gzip vs pigz -6 -p 2" "rm -f $WORK/o.blob" \
  "$LAYER --upper $V1 --out $WORK/o.blob --compression gzip --level $GZIP_LEVEL --threads 2" \
  "rm -f $WORK/p.gz" "pigz -6 -p 2 -c $WORK/v1.tar > $WORK/p.gz" "max:1.0"

# 2. the diff layer v1 -> v2 vs umoci's diff repack
umoci_diff() {
  retire "$WORK/d"; mkdir -p "$WORK/d"
  umoci init --layout "$WORK/d/l" && umoci new --image "$WORK/d/l:t" && umoci unpack --image "$WORK/d/l:t" "$WORK/d/b"
  cp -a "$V1/." "$WORK/d/b/rootfs/" && umoci repack --image "$WORK/d/l:t" "$WORK/d/b"
  retire "$WORK/d/b" && umoci unpack --image "$WORK/d/l:t" "$WORK/d/b"
  rsync -aHAX --delete "$V2/" "$WORK/d/b/rootfs/"
} > /dev/null 2>&1
export -f umoci_diff
compare "diff gzip vs umoci repack" "rm -f $WORK/o.blob" \
  "$LAYER --lower $V1 --upper $V2 --out $WORK/o.blob --compression gzip --level $GZIP_LEVEL --threads 2" \
  "umoci_diff" "umoci repack --image $WORK/d/l:t $WORK/d/b" "max:0.5"

# 3. zstd -3 pipeline vs the zstd CLI on the tar (throughput: ours >= 0.8x, i.e. time ratio <= 1.25)
compare "tree zstd vs zstd -3 -T2" "rm -f $WORK/o.blob" \
  "$LAYER --upper $V1 --out $WORK/o.blob --compression zstd --level 3 --threads 2" \
  "rm -f $WORK/z.zst" "zstd -q -3 -T2 -c $WORK/v1.tar > $WORK/z.zst" "max:1.25"

# 4. unpack vs umoci unpack (of the two-layer image umoci made above)
[ -d "$WORK/d/l" ] || umoci_diff
compare "unpack vs umoci unpack" "retire $WORK/x" \
  "$UNPACK oci:$WORK/d/l:t $WORK/x" \
  "retire $WORK/y" "umoci unpack --image $WORK/d/l:t $WORK/y" "max:0.25"
fi

# 5. peak RSS while making a 2 GiB layer (ONLY=rss skips the timings above)
if [ -z "${SKIP_RSS:-}" ] && { [ -z "${ONLY:-}" ] || [ "${ONLY:-}" = rss ]; }; then
if [ ! -d "$WORK/big" ]; then
  mkdir -p "$WORK/big"
  for i in 1 2 3 4; do head -c 268435456 /dev/urandom > "$WORK/big/random$i"; done
  for i in 1 2 3 4; do { cat "$WORK/v1.tar" "$WORK/v1.tar" | head -c 268435456 > "$WORK/big/text$i"; } || true; done
fi
for c in gzip zstd none; do
  rss=$( { /usr/bin/time -f '%M' "$LAYER" --upper "$WORK/big" --out "$WORK/big.blob" --compression "$c" --threads 2 > /dev/null; } 2>&1 | tail -1)
  printf '%-28s peak RSS %d KiB (target < 65536)\n' "2 GiB layer $c" "$rss" | tee -a "$RESULTS"
done
rm -f "$WORK/big.blob"
fi
# the outputs of all runs, deleted once nothing is timed any more
rm -rf "$WORK/trash"
