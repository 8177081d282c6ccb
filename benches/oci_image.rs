//! The vocabulary's hot paths: reference and digest parsing, canonical JSON
//! of a realistic manifest and config (serialise, and parse back), and
//! sha256 throughput through `DigestWriter`.
//!
//! ```text
//! cargo bench --bench oci_image
//! cargo bench --bench oci_image -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Before criterion's report it prints sha256 MB/s through `DigestWriter`
//! (DESIGN.md expects about 1 GB/s per core with SHA-NI) and the sizes of
//! the documents.

// Benchmark code: a panic reports a broken fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use oci_image::{
    ConfigBuilder, ContainerConfig, Descriptor, Digest, DigestWriter, Document, History, ImageConfiguration,
    ImageManifest, ManifestBuilder, MediaType, Platform, Reference,
};

/// References as they appear in Dockerfiles, CI configs and compose files.
const REFERENCES: &[&str] = &[
    "nginx",
    "nginx:1.27-alpine",
    "library/debian:bookworm-slim",
    "docker.io/library/ubuntu:24.04",
    "ghcr.io/example-org/platform/api-gateway:v2.14.3",
    "registry.example.com:5000/team/app@sha256:0f4b5c1a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a",
    "localhost:5000/kiln/test:latest",
    "[::1]:5000/kiln/ipv6:edge",
    "quay.io/prometheus/node-exporter:v1.8.2@sha256:4032c6d5bfd752342c3e631c2f1de93ba6b86c41db6b167b9a35372c139e7706",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/backend/worker:build-20241105.3",
];

const DIGESTS: &[&str] = &[
    "sha256:0f4b5c1a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "sha256:4032c6d5bfd752342c3e631c2f1de93ba6b86c41db6b167b9a35372c139e7706",
];

/// A digest of `i` (distinct per layer).
fn digest_of(i: usize) -> Digest {
    Digest::sha256(format!("layer {i}").as_bytes())
}

/// A manifest like a real service image's: 12 gzip layers, annotations.
fn manifest(config: &Descriptor) -> ImageManifest {
    let layers = (0..12).map(|i| Descriptor::new(MediaType::OciLayerGzip, digest_of(i), 1_000_000 + i as u64 * 7919));
    ManifestBuilder::new(config.clone())
        .layers(layers)
        .annotation("org.opencontainers.image.created", "2024-11-05T10:00:00Z")
        .annotation("org.opencontainers.image.source", "https://example.invalid/platform/api-gateway")
        .annotation("org.opencontainers.image.revision", "8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a")
        .annotation("org.opencontainers.image.version", "2.14.3")
        .build()
}

/// A config like a real service image's: env, labels, ports, 12 layers
/// and 30 history entries (some empty).
fn config() -> ImageConfiguration {
    let platform: Platform = "linux/amd64".parse().unwrap();
    let labels: BTreeMap<String, String> =
        (0..16).map(|i| (format!("org.example.label.{i:02}"), format!("value number {i} of this label"))).collect();
    let exec = ContainerConfig {
        user: Some("1000:1000".into()),
        exposed_ports: Some(["8080/tcp".to_owned(), "9090/tcp".to_owned()].into_iter().collect()),
        env: Some(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "LANG=C.UTF-8".into(),
            "SERVICE_VERSION=2.14.3".into(),
            "GODEBUG=madvdontneed=1".into(),
        ]),
        entrypoint: Some(vec!["/usr/local/bin/api-gateway".into()]),
        cmd: Some(vec!["--listen".into(), ":8080".into()]),
        working_dir: Some("/srv".into()),
        labels: Some(labels),
        ..ContainerConfig::default()
    };
    let mut b = ConfigBuilder::new(&platform).created("2024-11-05T10:00:00Z").config(exec);
    for i in 0..30 {
        let history = History {
            created: Some("2024-11-05T10:00:00Z".into()),
            created_by: Some(format!("RUN /bin/sh -c apt-get update && apt-get install -y package-{i} # buildkit")),
            comment: Some("buildkit.dockerfile.v0".into()),
            ..History::default()
        };
        b = if i % 5 == 4 { b.empty_layer(history) } else { b.layer(digest_of(i), history) };
    }
    b.build()
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(REFERENCES.len() as u64));
    g.bench_function("reference x10", |b| {
        b.iter(|| {
            for r in REFERENCES {
                black_box(black_box(r).parse::<Reference>().unwrap());
            }
        });
    });
    g.bench_function("reference x10 round trip (parse + Display)", |b| {
        b.iter(|| {
            for r in REFERENCES {
                black_box(black_box(r).parse::<Reference>().unwrap().to_string());
            }
        });
    });
    g.throughput(Throughput::Elements(DIGESTS.len() as u64));
    g.bench_function("digest x4", |b| {
        b.iter(|| {
            for d in DIGESTS {
                black_box(black_box(d).parse::<Digest>().unwrap());
            }
        });
    });
    g.finish();
}

fn canonical_json(c: &mut Criterion) {
    let cfg = config();
    let cfg_bytes = cfg.to_canonical_json();
    let cfg_desc = Descriptor::of_bytes(MediaType::OciConfig, &cfg_bytes);
    let man = manifest(&cfg_desc);
    let man_bytes = man.to_canonical_json();
    assert_eq!(ImageManifest::from_json(&man_bytes).unwrap().to_canonical_json(), man_bytes, "stable");
    assert_eq!(ImageConfiguration::from_json(&cfg_bytes).unwrap().to_canonical_json(), cfg_bytes, "stable");
    println!(
        "documents: manifest {} bytes (12 layers), config {} bytes (30 history entries)",
        man_bytes.len(),
        cfg_bytes.len()
    );
    let mut g = c.benchmark_group("canonical-json");
    g.throughput(Throughput::Bytes(man_bytes.len() as u64));
    g.bench_function("manifest serialise", |b| b.iter(|| black_box(black_box(&man).to_canonical_json())));
    g.bench_function("manifest parse", |b| b.iter(|| black_box(ImageManifest::from_json(black_box(&man_bytes)))));
    g.throughput(Throughput::Bytes(cfg_bytes.len() as u64));
    g.bench_function("config serialise", |b| b.iter(|| black_box(black_box(&cfg).to_canonical_json())));
    g.bench_function("config parse", |b| b.iter(|| black_box(ImageConfiguration::from_json(black_box(&cfg_bytes)))));
    g.finish();
}

/// Hashes `data` through a `DigestWriter` in 256 KiB writes (the layout's
/// buffer size) into a sink.
fn hash_through_writer(data: &[u8]) -> Digest {
    let mut w = DigestWriter::new(std::io::sink());
    for chunk in data.chunks(256 * 1024) {
        w.write_all(chunk).unwrap();
    }
    w.finish().1
}

fn sha256(c: &mut Criterion) {
    let data: Vec<u8> = (0..64 * 1024 * 1024u32)
        .map(|i| {
            let [low, ..] = (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes();
            low
        })
        .collect();
    assert_eq!(hash_through_writer(&data), Digest::sha256(&data));
    let runs = 5;
    let started = Instant::now();
    for _ in 0..runs {
        black_box(hash_through_writer(black_box(&data)));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sha256 through DigestWriter: {:.0} MB/s ({} MiB x {runs} in {secs:.2} s, one core)",
        (data.len() * runs) as f64 / secs / 1e6,
        data.len() >> 20
    );
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("DigestWriter 64 MiB", |b| b.iter(|| hash_through_writer(black_box(&data))));
    let small = data.get(..4096).unwrap();
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.sample_size(50);
    g.bench_function("DigestWriter 4 KiB", |b| b.iter(|| hash_through_writer(black_box(small))));
    g.finish();
}

criterion_group!(benches, parsing, canonical_json, sha256);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
