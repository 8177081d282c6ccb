//! Snapshot and diff of a large tree (issue 8): 10,000 small files in 200
//! directories, about 40 MiB. Measures the sorted walk alone, the diff of a
//! tree against itself (metadata decides everything), the diff against a
//! copy with the same mtimes but new change times (every file's content is
//! compared, as after `cp -a`), and the same copy with 1% of files changed.
#![allow(missing_docs, clippy::unwrap_used, clippy::indexing_slicing)]

use std::fs;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use layer_diff::{Snapshot, diff};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

const DIRS: usize = 200;
const FILES: usize = 50;

fn make(root: &Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for d in 0..DIRS {
        let dir = root.join(format!("d{d:03}/sub"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1_000 + usize::try_from(x % 7_000).unwrap();
            let body: Vec<u8> = (0..len).map(|i| b"abcdefgh\n"[(i + d + f) % 9]).collect();
            fs::write(dir.join(format!("f{f:02}")), body).unwrap();
        }
    }
}

/// A copy with the same modes and mtimes (nanoseconds too): new inodes and change times.
fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
            same_times(&src, &dst);
        }
    }
    same_times(from, to);
}

fn same_times(src: &Path, dst: &Path) {
    let st = rustix::fs::lstat(src).unwrap();
    let t = Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec.cast_signed() };
    rustix::fs::utimensat(CWD, dst, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap();
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, same, changed) = (tmp.path().join("lower"), tmp.path().join("same"), tmp.path().join("changed"));
    make(&lower);
    copy(&lower, &same);
    copy(&lower, &changed);
    for d in (0..DIRS).step_by(2) {
        fs::write(changed.join(format!("d{d:03}/sub/f00")), "changed").unwrap();
    }
    let entries = Snapshot::walk(&lower).unwrap().entries().len() as u64;
    assert!(entries > (DIRS * FILES) as u64);

    let mut g = c.benchmark_group("tree");
    g.throughput(Throughput::Elements(entries));
    g.sample_size(10);
    g.bench_function("snapshot", |b| b.iter(|| Snapshot::walk(&lower).unwrap()));
    let lo = Snapshot::walk(&lower).unwrap();
    let again = Snapshot::walk(&lower).unwrap();
    g.bench_function("diff-itself", |b| {
        b.iter(|| {
            let changes = diff(&lo, &again).unwrap();
            assert!(changes.is_empty());
        });
    });
    let up = Snapshot::walk(&same).unwrap();
    g.bench_function("diff-copy-unchanged", |b| {
        b.iter(|| {
            let changes = diff(&lo, &up).unwrap();
            assert!(changes.is_empty(), "{changes:?}");
        });
    });
    let up = Snapshot::walk(&changed).unwrap();
    g.bench_function("diff-copy-1pct-changed", |b| {
        b.iter(|| {
            let changes = diff(&lo, &up).unwrap();
            assert!(changes.len() >= DIRS / 2);
        });
    });
    g.bench_function("walk-both-and-diff-copy", |b| {
        b.iter(|| diff(&Snapshot::walk(&lower).unwrap(), &Snapshot::walk(&changed).unwrap()).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
