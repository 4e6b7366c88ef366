//! Fuzz the NIfTI header and voxel reader, and the reorientation that follows it: any input must
//! give a volume or a typed error, never a panic, a hang or an unbounded allocation.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(volume) = voxtell_io::read_nifti_bytes(data, "fuzz.nii") {
        let _ = volume.summary();
        if let Ok(ras) = volume.to_ras() {
            let _ = ras.geometry.restore(ras.data.view());
        }
    }
});
