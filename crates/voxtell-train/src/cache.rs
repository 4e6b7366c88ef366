//! A preprocessed-data cache, so training never decompresses NIfTI.
//!
//! Each case is read once (as [`crate::data::read_case`]), cropped to the image's non-zero box
//! and z-scored exactly as inference does ([`crate::data::crop_and_normalize`]); the label map is
//! cropped to the same box. The cache folder then holds, per dataset `{root}/{dataset}/`:
//! - `{case}_image.f32` (or `.f16`): the image, raw little-endian, (S, A, R) C order;
//! - `{case}_seg.u8` (or `.u16` when a value exceeds 255): the label map, same layout;
//! - `{case}.json`: the [`CaseIndex`] — shape, spacing, box, per-label voxel counts and a capped
//!   random list of foreground voxel coordinates (for oversampling), the source files with their
//!   size and modification time, and a fingerprint of all of it;
//! - `index.json`: the dataset's labels and case list ([`DatasetIndex`]).
//!
//! A case is rebuilt when its fingerprint (sources' size and mtime, cache options, format
//! version, declared labels) differs, or when its files are missing or of the wrong size. All
//! files are written atomically ([`voxtell_io::atomic`]), the case's JSON last. Cases are
//! preprocessed in parallel (rayon).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Bbox, CaseFiles, Dataset, crop, crop_and_normalize, nonzero_bbox, read_case};
use crate::error::{Result, TrainError};
use crate::rng::Rng;

/// Version of the cache layout; a different version makes every case stale.
pub const CACHE_FORMAT: u32 = 1;

/// How the image is stored in the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageDtype {
    /// 32-bit float (exact).
    #[default]
    F32,
    /// 16-bit float (half the disk and read bandwidth; z-scored values lose ~3 digits).
    F16,
}

impl ImageDtype {
    fn bytes(self) -> usize {
        match self {
            ImageDtype::F32 => 4,
            ImageDtype::F16 => 2,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            ImageDtype::F32 => "f32",
            ImageDtype::F16 => "f16",
        }
    }
}

/// How the label map is stored in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelDtype {
    /// Every value ≤ 255.
    U8,
    /// Some value > 255.
    U16,
}

impl LabelDtype {
    fn bytes(self) -> usize {
        match self {
            LabelDtype::U8 => 1,
            LabelDtype::U16 => 2,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            LabelDtype::U8 => "u8",
            LabelDtype::U16 => "u16",
        }
    }
}

/// Options for building the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheOptions {
    /// How images are stored.
    pub image_dtype: ImageDtype,
    /// Foreground coordinates kept per label and case (at least; see
    /// `min_foreground_coverage`). nnU-Net keeps 10 000.
    pub max_foreground_coords: usize,
    /// Keep at least this fraction of each label's voxels as coordinates (nnU-Net: 1 %).
    pub min_foreground_coverage: f64,
    /// Rebuild every case even when it is fresh.
    pub force_rebuild: bool,
    /// Threads for preprocessing (0: rayon's global pool).
    pub threads: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            image_dtype: ImageDtype::F32,
            max_foreground_coords: 10_000,
            min_foreground_coverage: 0.01,
            force_rebuild: false,
            threads: 0,
        }
    }
}

/// A source file as it was when the cache was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the Unix epoch (0 when unknown).
    pub mtime_ns: u64,
}

impl SourceStamp {
    fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| TrainError::file(path, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Ok(SourceStamp { path: path.to_path_buf(), size: meta.len(), mtime_ns })
    }
}

/// Statistics of one label value in a cached case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelStats {
    /// Number of voxels with this value (in the cropped box).
    pub voxels: u64,
    /// A uniform random subset of their (S, A, R) coordinates in the cropped box, sorted.
    pub coords: Vec<[u16; 3]>,
}

/// The index of one cached case (`{case}.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseIndex {
    /// [`CACHE_FORMAT`] when written.
    pub format: u32,
    /// The dataset's name.
    pub dataset: String,
    /// The case identifier.
    pub id: String,
    /// Fingerprint of sources and options; a mismatch means the case is stale.
    pub fingerprint: String,
    /// The image file, relative to the dataset's cache folder.
    pub image_file: String,
    /// The label file, relative to the dataset's cache folder.
    pub label_file: String,
    /// Storage type of the image.
    pub image_dtype: ImageDtype,
    /// Storage type of the label map.
    pub label_dtype: LabelDtype,
    /// Shape of the cropped (S, A, R) arrays.
    pub shape: [usize; 3],
    /// Shape of the full (S, A, R) image before cropping.
    pub full_shape: [usize; 3],
    /// The crop box inside the full image.
    pub bbox: Bbox,
    /// Voxel spacing along (S, A, R) in mm (informative; training does not resample).
    pub spacing: [f64; 3],
    /// Statistics of every non-zero label value present in the box.
    pub labels: BTreeMap<u16, LabelStats>,
    /// The image file the case was built from.
    pub image_source: SourceStamp,
    /// The label file the case was built from.
    pub label_source: SourceStamp,
}

impl CaseIndex {
    /// Number of voxels of `value` (0 when absent).
    pub fn voxels(&self, value: u16) -> u64 {
        self.labels.get(&value).map_or(0, |s| s.voxels)
    }
}

/// A dataset's cache index (`index.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetIndex {
    /// [`CACHE_FORMAT`] when written.
    pub format: u32,
    /// The dataset's name.
    pub name: String,
    /// Label name → value, from `dataset.json`.
    pub labels: BTreeMap<String, u16>,
    /// The case identifiers, sorted.
    pub cases: Vec<String>,
}

/// One dataset in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedDataset {
    /// The dataset's name.
    pub name: String,
    /// Its cache folder.
    pub dir: PathBuf,
    /// Label name → value.
    pub labels: BTreeMap<String, u16>,
    /// The cases, sorted by identifier.
    pub cases: Vec<CaseIndex>,
}

/// The arrays of a cached case (or of a slab of it), (S, A, R) layout.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseArrays {
    /// Z-scored image.
    pub image: Array3<f32>,
    /// Label map.
    pub labels: Array3<u16>,
    /// Index along axis 0 (S) of the first slice, within the cropped case.
    pub start: usize,
}

/// What [`Cache::build`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// `(dataset, case)` of every case preprocessed now.
    pub built: Vec<(String, String)>,
    /// Number of cases found fresh and reused.
    pub reused: usize,
}

/// The preprocessed-data cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// The cache folder.
    pub root: PathBuf,
    /// The datasets, in the order given to [`Cache::build`] (sorted by name for [`Cache::open`]).
    pub datasets: Vec<CachedDataset>,
}

fn cache_err(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Cache { path: path.to_path_buf(), reason: reason.into() }
}

/// FNV-1a, 64 bit: a small stable hash (not cryptographic) for fingerprints and seeds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fingerprint(
    options: &CacheOptions,
    image: &SourceStamp,
    label: &SourceStamp,
    dataset: &Dataset,
) -> String {
    let values: Vec<u16> = dataset.labels.values().copied().collect();
    let text = format!(
        "{CACHE_FORMAT}|{:?}|{}|{}|{}|{}|{}|{}|{}|{}|{values:?}",
        options.image_dtype,
        options.max_foreground_coords,
        options.min_foreground_coverage,
        image.path.display(),
        image.size,
        image.mtime_ns,
        label.path.display(),
        label.size,
        label.mtime_ns,
    );
    format!("{:016x}", fnv1a(text.as_bytes()))
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.')
}

/// Foreground statistics of a label map: per non-zero value its voxel count and a uniform
/// random subset of its coordinates (reservoir sampling with a stream keyed by `seed` and the
/// value), of size `max(cap, ceil(count · coverage))`, sorted.
pub fn foreground_stats(
    labels: ArrayView3<'_, u16>,
    cap: usize,
    coverage: f64,
    seed: u64,
) -> BTreeMap<u16, LabelStats> {
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    for &v in labels.iter() {
        if v != 0 {
            *counts.entry(v).or_insert(0) += 1;
        }
    }
    struct Reservoir {
        keep: usize,
        seen: u64,
        coords: Vec<[u16; 3]>,
        rng: Rng,
    }
    let mut res: BTreeMap<u16, Reservoir> = counts
        .iter()
        .map(|(&v, &n)| {
            let keep = cap.max((n as f64 * coverage).ceil() as usize).min(n as usize);
            (
                v,
                Reservoir {
                    keep,
                    seen: 0,
                    coords: Vec::with_capacity(keep),
                    rng: Rng::stream(seed, &[u64::from(v)]),
                },
            )
        })
        .collect();
    for ((i, j, k), &v) in labels.indexed_iter() {
        if v == 0 {
            continue;
        }
        let Some(r) = res.get_mut(&v) else { continue };
        let c = [i as u16, j as u16, k as u16];
        if r.coords.len() < r.keep {
            r.coords.push(c);
        } else {
            let slot = r.rng.below(r.seen + 1);
            if slot < r.keep as u64 {
                r.coords[slot as usize] = c;
            }
        }
        r.seen += 1;
    }
    res.into_iter()
        .map(|(v, mut r)| {
            r.coords.sort_unstable();
            (v, LabelStats { voxels: r.seen, coords: r.coords })
        })
        .collect()
}

impl Cache {
    /// Build (or refresh) the cache in `root` for `datasets`: fresh cases are reused, stale or
    /// missing ones preprocessed, in parallel.
    pub fn build(
        root: impl AsRef<Path>,
        datasets: &[Dataset],
        options: &CacheOptions,
    ) -> Result<(Cache, CacheReport)> {
        let root = root.as_ref().to_path_buf();
        for d in datasets {
            if !safe_name(&d.name) {
                return Err(cache_err(&d.root, format!("dataset name {:?} cannot be a folder name", d.name)));
            }
            if datasets.iter().filter(|o| o.name == d.name).count() > 1 {
                return Err(cache_err(&d.root, format!("two datasets are named {:?}", d.name)));
            }
            let dir = root.join(&d.name);
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::file(&dir, e))?;
        }
        let jobs: Vec<(usize, &CaseFiles)> =
            datasets.iter().enumerate().flat_map(|(i, d)| d.cases.iter().map(move |c| (i, c))).collect();
        let run = || -> Result<Vec<(CaseIndex, bool)>> {
            jobs.par_iter().map(|&(i, case)| refresh_case(&root, &datasets[i], case, options)).collect()
        };
        let results = if options.threads > 0 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(options.threads)
                .build()
                .map_err(|e| cache_err(&root, format!("cannot start {} threads: {e}", options.threads)))?;
            pool.install(run)?
        } else {
            run()?
        };
        let mut report = CacheReport::default();
        let mut per_dataset: Vec<Vec<CaseIndex>> = vec![Vec::new(); datasets.len()];
        for ((i, _), (index, built)) in jobs.iter().zip(results) {
            if built {
                report.built.push((index.dataset.clone(), index.id.clone()));
            } else {
                report.reused += 1;
            }
            per_dataset[*i].push(index);
        }
        let mut cached = Vec::with_capacity(datasets.len());
        for (d, cases) in datasets.iter().zip(per_dataset) {
            let dir = root.join(&d.name);
            let index = DatasetIndex {
                format: CACHE_FORMAT,
                name: d.name.clone(),
                labels: d.labels.clone(),
                cases: cases.iter().map(|c| c.id.clone()).collect(),
            };
            let path = dir.join("index.json");
            let text = serde_json::to_vec_pretty(&index).map_err(|e| TrainError::file(&path, e))?;
            let fresh = std::fs::read(&path).is_ok_and(|old| old == text);
            if !fresh {
                voxtell_io::atomic::write_bytes(&path, &text, true)?;
            }
            cached.push(CachedDataset { name: d.name.clone(), dir, labels: d.labels.clone(), cases });
        }
        Ok((Cache { root, datasets: cached }, report))
    }

    /// Open an existing cache without the raw data (no staleness check): every sub-folder with
    /// an `index.json`, sorted by name; `names` restricts to those datasets (all when empty).
    pub fn open(root: impl AsRef<Path>, names: &[&str]) -> Result<Cache> {
        let root = root.as_ref().to_path_buf();
        let mut dirs = Vec::new();
        let rd = std::fs::read_dir(&root).map_err(|e| TrainError::file(&root, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| TrainError::file(&root, e))?;
            let p = entry.path();
            if p.join("index.json").is_file() {
                dirs.push(p);
            }
        }
        dirs.sort();
        let mut datasets = Vec::new();
        for dir in dirs {
            let path = dir.join("index.json");
            let text = std::fs::read(&path).map_err(|e| TrainError::file(&path, e))?;
            let index: DatasetIndex = serde_json::from_slice(&text)
                .map_err(|e| TrainError::file(&path, format!("invalid JSON: {e}")))?;
            if !names.is_empty() && !names.contains(&index.name.as_str()) {
                continue;
            }
            if index.format != CACHE_FORMAT {
                return Err(cache_err(
                    &path,
                    format!("format {} (expected {CACHE_FORMAT}); rebuild", index.format),
                ));
            }
            let mut cases = Vec::with_capacity(index.cases.len());
            for id in &index.cases {
                let case_path = dir.join(format!("{id}.json"));
                let c = read_case_index(&case_path)?
                    .ok_or_else(|| cache_err(&case_path, "missing or unreadable; rebuild the cache"))?;
                check_files(&dir, &c).map_err(|reason| cache_err(&case_path, reason))?;
                cases.push(c);
            }
            datasets.push(CachedDataset { name: index.name, dir, labels: index.labels, cases });
        }
        for n in names {
            if !datasets.iter().any(|d| d.name == *n) {
                return Err(cache_err(&root, format!("no cached dataset named {n:?}")));
            }
        }
        Ok(Cache { root, datasets })
    }

    /// The cache folder of a dataset.
    fn dir_of(&self, case: &CaseIndex) -> PathBuf {
        self.datasets
            .iter()
            .find(|d| d.name == case.dataset)
            .map_or_else(|| self.root.join(&case.dataset), |d| d.dir.clone())
    }

    /// Read a whole cached case (one read per file).
    pub fn read_case(&self, case: &CaseIndex) -> Result<CaseArrays> {
        self.read_slab(case, 0..case.shape[0])
    }

    /// Read the slices `range` (along axis 0, S) of a cached case: one seek and one read per
    /// file. The range is clipped to the case; an empty range gives empty arrays.
    pub fn read_slab(&self, case: &CaseIndex, range: Range<usize>) -> Result<CaseArrays> {
        let dir = self.dir_of(case);
        let start = range.start.min(case.shape[0]);
        let end = range.end.clamp(start, case.shape[0]);
        let plane = case.shape[1] * case.shape[2];
        let n = (end - start) * plane;
        let shape = (end - start, case.shape[1], case.shape[2]);

        let image_path = dir.join(&case.image_file);
        let ib = case.image_dtype.bytes();
        let raw = read_range(&image_path, (start * plane * ib) as u64, n * ib)?;
        let image: Vec<f32> = match case.image_dtype {
            ImageDtype::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            ImageDtype::F16 => {
                raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
        };
        let label_path = dir.join(&case.label_file);
        let lb = case.label_dtype.bytes();
        let raw = read_range(&label_path, (start * plane * lb) as u64, n * lb)?;
        let labels: Vec<u16> = match case.label_dtype {
            LabelDtype::U8 => raw.iter().map(|&b| u16::from(b)).collect(),
            LabelDtype::U16 => raw.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect(),
        };
        let image =
            Array3::from_shape_vec(shape, image).map_err(|e| cache_err(&image_path, e.to_string()))?;
        let labels =
            Array3::from_shape_vec(shape, labels).map_err(|e| cache_err(&label_path, e.to_string()))?;
        Ok(CaseArrays { image, labels, start })
    }

    /// The range of voxel spacings of the cached cases (in-plane: along A and R; between
    /// slices: along S), `None` without cases: what the model trained on them covers.
    pub fn spacing_range(&self) -> Option<voxtell_fusion::SpacingRange> {
        let spacings = self.datasets.iter().flat_map(|d| d.cases.iter().map(|c| c.spacing));
        let mut range: Option<voxtell_fusion::SpacingRange> = None;
        for [s, a, r] in spacings {
            let grow = |v: [f64; 2], x: f64| [v[0].min(x), v[1].max(x)];
            range = Some(match range {
                None => voxtell_fusion::SpacingRange { inplane_mm: [a.min(r), a.max(r)], slice_mm: [s, s] },
                Some(g) => voxtell_fusion::SpacingRange {
                    inplane_mm: grow(grow(g.inplane_mm, a), r),
                    slice_mm: grow(g.slice_mm, s),
                },
            });
        }
        range
    }

    /// Every case, as `(dataset index, case index)` pairs, in order.
    pub fn case_refs(&self) -> Vec<(usize, usize)> {
        self.datasets
            .iter()
            .enumerate()
            .flat_map(|(d, ds)| (0..ds.cases.len()).map(move |c| (d, c)))
            .collect()
    }
}

fn read_range(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let mut f = File::open(path).map_err(|e| TrainError::file(path, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| TrainError::file(path, e))?;
    f.read_exact(&mut buf).map_err(|e| TrainError::file(path, format!("cache file too short: {e}")))?;
    Ok(buf)
}

fn read_case_index(path: &Path) -> Result<Option<CaseIndex>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::file(path, e)),
    }
}

/// Check that a case's data files exist with the expected sizes.
fn check_files(dir: &Path, c: &CaseIndex) -> std::result::Result<(), String> {
    let voxels = (c.shape[0] * c.shape[1] * c.shape[2]) as u64;
    for (file, bytes) in [(&c.image_file, c.image_dtype.bytes()), (&c.label_file, c.label_dtype.bytes())] {
        let p = dir.join(file);
        let size = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?.len();
        if size != voxels * bytes as u64 {
            return Err(format!("{}: {size} bytes, expected {}", p.display(), voxels * bytes as u64));
        }
    }
    Ok(())
}

/// Reuse a fresh cached case or preprocess it; returns its index and whether it was built.
fn refresh_case(
    root: &Path,
    dataset: &Dataset,
    case: &CaseFiles,
    options: &CacheOptions,
) -> Result<(CaseIndex, bool)> {
    if !safe_name(&case.id) {
        return Err(cache_err(&case.image, format!("case id {:?} cannot be a file name", case.id)));
    }
    let dir = root.join(&dataset.name);
    let index_path = dir.join(format!("{}.json", case.id));
    let image_source = SourceStamp::of(&case.image)?;
    let label_source = SourceStamp::of(&case.label)?;
    let fp = fingerprint(options, &image_source, &label_source, dataset);
    if !options.force_rebuild
        && let Some(old) = read_case_index(&index_path)?
        && old.format == CACHE_FORMAT
        && old.fingerprint == fp
        && old.dataset == dataset.name
        && check_files(&dir, &old).is_ok()
    {
        return Ok((old, false));
    }

    let volumes = read_case(case, &dataset.label_values())?;
    let full = volumes.image.data.view();
    let full_shape = [full.shape()[0], full.shape()[1], full.shape()[2]];
    let bbox = nonzero_bbox(full);
    let image = crop_and_normalize(full, &bbox);
    let labels = crop(volumes.labels.view(), &bbox);
    let spacing = volumes.image.geometry.spacing();
    drop(volumes);
    let shape = [image.shape()[0], image.shape()[1], image.shape()[2]];

    let seed = fnv1a(format!("{}/{}", dataset.name, case.id).as_bytes());
    let stats =
        foreground_stats(labels.view(), options.max_foreground_coords, options.min_foreground_coverage, seed);

    let image_file = format!("{}_image.{}", case.id, options.image_dtype.extension());
    let image_bytes: Vec<u8> = match options.image_dtype {
        ImageDtype::F32 => image.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ImageDtype::F16 => image.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    };
    drop(image);
    voxtell_io::atomic::write_bytes(dir.join(&image_file), &image_bytes, true)?;
    drop(image_bytes);

    let label_dtype = if labels.iter().all(|&v| v <= 255) { LabelDtype::U8 } else { LabelDtype::U16 };
    let label_file = format!("{}_seg.{}", case.id, label_dtype.extension());
    let label_bytes: Vec<u8> = match label_dtype {
        LabelDtype::U8 => labels.iter().map(|&v| v as u8).collect(),
        LabelDtype::U16 => labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    voxtell_io::atomic::write_bytes(dir.join(&label_file), &label_bytes, true)?;

    let index = CaseIndex {
        format: CACHE_FORMAT,
        dataset: dataset.name.clone(),
        id: case.id.clone(),
        fingerprint: fp,
        image_file,
        label_file,
        image_dtype: options.image_dtype,
        label_dtype,
        shape,
        full_shape,
        bbox,
        spacing,
        labels: stats,
        image_source,
        label_source,
    };
    let text = serde_json::to_vec(&index).map_err(|e| TrainError::file(&index_path, e))?;
    voxtell_io::atomic::write_bytes(&index_path, &text, true)?;
    Ok((index, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreground_stats_counts_and_caps() {
        let mut l = Array3::<u16>::zeros((10, 10, 10));
        for i in 0..10 {
            for j in 0..10 {
                l[[i, j, 3]] = 1; // 100 voxels
            }
        }
        l[[2, 2, 2]] = 7;
        let s = foreground_stats(l.view(), 10, 0.0, 5);
        assert_eq!(s[&1].voxels, 100);
        assert_eq!(s[&1].coords.len(), 10);
        assert!(s[&1].coords.iter().all(|c| c[2] == 3));
        assert_eq!(s[&7].coords, vec![[2, 2, 2]]);
        assert!(!s.contains_key(&0));
        // Deterministic, and the coverage floor keeps more.
        assert_eq!(s, foreground_stats(l.view(), 10, 0.0, 5));
        assert_eq!(foreground_stats(l.view(), 10, 0.5, 5)[&1].coords.len(), 50);
        // The subset is spread over the structure, not the first voxels in memory order.
        assert!(s[&1].coords.iter().any(|c| c[0] >= 5));
    }
}
