//! Memory allocation for programs that run VoxTell: a global allocator for tensor-sized buffers
//! and glibc's malloc settings.
//!
//! The libraries allocate through Rust's global allocator and never choose one; a binary does.
//! The `voxtell` command installs [`BlockAllocator`] and calls [`tune_allocator`] first thing in
//! `main`; a server calls [`BlockAllocator::release`] and [`trim_heap`] when it goes idle. The
//! bench programs do the same, so that they measure what the command runs.
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: voxtell_alloc::BlockAllocator = voxtell_alloc::BlockAllocator::new();
//!
//! fn main() {
//!     voxtell_alloc::tune_allocator();
//!     // … the program …
//! }
//! ```
//!
//! This is the only crate of the workspace with `unsafe` code for memory management: the
//! `GlobalAlloc` implementation and the `mmap`/`mremap`/`munmap`, `mallopt` and `malloc_trim`
//! calls it makes, each block with the invariant it relies on.

mod block;
mod glibc;

pub use block::{BlockAllocator, BlockStats, LARGE};
pub use glibc::{trim_heap, tune_allocator};
