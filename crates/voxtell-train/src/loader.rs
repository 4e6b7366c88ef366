//! A background batch loader.
//!
//! Worker threads build batches ahead of the training loop into a bounded window. Batch `g`
//! (counted from the start position) is iteration `g mod iterations_per_epoch` of its epoch,
//! and its sample `i` is drawn from `Rng::stream(seed, [epoch, iteration, i])`, so a batch's
//! content depends only on `(seed, epoch, iteration)` — never on which thread built it, how
//! many workers there are, or timing. Batches are delivered in order. Errors (and panics) in
//! workers are delivered in place of the batch they concern, after which the loader ends.
//! Dropping the loader stops the workers and joins them (a worker finishes the batch it is
//! building first).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rng::Rng;
use crate::sampler::{SampleInfo, Sampler};

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// The run's seed.
    pub seed: u64,
    /// Iterations (batches) per epoch.
    pub iterations_per_epoch: u64,
    /// Epoch of the first batch.
    pub start_epoch: u64,
    /// Iteration (within `start_epoch`) of the first batch, e.g. to resume.
    pub start_iteration: u64,
    /// Stop before this epoch (`None`: never stop).
    pub end_epoch: Option<u64>,
    /// Worker threads (0: available cores − 1, at least 1).
    pub workers: usize,
    /// Batches built ahead at most (0: 2 × workers).
    pub capacity: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 2,
            seed: 0,
            iterations_per_epoch: 250,
            start_epoch: 0,
            start_iteration: 0,
            end_epoch: None,
            workers: 0,
            capacity: 0,
        }
    }
}

impl LoaderConfig {
    /// The number of workers actually used.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        }
    }

    /// The window size actually used.
    pub fn effective_capacity(&self) -> usize {
        if self.capacity > 0 { self.capacity } else { 2 * self.effective_workers() }
    }

    /// `(epoch, iteration)` of batch number `g` from the start.
    pub fn position(&self, g: u64) -> (u64, u64) {
        let ipe = self.iterations_per_epoch.max(1);
        let abs = self.start_iteration + g;
        (self.start_epoch + abs / ipe, abs % ipe)
    }

    /// Number of batches until `end_epoch` (`None` when unbounded).
    pub fn total_batches(&self) -> Option<u64> {
        let ipe = self.iterations_per_epoch.max(1);
        self.end_epoch
            .map(|e| (e.saturating_sub(self.start_epoch) * ipe).saturating_sub(self.start_iteration))
    }
}

/// A batch in the layout the model takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Images, `(B, 1, P0, P1, P2)` row-major.
    pub image: Vec<f32>,
    /// Prompts, `B × N`.
    pub prompts: Vec<Vec<String>>,
    /// Binary targets, `(B, N, P0, P1, P2)` row-major.
    pub targets: Vec<u8>,
    /// Patch size `(P0, P1, P2)`.
    pub patch: [usize; 3],
    /// Prompts per sample `N`.
    pub n_prompts: usize,
    /// Samples `B`.
    pub batch_size: usize,
    /// The epoch.
    pub epoch: u64,
    /// The iteration within the epoch.
    pub iteration: u64,
    /// How each sample was drawn.
    pub samples: Vec<SampleInfo>,
}

/// Build the batch for `(seed, epoch, iteration)` synchronously; sample `i` is drawn from
/// `Rng::stream(seed, [epoch, iteration, i])`.
pub fn make_batch(
    sampler: &Sampler,
    seed: u64,
    epoch: u64,
    iteration: u64,
    batch_size: usize,
) -> Result<Batch> {
    let patch = sampler.config().patch_size;
    let n = sampler.config().prompts_per_sample;
    let voxels: usize = patch.iter().product();
    let mut batch = Batch {
        image: Vec::with_capacity(batch_size * voxels),
        prompts: Vec::with_capacity(batch_size),
        targets: Vec::with_capacity(batch_size * n * voxels),
        patch,
        n_prompts: n,
        batch_size,
        epoch,
        iteration,
        samples: Vec::with_capacity(batch_size),
    };
    for i in 0..batch_size {
        let mut rng = Rng::stream(seed, &[epoch, iteration, i as u64]);
        let s = sampler.sample(&mut rng)?;
        batch.image.extend(s.image.iter());
        for t in &s.targets {
            batch.targets.extend(t.iter());
        }
        batch.prompts.push(s.prompts);
        batch.samples.push(s.info);
    }
    Ok(batch)
}

struct State {
    /// Next batch number a worker may claim.
    claim: u64,
    /// Next batch number the consumer takes.
    consumed: u64,
    /// Finished batches not yet taken.
    done: BTreeMap<u64, Result<Batch>>,
    /// Workers still running.
    alive: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Workers wait here for room in the window.
    room: Condvar,
    /// The consumer waits here for a batch.
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decrements `alive` when a worker exits, however it exits.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.alive = st.alive.saturating_sub(1);
        drop(st);
        self.0.ready.notify_all();
    }
}

/// Background loader; iterate it for batches in order.
pub struct Loader {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    config: LoaderConfig,
    next: u64,
    total: Option<u64>,
    finished: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("config", &self.config)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn worker(
    shared: Arc<Shared>,
    sampler: Arc<Sampler>,
    config: LoaderConfig,
    capacity: u64,
    total: Option<u64>,
) {
    let _guard = AliveGuard(shared.clone());
    loop {
        let g = {
            let mut st = shared.lock();
            loop {
                if st.stop || total.is_some_and(|t| st.claim >= t) {
                    return;
                }
                if st.claim < st.consumed + capacity {
                    break;
                }
                st = shared.room.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.claim += 1;
            st.claim - 1
        };
        let (epoch, iteration) = config.position(g);
        let result = catch_unwind(AssertUnwindSafe(|| {
            make_batch(&sampler, config.seed, epoch, iteration, config.batch_size)
        }))
        .unwrap_or_else(|p| {
            Err(TrainError::Loader(format!(
                "worker panicked building epoch {epoch} iteration {iteration}: {}",
                panic_message(p.as_ref())
            )))
        });
        let mut st = shared.lock();
        st.done.insert(g, result);
        drop(st);
        shared.ready.notify_all();
    }
}

impl Loader {
    /// Start the workers.
    pub fn new(sampler: Arc<Sampler>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(TrainError::Config("batch_size must be at least 1".into()));
        }
        let workers = config.effective_workers();
        let capacity = config.effective_capacity() as u64;
        let total = config.total_batches();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                claim: 0,
                consumed: 0,
                done: BTreeMap::new(),
                alive: workers,
                stop: false,
            }),
            room: Condvar::new(),
            ready: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (sh, sa, cf) = (shared.clone(), sampler.clone(), config.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("voxtell-loader-{i}"))
                .spawn(move || worker(sh, sa, cf, capacity, total));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    let mut st = shared.lock();
                    st.alive -= workers - i;
                    drop(st);
                    let mut partial = Loader { shared, handles, config, next: 0, total, finished: true };
                    partial.shutdown();
                    return Err(TrainError::Loader(format!("cannot start worker thread: {e}")));
                }
            }
        }
        Ok(Loader { shared, handles, config, next: 0, total, finished: false })
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// `(epoch, iteration)` of the next batch.
    pub fn position(&self) -> (u64, u64) {
        self.config.position(self.next)
    }

    /// The next batch: `None` after the last one (or after an error was delivered).
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.finished || self.total.is_some_and(|t| self.next >= t) {
            return None;
        }
        let g = self.next;
        let result = {
            let mut st = self.shared.lock();
            loop {
                if let Some(r) = st.done.remove(&g) {
                    st.consumed = g + 1;
                    break r;
                }
                if st.alive == 0 {
                    break Err(TrainError::Loader("all workers stopped".into()));
                }
                st = self.shared.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        self.shared.room.notify_all();
        self.next += 1;
        if result.is_err() {
            self.shutdown();
        }
        Some(result)
    }

    /// Stop the workers and wait for them.
    fn shutdown(&mut self) {
        self.finished = true;
        self.shared.lock().stop = true;
        self.shared.room.notify_all();
        self.shared.ready.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_roll_over_epochs() {
        let c = LoaderConfig {
            iterations_per_epoch: 4,
            start_epoch: 2,
            start_iteration: 3,
            ..Default::default()
        };
        assert_eq!(c.position(0), (2, 3));
        assert_eq!(c.position(1), (3, 0));
        assert_eq!(c.position(5), (4, 0));
        assert_eq!(c.total_batches(), None);
        let c = LoaderConfig { end_epoch: Some(4), ..c };
        assert_eq!(c.total_batches(), Some(5));
        assert!(LoaderConfig::default().effective_workers() >= 1);
        assert_eq!(LoaderConfig { workers: 3, ..Default::default() }.effective_capacity(), 6);
    }
}
