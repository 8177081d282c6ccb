//! References: whatever parses prints in a form that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_image::Reference;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Reference::parse(s) {
        let shown = r.to_string();
        let again = Reference::parse(&shown).expect("Display output must parse");
        assert_eq!(again, r, "Display round trip of {s:?}");
        let familiar = Reference::parse(&r.familiar()).expect("familiar form must parse");
        assert_eq!(familiar, r, "familiar round trip of {s:?}");
    }
});
