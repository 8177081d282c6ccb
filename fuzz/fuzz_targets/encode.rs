//! Fuzz the gzip encoder, kiln's own fast deflate (levels 1-3) above all:
//! any input, at any level, on any thread count.
//!
//! - the stream is one gzip member that flate2's single-member reader
//!   decodes to exactly the input (as `Decompressor` does);
//! - the bytes are the same on 1 thread as on 2-4;
//! - random data does not grow by more than a small bound.
//!
//! Input: `[level][threads][repeat][payload...]`; the payload is repeated
//! `repeat % 8 + 1` times, so that long inputs cross the pipeline's 512 KiB
//! blocks and the encoder's 128 KiB segments.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run encode -- -max_total_time=60
//! ```

#![no_main]

use std::io::{Read, Write};

use layer_diff::{Decompressor, ParallelGzip};
use libfuzzer_sys::fuzz_target;
use oci_image::Compression;

fn gzip(data: &[u8], level: u32, threads: usize) -> Vec<u8> {
    let mut g = ParallelGzip::new(Vec::new(), level, threads);
    // uneven writes, as a tar writer makes them
    for chunk in data.chunks(4093) {
        g.write_all(chunk).expect("in memory");
    }
    g.finish().expect("in memory")
}

fuzz_target!(|data: &[u8]| {
    let [level, threads, repeat, payload @ ..] = data else { return };
    let level = u32::from(*level % 10);
    let threads = usize::from(*threads % 3) + 2;
    let mut input = Vec::new();
    for _ in 0..=(*repeat % 8) {
        input.extend_from_slice(payload);
    }
    let one = gzip(&input, level, 1);
    assert_eq!(one, gzip(&input, level, threads), "level {level}: 1 thread vs {threads}");
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).expect("a stream we wrote decodes");
    assert!(back == input, "level {level}: round trip");
    let mut again = Vec::new();
    Decompressor::new(&one[..], Some(Compression::Gzip)).expect("gzip").read_to_end(&mut again).expect("decodes");
    assert!(again == input, "level {level}: Decompressor");
    // stored blocks bound the growth: header, trailer, 5 bytes per 64 KiB and per block
    assert!(one.len() <= input.len() + input.len() / 1000 + 64, "level {level}: {} for {}", one.len(), input.len());
});
