//! Dockerfile parsing throughput: kiln's `dockerfile-parse` against the
//! `dockerfile-parser` crate on the same 1 MiB multi-stage Dockerfile (no
//! heredocs, which the other crate lacks), in the same run.
//!
//! ```text
//! cargo bench --bench dockerfile_parse
//! ```
//!
//! Before criterion's report it prints MB/s for both parsers and the ratio
//! (target: at least 5x, set by the dockerfile-parse issue).

// Benchmark code: a panic reports a broken corpus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_precision_loss, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};

/// One build stage as real projects write them: comments, ARG/ENV, long
/// continued RUN lines, COPY with flags, LABELs, exec-form CMD.
fn stage(i: usize) -> String {
    format!(
        r#"# Stage {i}: build the service
ARG GO_VERSION=1.22
FROM golang:${{GO_VERSION}}-bookworm AS build{i}
LABEL org.opencontainers.image.title="service-{i}" \
      org.opencontainers.image.source="https://example.invalid/service" \
      maintainer="team@example.invalid"
ENV CGO_ENABLED=0 GOFLAGS=-mod=vendor PATH=/usr/local/go/bin:$PATH
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        git \
        make \
    && rm -rf /var/lib/apt/lists/*
COPY --chown=1000:1000 go.mod go.sum ./
COPY . .
RUN go build -trimpath -ldflags "-s -w -X main.version=${{VERSION}}" -o /out/service{i} ./cmd/service
EXPOSE 8080 9090
USER 1000:1000
VOLUME ["/data", "/cache"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["/out/service{i}", "health"]
ENTRYPOINT ["/out/service{i}"]
CMD ["--listen", ":8080"]

"#
    )
}

fn corpus(bytes: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(&stage(i));
        i += 1;
    }
    s
}

fn mbps(text: &str, iters: u32, mut f: impl FnMut(&str)) -> f64 {
    f(text);
    let t = Instant::now();
    for _ in 0..iters {
        f(black_box(text));
    }
    let secs = t.elapsed().as_secs_f64();
    (text.len() as f64 * f64::from(iters)) / secs / 1e6
}

fn compare(text: &str) {
    let ours = dockerfile_parse::parse(text).expect("dockerfile-parse parses the corpus");
    let theirs = dockerfile_parser::Dockerfile::parse(text).expect("dockerfile-parser parses the corpus");
    assert_eq!(ours.instructions.len(), theirs.instructions.len(), "both parsers see the same instructions");
    let a = mbps(text, 20, |t| {
        black_box(dockerfile_parse::parse(t).ok());
    });
    let b = mbps(text, 20, |t| {
        black_box(dockerfile_parser::Dockerfile::parse(t).ok());
    });
    println!(
        "corpus {:.2} MB, {} instructions: dockerfile-parse {a:.1} MB/s, dockerfile-parser {b:.1} MB/s, ratio {:.1}x",
        text.len() as f64 / 1e6,
        ours.instructions.len(),
        a / b
    );
}

fn bench(c: &mut Criterion) {
    let text = corpus(1 << 20);
    compare(&text);
    let mut g = c.benchmark_group("parse-1MiB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("dockerfile-parse", |b| b.iter(|| dockerfile_parse::parse(black_box(&text))));
    g.bench_function("dockerfile-parser-0.9", |b| {
        b.iter(|| dockerfile_parser::Dockerfile::parse(black_box(&text)));
    });
    g.finish();

    // word expansion as the build runs it: variables, defaults, quoting
    let lexer = dockerfile_parse::shell::Lexer::new('\\');
    let env: std::collections::BTreeMap<String, String> =
        [("APP_HOME", "/opt/app"), ("VERSION", "1.2.3"), ("NAME", "kiln"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let words = [
        "$APP_HOME/bin",
        "${NAME}-${VERSION}.tar.gz",
        "\"${EMPTY:-default} value\" 'single $NAME'",
        "${UNSET:+alt}${VERSION%.*}/${NAME#k}",
        "plain/path/without/variables",
    ];
    let bytes: usize = words.iter().map(|w| w.len()).sum();
    let mut g = c.benchmark_group("expand");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("5 words", |b| {
        b.iter(|| {
            for w in &words {
                black_box(lexer.expand_word(black_box(w), &env).ok());
            }
        });
    });
    g.finish();

    // stages and expansion of every instruction of the 1 MiB file
    let df = dockerfile_parse::parse(&text).expect("the corpus parses");
    let mut g = c.benchmark_group("plan-1MiB");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("stages::plan", |b| {
        b.iter(|| dockerfile_parse::stages::plan(black_box(&df), &dockerfile_parse::stages::BuildOptions::new()));
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
