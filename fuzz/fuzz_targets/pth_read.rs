//! Fuzz the checkpoint reader (PyTorch zip + pickle, or safetensors): any input must give
//! weights or an error, never a crash or an unbounded allocation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use voxtell_fusion::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("voxtell-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("checkpoint.pth");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ckpt) = Checkpoint::open(&path) {
        for key in ckpt.keys() {
            // Skip absurd claimed sizes: the reader allocates what the archive declares.
            if ckpt.shape(key).map_or(0, |s| s.iter().product::<usize>()) > 1 << 24 {
                continue;
            }
            let _ = ckpt.tensor(key, candle_core::DType::F32, &candle_core::Device::Cpu);
        }
    }
});
