//! Manifest, index and config JSON: whatever parses serialises to bytes
//! that parse to the same value and serialise identically again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_image::{Document, ImageConfiguration, ImageIndex, ImageManifest};

fn stable<T: Document + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = T::from_json(data) {
        let bytes = v.to_canonical_json();
        let again = T::from_json(&bytes).expect("canonical output must parse");
        assert_eq!(again, v);
        assert_eq!(again.to_canonical_json(), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    stable::<ImageManifest>(data);
    stable::<ImageIndex>(data);
    stable::<ImageConfiguration>(data);
    let _ = oci_image::AnyManifest::from_bytes(data.to_vec(), None);
});
