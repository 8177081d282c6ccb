//! Fuzz layer decompression with a size limit (gzip, zstd, none), through
//! `Decompressor` and the verified apply paths. Invariants:
//!
//! - a stream the harness compressed itself decodes to exactly its input;
//! - `apply_blob` and `apply_blob_streaming` with `size_limit` never write
//!   more than the limit into the root, and agree with each other;
//! - success means the whole decoded stream fit: `tar_size` is its length
//!   (at most the limit) and `diff_id` its sha256;
//! - `TooLarge` carries the configured limit, and a stream that decodes
//!   cleanly within the limit is never `TooLarge`; every other failure is a typed
//!   `ApplyError` (never a panic, never an unbounded allocation).
//!
//! Input: `[codec][limit: 3 bytes][shape][payload...]`. Shape bit 0 picks
//! raw bytes (the payload is the blob, for the decoders' own parsing) or a
//! harness-made blob: a tar holding one file whose data is the payload
//! repeated (a small bomb), compressed with the codec, then optionally cut
//! short or with one byte flipped.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run decode -- -max_total_time=60
//! ```
//!
//! Crashers go to `fuzz/artifacts/decode/`; keep the blob (replaying with
//! `KILN_FUZZ_DUMP_BLOB=FILE` writes it) as
//! `layer-diff/tests/layer_diff/fuzz-regressions/decode-*.{gz,zst,tar}`.

#![no_main]

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use layer_diff::{ApplyError, ApplyOptions, Decompressor, apply_blob, apply_blob_streaming};
use libfuzzer_sys::fuzz_target;
use oci_image::{Compression, Descriptor, Digest, MediaType};

fn base() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| std::env::temp_dir().join(format!("kiln-fuzz-decode-{}", std::process::id())))
}

fn fresh(name: &str) -> PathBuf {
    let p = base().join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("fresh root");
    p
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read root") {
        let p = e.expect("entry").path();
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.is_dir() {
            n += tree_bytes(&p);
        } else if m.is_file() {
            n += m.len();
        }
    }
    n
}

fn compress(codec: Compression, data: &[u8]) -> Vec<u8> {
    match codec {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("in memory");
            e.finish().expect("in memory")
        }
        Compression::Zstd => zstd::stream::encode_all(data, 1).expect("in memory"),
        _ => data.to_vec(),
    }
}

/// Decodes up to `cap` bytes; `Err` when the decoder fails before that.
fn decode(codec: Compression, blob: &[u8], cap: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    Decompressor::new(blob, Some(codec))?.take(cap).read_to_end(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let [c, l0, l1, l2, shape, payload @ ..] = data else { return };
    let (codec, media_type) = match c % 3 {
        0 => (Compression::Gzip, MediaType::OciLayerGzip),
        1 => (Compression::Zstd, MediaType::OciLayerZstd),
        _ => (Compression::None, MediaType::OciLayer),
    };
    // up to 1 MiB
    let limit = u64::from_be_bytes([0, 0, 0, 0, 0, *l0 & 0x0f, *l1, *l2]);
    let (blob, plain) = if shape & 1 == 0 {
        (payload.to_vec(), None)
    } else {
        // a tar with one file: the payload repeated up to 256 times
        let reps = 1usize << (shape >> 4).min(8);
        let body_len = payload.len() * reps;
        let mut h = tar::Header::new_ustar();
        h.set_path("f").expect("short name");
        h.set_size(body_len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        for _ in 0..reps {
            tar.extend_from_slice(payload);
        }
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        let mut blob = compress(codec, &tar);
        let at = usize::from(*l2) * 7 % blob.len().max(1);
        match (shape >> 1) & 3 {
            1 => blob.truncate(at),
            2 => {
                if let Some(b) = blob.get_mut(at) {
                    *b ^= l1 | 1;
                }
            }
            _ => {}
        }
        let intact = (shape >> 1) & 3 == 0 || (shape >> 1) & 3 == 3;
        (blob, intact.then_some(tar))
    };
    if let Some(path) = std::env::var_os("KILN_FUZZ_DUMP_BLOB") {
        std::fs::write(path, &blob).expect("dump the blob");
    }

    // the decoder alone: a harness-made stream round-trips
    if let Some(tar) = &plain {
        let full = decode(codec, &blob, u64::MAX).expect("an intact stream decodes");
        assert_eq!(&full, tar, "round trip");
    }

    let desc = Descriptor::new(media_type, Digest::sha256(&blob), blob.len() as u64);
    let opts = ApplyOptions { mknod: false, size_limit: Some(limit), ..ApplyOptions::default() };
    let seek_root = fresh("seek");
    let seek = apply_blob(Cursor::new(&blob), &desc, &seek_root, &opts);
    assert!(tree_bytes(&seek_root) <= limit, "more than the limit written ({seek:?})");
    let stream_root = fresh("stream");
    let stream = apply_blob_streaming(&blob[..], &desc, &stream_root, &opts);
    assert!(tree_bytes(&stream_root) <= limit, "more than the limit written ({stream:?})");
    match (&seek, &stream) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(ApplyError::TooLarge { .. }), Err(ApplyError::TooLarge { .. })) | (Err(_), Err(_)) => {}
        _ => panic!("the two apply paths disagree: {seek:?} vs {stream:?}"),
    }
    match seek {
        Ok(info) => {
            assert!(info.tar_size <= limit);
            let all = decode(codec, &blob, limit + 1).expect("applied, so it decodes");
            assert_eq!(info.tar_size, all.len() as u64);
            assert_eq!(info.diff_id, Digest::sha256(&all));
        }
        Err(ApplyError::TooLarge { limit: l }) => {
            assert_eq!(l, limit);
            // a stream that decodes cleanly within the limit is never too large
            // (a corrupt one may: how much decodes before the error depends
            // on the reads' sizes)
            if let Ok(all) = decode(codec, &blob, limit + 1) {
                assert!(all.len() as u64 > limit, "TooLarge but the stream decodes to {} bytes", all.len());
            }
        }
        Err(_) => {}
    }
});
