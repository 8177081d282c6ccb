//! Throughput of the one-pass pipeline (walk -> tar -> sha256 -> compress ->
//! sha256) and of apply, on a generated tree of text-like files.
//! `benches/peers.sh` compares against umoci, pigz and zstd on a real rootfs.
#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write;
use std::io::{self, Cursor};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use layer_diff::{ApplyOptions, PackOptions};
use oci_image::Compression;

/// About 48 MiB in 600 files of pseudo-text (compresses about 3:1, like a rootfs).
fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let words: Vec<&str> = "the of and to in is for on that with as by at from this be or an are it not which have \
        usr lib share bin etc config value error return static const struct include define"
        .split_whitespace()
        .collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for dir in 0..20 {
        let p = d.path().join(format!("dir{dir:02}"));
        std::fs::create_dir(&p).unwrap();
        for file in 0..30 {
            let mut s = String::with_capacity(80_000);
            while s.len() < 80_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let word = usize::try_from(x % words.len() as u64).unwrap();
                s.push_str(words.get(word).unwrap());
                if x.is_multiple_of(7) {
                    // numbers break up the repetition, as in real config and source files
                    write!(s, " {:x}", x >> 40).unwrap();
                }
                s.push(if x.is_multiple_of(11) { '\n' } else { ' ' });
            }
            std::fs::write(p.join(format!("file{file:02}.txt")), s).unwrap();
        }
    }
    d
}

fn bench(c: &mut Criterion) {
    let t = tree();
    let base = PackOptions { epoch: Some(0), ..PackOptions::default() };
    let (tar, _) =
        layer_diff::pack_dir(t.path(), Vec::new(), &PackOptions { compression: Compression::None, ..base.clone() })
            .unwrap();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(10);
    for (name, compression, threads) in [
        ("none", Compression::None, 1),
        ("gzip-6-1thread", Compression::Gzip, 1),
        ("gzip-6-2threads", Compression::Gzip, 2),
        ("zstd-3-2threads", Compression::Zstd, 2),
    ] {
        let opts = PackOptions { compression, threads, ..base.clone() };
        g.bench_function(name, |b| b.iter(|| layer_diff::pack_dir(t.path(), io::sink(), &opts).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.sample_size(10);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let opts = PackOptions { compression, threads: 2, ..base.clone() };
        let (blob, info) = layer_diff::pack_dir(t.path(), Vec::new(), &opts).unwrap();
        let desc = info.descriptor();
        g.bench_function(format!("{compression:?}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |out| {
                    layer_diff::apply_blob(Cursor::new(&blob), &desc, out.path(), &ApplyOptions::default()).unwrap();
                    out
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
