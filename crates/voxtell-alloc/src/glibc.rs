//! glibc's malloc settings for tensor-sized buffers: keep freed memory in the heap while a
//! prediction runs ([`tune_allocator`]) and give it back when a long-running program goes idle
//! ([`trim_heap`]). On other platforms both are no-ops.

/// Keep large tensor buffers in the heap between allocations (glibc on Linux only; elsewhere a
/// no-op). Returns whether the settings were applied.
///
/// A binary that installs [`BlockAllocator`](crate::BlockAllocator) (the `voxtell` command does) serves buffers
/// of 16 MiB and more there; these settings then govern only the smaller ones.
///
/// glibc serves allocations above its mmap threshold (at most 32 MiB by default) with a fresh
/// `mmap` and returns them with `munmap`, and trims the heap top above 128 KiB; the kernel then
/// zero-fills every page of every large tensor again on first touch. A network that allocates
/// and frees tens of MiB per operation spends about half its time there (measured: 4.4 s of
/// system time in a 8.8 s phantom evaluation, 0.5 s after this call). This raises the mmap
/// threshold to 1 GiB and turns heap trimming off, so freed buffers are reused: the resident
/// size stays at its peak once reached (the peak itself barely changes, within ±2 % here), and
/// a prediction of several tiles no longer pays the page zeroing again for every tile (two
/// full-size tiles: 36.1 → 33.5 s, system time 6.6 → 2.5 s, against trimming above 1 GiB; see
/// docs/performance.md). Call it first thing in `main`, before threads start. Nothing is
/// changed when `VOXTELL_SYSTEM_MALLOC` is set or when the user tunes glibc through
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`.
pub fn tune_allocator() -> bool {
    let user_choice = ["VOXTELL_SYSTEM_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if user_choice {
        return false;
    }
    // -1: never trim (glibc reads the threshold as an unsigned size).
    glibc_thresholds(1 << 30, -1)
}

/// Give the free memory of the C heap back to the system (glibc's `malloc_trim(0)`; elsewhere a
/// no-op). [`tune_allocator`] turns automatic trimming off, which suits one prediction; a
/// long-running program (a server between jobs) calls this when it goes idle. Returns whether
/// memory was given back.
pub fn trim_heap() -> bool {
    glibc_trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // the FFI call to glibc's malloc_trim
fn glibc_trim() -> bool {
    // SAFETY: malloc_trim only returns free heap pages to the system; it takes the allocator's
    // own locks and may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_trim() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // the FFI call to glibc's mallopt
fn glibc_thresholds(mmap: i32, trim: i32) -> bool {
    // SAFETY: mallopt only changes allocator parameters; it is called with valid parameter
    // numbers and values, and before the program starts other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_thresholds(_mmap: i32, _trim: i32) -> bool {
    false
}
