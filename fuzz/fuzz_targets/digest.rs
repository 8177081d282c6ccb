//! Digests and media types: Display round-trips for whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_image::{Digest, MediaType};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        assert_eq!(d.to_string().parse::<Digest>().expect("round trip"), d);
    }
    if let Ok(m) = s.parse::<MediaType>() {
        assert_eq!(m.as_str(), s);
    }
});
