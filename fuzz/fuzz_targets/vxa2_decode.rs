//! Fuzz the VXA2 decoder (header parsing, chunk framing and C-Blosc2 decompression): any body
//! must give an array within the limit or a typed error, never a panic, a hang or an allocation
//! past the limit.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = voxtell_wire::declared_size(data);
    if let Ok(array) = voxtell_wire::decode(data, 1 << 24) {
        assert!(array.bytes().len() <= 1 << 24);
        let _ = array.to_labels();
        let _ = array.to_f32();
    }
});
