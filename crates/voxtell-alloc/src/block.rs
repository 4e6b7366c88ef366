//! A global allocator for tensor-sized buffers: large blocks are mapped on their own, kept when
//! freed, and their pages handed out again to later requests, while the memory held never
//! exceeds the largest amount the program has had in use at once.
//!
//! Why: a network pass allocates and frees a few tensor sizes over and over (at 192³ with 32
//! channels, 864 MB each). glibc either maps every such buffer afresh, so the kernel zero-fills
//! every page of every tensor on first touch (`VOXTELL_SYSTEM_MALLOC=1`: one 192³ prompt
//! 16.4 → 20.7 s, 14.7 s of system time), or, with [`crate::tune_allocator`]'s settings, keeps
//! them in its heap, where buffers of different sizes fragment it and the resident size grows
//! past what is live (4835 MiB resident for 4365 MiB live). Here a freed block's address range
//! waits in a small cache, merged with adjacent freed ranges; a request is cut from the smallest
//! cached range that holds it, without a page fault; a request that fits none gets a new range
//! into which cached pages are moved (`mremap`: page tables move, no page is zeroed or copied),
//! only the remainder faulting in fresh. Cached bytes are only ever consumed by the requests
//! that find none cached, so the held total (live + cached) never exceeds the peak of live
//! bytes: the resident size stays at the live peak, and a tile loop in its steady state faults
//! no page in.
//!
//! Install it in a binary (the `voxtell` command does; see the crate docs).
//!
//! Requests below [`LARGE`] bytes, or aligned to more than 2 MiB, go to the system allocator, as
//! does everything when `VOXTELL_SYSTEM_MALLOC` is set when the first large request arrives, and
//! everything on platforms other than Linux.

#![allow(unsafe_code)] // a `GlobalAlloc` and the `mmap`/`mremap`/`munmap` calls it makes

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Requests of at least this many bytes are served by the block cache (16 MiB).
pub const LARGE: usize = 16 << 20;
/// Block sizes are rounded up to, and blocks aligned on, this many bytes (2 MiB, what one
/// page-table page maps), so every mapping this module makes starts and ends on a grain.
const GRAIN: usize = 2 << 20;
/// Separate freed ranges the cache keeps at most (more are unmapped, smallest first).
const SLOTS: usize = 64;

/// The block cache's byte counts (see [`BlockAllocator::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Bytes of large blocks in use.
    pub live: usize,
    /// Bytes of freed large blocks kept for reuse.
    pub cached: usize,
    /// The most bytes of large blocks in use at once so far.
    pub peak: usize,
    /// Large requests served from cached pages alone.
    pub reused: usize,
    /// Large requests that needed fresh pages.
    pub mapped: usize,
}

/// The cache: freed address ranges as (address, length), adjacent ones merged, and the byte
/// counts.
struct Cache {
    ranges: [(usize, usize); SLOTS],
    len: usize,
    stats: BlockStats,
}

/// The global allocator described in the [module documentation](self).
pub struct BlockAllocator {
    cache: Mutex<Cache>,
    /// 0: not decided yet, 1: the block cache is used, 2: everything goes to the system.
    mode: AtomicU8,
}

impl Default for BlockAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockAllocator {
    /// An allocator with an empty cache (a `const fn`, for a `static`).
    pub const fn new() -> Self {
        BlockAllocator {
            cache: Mutex::new(Cache {
                ranges: [(0, 0); SLOTS],
                len: 0,
                stats: BlockStats { live: 0, cached: 0, peak: 0, reused: 0, mapped: 0 },
            }),
            mode: AtomicU8::new(0),
        }
    }

    /// The byte counts so far.
    pub fn stats(&self) -> BlockStats {
        self.lock().stats
    }

    /// Give every cached (freed) range back to the system and count the peak afresh from the
    /// bytes live now: for a long-running program between bursts of work, e.g. a server between
    /// jobs, whose resident size should fall when it is idle. Returns the bytes given back.
    pub fn release(&self) -> usize {
        let mut cache = self.lock();
        let mut released = 0;
        while cache.len > 0 {
            let last = cache.len - 1;
            let (addr, len) = cache.remove(last);
            unmap(addr, len);
            released += len;
        }
        cache.stats.peak = cache.stats.live;
        released
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Nothing panics while the lock is held; a poisoned lock still guards consistent data.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this request is the cache's: large, at most 2 MiB alignment, and the cache in
    /// use (decided once, at the first large request, from `VOXTELL_SYSTEM_MALLOC`).
    fn is_block(&self, layout: Layout) -> bool {
        if layout.size() < LARGE || layout.align() > GRAIN || !cfg!(target_os = "linux") {
            return false;
        }
        match self.mode.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => {
                let system = std::env::var_os("VOXTELL_SYSTEM_MALLOC").is_some();
                // Only the first decision counts, whichever thread makes it.
                let mode = if system { 2 } else { 1 };
                match self.mode.compare_exchange(0, mode, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => mode == 1,
                    Err(decided) => decided == 1,
                }
            }
        }
    }

    /// A block of `size` bytes (`zeroed`: all zero), or null when the system refuses memory.
    fn take(&self, size: usize, zeroed: bool) -> *mut u8 {
        let len = size.next_multiple_of(GRAIN);
        let mut cache = self.lock();
        cache.stats.live += len;
        cache.stats.peak = cache.stats.peak.max(cache.stats.live);
        // Best fit: the smallest cached range that holds the block; the rest stays cached.
        let best = (0..cache.len).filter(|&i| cache.ranges[i].1 >= len).min_by_key(|&i| cache.ranges[i].1);
        if let Some(i) = best {
            let (addr, l) = cache.remove(i);
            if l > len {
                cache.insert(addr + len, l - len);
            }
            cache.stats.reused += 1;
            drop(cache);
            if zeroed {
                // SAFETY: the range is `len ≥ size` bytes, mapped writable and now ours alone.
                unsafe { std::ptr::write_bytes(addr as *mut u8, 0, size) };
            }
            return addr as *mut u8;
        }
        // No cached range holds it: map a new range and move cached pages into it, largest
        // ranges first (`mremap` moves page-table entries: nothing is zeroed or copied); what
        // the cache cannot cover faults in fresh. Cached bytes are consumed, not added to, so
        // live + cached stays within the live peak.
        let p = map(len);
        if p.is_null() {
            cache.stats.live -= len;
            return p;
        }
        let mut filled = 0;
        while filled < len && cache.len > 0 {
            let i = (0..cache.len).max_by_key(|&i| cache.ranges[i].1).unwrap_or(0);
            let (addr, l) = cache.remove(i);
            let n = l.min(len - filled);
            let moved = move_pages(addr, p as usize + filled, n);
            filled += moved;
            if moved < n {
                // Not movable (it should not happen): the rest goes back to the system.
                unmap(addr + moved, l - moved);
            } else if n < l {
                cache.insert(addr + n, l - n);
            }
        }
        if filled == len {
            cache.stats.reused += 1;
        } else {
            cache.stats.mapped += 1;
        }
        drop(cache);
        if zeroed && filled > 0 {
            // The moved pages hold old data; the rest of a fresh mapping is zero already.
            // SAFETY: the first `filled` bytes of the new range are mapped writable and ours.
            unsafe { std::ptr::write_bytes(p, 0, filled.min(size)) };
        }
        p
    }

    /// Return the block at `ptr` of `size` requested bytes to the cache.
    fn give(&self, ptr: *mut u8, size: usize) {
        let len = size.next_multiple_of(GRAIN);
        let mut cache = self.lock();
        cache.stats.live -= len;
        cache.insert(ptr as usize, len);
    }
}

impl Cache {
    /// Remove cached range `i` (the last one takes its place).
    fn remove(&mut self, i: usize) -> (usize, usize) {
        let r = self.ranges[i];
        self.len -= 1;
        self.ranges[i] = self.ranges[self.len];
        self.stats.cached -= r.1;
        r
    }

    /// Cache the range `(addr, len)`, merged with the cached ranges it touches; when every slot
    /// is taken, the smallest range is unmapped.
    fn insert(&mut self, mut addr: usize, mut len: usize) {
        while let Some(i) = (0..self.len).find(|&i| {
            let (a, l) = self.ranges[i];
            a + l == addr || addr + len == a
        }) {
            let (a, l) = self.remove(i);
            addr = addr.min(a);
            len += l;
        }
        if self.len == SLOTS {
            let i = (0..self.len).min_by_key(|&i| self.ranges[i].1).unwrap_or(0);
            let (a, l) = self.remove(i);
            unmap(a, l);
        }
        self.ranges[self.len] = (addr, len);
        self.len += 1;
        self.stats.cached += len;
    }
}

/// Map `len` bytes (a multiple of [`GRAIN`]) aligned on [`GRAIN`] (so that moving pages
/// between such ranges moves whole page-table pages); null on failure. No huge pages: on this
/// project's 2-core VM, `MADV_HUGEPAGE` made fresh blocks slower to fault in (one 192³ prompt
/// 17.2 → 19.3 s), zeroing 2 MiB pages the host had not backed yet.
#[cfg(target_os = "linux")]
fn map(len: usize) -> *mut u8 {
    let Some(span) = len.checked_add(GRAIN) else {
        return std::ptr::null_mut();
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing; it touches
    // no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = (raw as usize).next_multiple_of(GRAIN);
    let (head, tail) = (start - raw as usize, raw as usize + span - (start + len));
    if head > 0 {
        unmap(raw as usize, head);
    }
    if tail > 0 {
        unmap(start + len, tail);
    }
    start as *mut u8
}

/// Move the pages of `len` bytes at `from` (a cached range, a multiple of [`GRAIN`]) to `to`
/// (inside a range just mapped), replacing what was there; the source addresses are unmapped
/// afterwards. Returns how many bytes, from the start, were moved (`len` unless the system
/// refuses). One `mremap` moves a range within one mapping; a cached range can span several
/// (merged neighbours, or pages moved before), so a refusal is retried one grain at a time —
/// every mapping here starts and ends on a grain.
#[cfg(target_os = "linux")]
fn move_pages(from: usize, to: usize, len: usize) -> usize {
    let remap = |from: usize, to: usize, len: usize| {
        // SAFETY: `from..from + len` is cached (mapped, used by nobody) and `to..to + len`
        // lies in a mapping this module just made and has not handed out; they do not overlap.
        let moved = unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        moved as usize == to
    };
    if remap(from, to, len) {
        return len;
    }
    let mut done = 0;
    while done < len && remap(from + done, to + done, GRAIN) {
        done += GRAIN;
    }
    done
}

#[cfg(not(target_os = "linux"))]
fn move_pages(_from: usize, _to: usize, _len: usize) -> usize {
    0
}

#[cfg(not(target_os = "linux"))]
fn map(_len: usize) -> *mut u8 {
    std::ptr::null_mut()
}

/// Unmap `len` bytes at `addr`, a range this module mapped and nobody uses any more.
#[cfg(target_os = "linux")]
fn unmap(addr: usize, len: usize) {
    // SAFETY: the caller passes a range of a mapping made by `map` that no live block covers.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

#[cfg(not(target_os = "linux"))]
fn unmap(_addr: usize, _len: usize) {}

// SAFETY: large blocks are whole mappings of at least the requested size, aligned on 2 MiB
// (≥ any alignment routed to them), owned by one caller between `take` and `give`; everything
// else is forwarded to the system allocator, and a pointer is always returned to the side that
// made it (the routing depends only on the layout and on a mode fixed before the first large
// block exists).
unsafe impl GlobalAlloc for BlockAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.is_block(layout) {
            return self.take(layout.size(), false);
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.is_block(layout) {
            return self.take(layout.size(), true);
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.is_block(layout) {
            return self.give(ptr, layout.size());
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and fits `isize` after rounding (the caller's
        // contract); the alignment is the old one.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_block, new_block) = (self.is_block(layout), self.is_block(new_layout));
        if !old_block && !new_block {
            // SAFETY: the caller's contract, forwarded.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if old_block && new_block && layout.size().next_multiple_of(GRAIN) == new_size.next_multiple_of(GRAIN)
        {
            // Same block length: nothing moves, and `dealloc` will see the same length.
            return ptr;
        }
        // SAFETY: `new_layout` is valid (above); the copy covers the smaller of the two sizes,
        // within both allocations, which do not overlap; the old one is then released once.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).expect("a valid layout")
    }

    /// Blocks are aligned and writable; a freed range is reused for a request it holds (best
    /// fit, split, zeroed when asked), adjacent freed ranges merge, and a request that no
    /// cached range holds gets cached pages moved into a new range, so that live + cached
    /// never exceeds the live peak.
    #[test]
    fn ranges_are_reused_split_merged_and_moved_within_the_live_peak() {
        if std::env::var_os("VOXTELL_SYSTEM_MALLOC").is_some() {
            return;
        }
        let a = BlockAllocator::new();
        // SAFETY: every pointer is used within the size it was allocated with and released
        // once, with its layout.
        unsafe {
            let p = a.alloc(layout(40 * MIB));
            assert!(!p.is_null() && (p as usize).is_multiple_of(GRAIN));
            std::ptr::write_bytes(p, 0xAB, 40 * MIB);
            let q = a.alloc(layout(20 * MIB));
            assert_eq!(
                a.stats(),
                BlockStats { live: 60 * MIB, cached: 0, peak: 60 * MIB, reused: 0, mapped: 2 }
            );
            a.dealloc(p, layout(40 * MIB));
            assert_eq!((a.stats().live, a.stats().cached), (20 * MIB, 40 * MIB));
            // 39 MiB rounds to 40: the same range, zeroed on request.
            let r = a.alloc_zeroed(layout(39 * MIB));
            assert_eq!(r, p);
            assert!(std::slice::from_raw_parts(r, 39 * MIB).iter().all(|&b| b == 0));
            a.dealloc(r, layout(39 * MIB));
            // Two halves of the freed range, then merged again when both are freed.
            let (h1, h2) = (a.alloc(layout(20 * MIB)), a.alloc(layout(20 * MIB)));
            assert_eq!((h1, h2), (p, p.add(20 * MIB)));
            assert_eq!(a.stats().cached, 0);
            a.dealloc(h2, layout(20 * MIB));
            a.dealloc(h1, layout(20 * MIB));
            assert_eq!(a.alloc(layout(40 * MIB)), p);
            assert_eq!((a.stats().reused, a.stats().mapped), (4, 2));
            // Live 20 + 40 + 50 = 110 MiB, the peak. With 40 and 50 freed (dirty), a zeroed
            // 60 MiB request is served from their pages — cut from one range if the two happen
            // to be adjacent, otherwise moved into a new one — leaving 30 cached.
            let x = a.alloc(layout(50 * MIB));
            std::ptr::write_bytes(p, 0xCD, 40 * MIB);
            std::ptr::write_bytes(x, 0xEF, 50 * MIB);
            a.dealloc(p, layout(40 * MIB));
            a.dealloc(x, layout(50 * MIB));
            let y = a.alloc_zeroed(layout(60 * MIB));
            assert!(std::slice::from_raw_parts(y, 60 * MIB).iter().all(|&b| b == 0));
            assert_eq!(
                a.stats(),
                BlockStats { live: 80 * MIB, cached: 30 * MIB, peak: 110 * MIB, reused: 5, mapped: 3 }
            );
            // More than is cached: the 30 cached MiB and 40 fresh ones (zero without a write).
            let z = a.alloc_zeroed(layout(70 * MIB));
            assert!(std::slice::from_raw_parts(z, 70 * MIB).iter().all(|&b| b == 0));
            assert_eq!(
                a.stats(),
                BlockStats { live: 150 * MIB, cached: 0, peak: 150 * MIB, reused: 5, mapped: 4 }
            );
            // Both freed (dirty) and taken again as one: ranges whose pages were themselves moved
            // together, so they span several mappings.
            std::ptr::write_bytes(y, 2, 60 * MIB);
            std::ptr::write_bytes(z, 3, 70 * MIB);
            a.dealloc(z, layout(70 * MIB));
            a.dealloc(y, layout(60 * MIB));
            let all = a.alloc_zeroed(layout(130 * MIB));
            assert!(std::slice::from_raw_parts(all, 130 * MIB).iter().all(|&b| b == 0));
            assert_eq!(
                a.stats(),
                BlockStats { live: 150 * MIB, cached: 0, peak: 150 * MIB, reused: 6, mapped: 4 }
            );
            a.dealloc(all, layout(130 * MIB));
            a.dealloc(q, layout(20 * MIB));
            assert_eq!((a.stats().live, a.stats().cached), (0, 150 * MIB));
        }
    }

    /// Small requests go to the system allocator; growing a buffer across the threshold and
    /// within and past one block keeps its contents.
    #[test]
    fn small_requests_pass_through_and_realloc_keeps_contents() {
        if std::env::var_os("VOXTELL_SYSTEM_MALLOC").is_some() {
            return;
        }
        let a = BlockAllocator::new();
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout(1000));
            assert_eq!(a.stats(), BlockStats::default());
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, layout(1000), 17 * MIB);
            assert_eq!(a.stats().live, 18 * MIB);
            let check = |ptr: *mut u8| (0..1000).all(|i| *ptr.add(i) == i as u8);
            assert!(check(q));
            // Within the same 18 MiB block: the same pointer.
            assert_eq!(a.realloc(q, layout(17 * MIB), 18 * MIB), q);
            let r = a.realloc(q, layout(18 * MIB), 19 * MIB);
            assert!(check(r));
            assert_eq!(a.stats().live, 20 * MIB);
            let s = a.realloc(r, layout(19 * MIB), 500);
            assert!((0..500).all(|i| *s.add(i) == i as u8));
            assert_eq!(a.stats().live, 0);
            a.dealloc(s, layout(500));
        }
    }

    /// Alignments above 2 MiB are not the cache's.
    #[test]
    fn over_aligned_requests_go_to_the_system() {
        let a = BlockAllocator::new();
        let l = Layout::from_size_align(LARGE, 4 * GRAIN).expect("a valid layout");
        // SAFETY: allocated and released once with the same layout.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null() && (p as usize).is_multiple_of(4 * GRAIN));
            assert_eq!(a.stats().live, 0);
            a.dealloc(p, l);
        }
    }
}
