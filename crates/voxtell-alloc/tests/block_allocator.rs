//! The block allocator's cache as a long-running program sees it: freed blocks are kept for
//! reuse, and `release` gives them back.

#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

use voxtell_alloc::{BlockAllocator, LARGE};

#[test]
fn release_gives_the_cached_blocks_back() {
    // A local instance (not the global allocator): its blocks are its own mappings.
    let a = BlockAllocator::new();
    let layout = Layout::from_size_align(LARGE * 2, 64).unwrap();
    // SAFETY: the layout has a non-zero size; the block is freed once, with the same layout.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(7, layout.size());
        a.dealloc(p, layout);
    }
    if !cfg!(target_os = "linux") || std::env::var_os("VOXTELL_SYSTEM_MALLOC").is_some() {
        return; // the system allocator serves everything there
    }
    let before = a.stats();
    assert!(before.cached >= layout.size(), "{before:?}");
    assert_eq!(a.release(), before.cached);
    let after = a.stats();
    assert_eq!((after.cached, after.live, after.peak), (0, 0, 0), "{after:?}");
    // The allocator still serves after a release.
    // SAFETY: as above.
    unsafe {
        let p = a.alloc(layout);
        assert!(!p.is_null());
        a.dealloc(p, layout);
    }
}
