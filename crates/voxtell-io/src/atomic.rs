//! Atomic file writes: every file the workspace writes goes through [`write_atomic`].
//!
//! A write never leaves a partial or mixed file at the destination: the content goes to a
//! temporary file in the destination folder, which is flushed to disk and then moved into place
//! in one step. The rules:
//!
//! - The temporary name is `.voxtell-tmp-{tag}-{random}-{name}{suffix}`: `tag` is the process id
//!   (for a reader of a folder listing), after the run's tag when one is set ([`set_run_tag`]:
//!   a cohort part removes its own stale temporaries with [`remove_stale`]), `random` is 64 bits drawn per name from the operating
//!   system's randomness, so two processes — also two containers on two hosts that both run as
//!   PID 1 and share one output folder — do not pick the same name.
//! - The temporary file is created here with `create_new`, which never opens (let alone
//!   truncates) a file that exists already; a taken name is skipped and another drawn. The
//!   filling code then owns a file nobody else can have opened under that name.
//! - The file is flushed (`fsync`) before it is moved, and the folder after, where the platform
//!   allows, so a crash leaves the old file or the complete new one.
//! - Without `overwrite` an existing destination is never replaced: the file is put in place
//!   with a hard link, which fails if the destination appeared meanwhile, and the temporary name
//!   is removed after. Only where the file system has no hard links is a rename used instead.
//!   With `overwrite` a rename replaces the destination atomically.
//! - On any error the temporary file is removed, and the error names the destination.
//!
//! ```no_run
//! # fn main() -> Result<(), voxtell_io::IoError> {
//! voxtell_io::atomic::write_bytes("stats.json", b"{}\n", false)?;
//! voxtell_io::atomic::write_atomic("table.csv", true, |tmp| std::fs::write(tmp, "a,b\n1,2\n"))?;
//! # Ok(())
//! # }
//! ```

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoError, Result};

/// Every temporary name starts with this, so leftovers of a killed process are easy to find.
pub const TEMP_PREFIX: &str = ".voxtell-tmp-";

/// How many taken temporary names are skipped before giving up.
const MAX_NAME_TRIES: usize = 64;

/// The longest piece of the destination's name kept in the temporary name (bytes), so that the
/// temporary name stays within the usual 255-byte limit.
const MAX_NAME_PART: usize = 96;

/// The longest suffix [`write_atomic_with_suffix`] accepts (bytes).
const MAX_SUFFIX: usize = 32;

/// Write `path` atomically: `fill` writes the content to the temporary file it is given (which
/// exists, empty, and may be opened, truncated or replaced by `fill`), then the file is flushed
/// and moved into place. An existing `path` is replaced only with `overwrite`; otherwise it is
/// [`IoError::OutputExists`] and stays untouched. `fill`'s value is returned.
///
/// Errors name `path`: [`IoError::BadOutput`] when it names no file,
/// [`IoError::OutputExists`], and [`IoError::Os`] for what the operating system refused
/// (including `fill`'s own errors) — with the temporary file removed in every case.
pub fn write_atomic<T>(
    path: impl AsRef<Path>,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<T> {
    write_atomic_tagged(path.as_ref(), overwrite, None, &process_tag(), &mut random_u64, fill)
}

/// [`write_atomic`] with a temporary name that ends in `suffix` (e.g. `.nii.gz`), for writers
/// that decide the format from the name. The temporary name has no other dot than its leading
/// one and those of `suffix`. `suffix` must start with a dot, name no folder and be at most 32
/// bytes long.
pub fn write_atomic_with_suffix<T>(
    path: impl AsRef<Path>,
    overwrite: bool,
    suffix: &str,
    fill: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<T> {
    write_atomic_tagged(path.as_ref(), overwrite, Some(suffix), &process_tag(), &mut random_u64, fill)
}

/// Write `bytes` to `path` atomically (see [`write_atomic`]).
pub fn write_bytes(path: impl AsRef<Path>, bytes: &[u8], overwrite: bool) -> Result<()> {
    write_atomic(path, overwrite, |tmp| {
        let mut file = OpenOptions::new().write(true).truncate(true).open(tmp)?;
        file.write_all(bytes)
    })
}

/// [`write_atomic`] with the pieces of the temporary name given: `tag` in place of the process
/// id (characters other than ASCII letters, digits, `-` and `_` become `_`) and `random` in place
/// of the random draw. For tests that play two processes with the same id, or that make a name
/// collide on purpose; not part of the stable interface.
#[doc(hidden)]
pub fn write_atomic_tagged<T>(
    path: &Path,
    overwrite: bool,
    suffix: Option<&str>,
    tag: &str,
    random: &mut dyn FnMut() -> u64,
    fill: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<T> {
    let bad = |reason: String| IoError::BadOutput { path: path.to_path_buf(), reason };
    let name = path.file_name().ok_or_else(|| bad("the path names no file".into()))?;
    if let Some(s) = suffix {
        let valid = s.starts_with('.')
            && s.len() <= MAX_SUFFIX
            && !s.contains(['/', '\\', '\0'])
            && s.chars().any(|c| c != '.');
        if !valid {
            return Err(bad(format!(
                "temporary suffix {s:?} must start with a dot, name no folder and be at most {MAX_SUFFIX} bytes"
            )));
        }
    }
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(IoError::OutputExists { path: path.to_path_buf() });
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let names = TempName {
        tag: clean(tag, 32),
        name: clean(&name.to_string_lossy(), MAX_NAME_PART),
        suffix: suffix.unwrap_or(".tmp"),
    };
    let tmp = create_temp(path, folder, &names, random)?;
    let result = fill(&tmp)
        .and_then(|value| sync_file(&tmp).map(|()| value))
        .map_err(|e| IoError::os(path, e))
        .and_then(|value| {
            abort_hook();
            place(&tmp, path, overwrite).map(|()| value)
        });
    match result {
        Ok(value) => {
            sync_folder(folder);
            Ok(value)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The fixed parts of a temporary name.
struct TempName<'a> {
    /// The process tag, cleaned.
    tag: String,
    /// The destination's file name, cleaned.
    name: String,
    /// The ending.
    suffix: &'a str,
}

/// Create an empty file under a free temporary name in `folder` and return its path (`path` is
/// the destination, for the errors).
fn create_temp(
    path: &Path,
    folder: &Path,
    names: &TempName<'_>,
    random: &mut dyn FnMut() -> u64,
) -> Result<PathBuf> {
    let TempName { tag, name, suffix } = names;
    for _ in 0..MAX_NAME_TRIES {
        let tmp = folder.join(format!("{TEMP_PREFIX}{tag}-{:016x}-{name}{suffix}", random()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(_) => return Ok(tmp),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(IoError::os(
                    path,
                    io::Error::new(e.kind(), format!("the folder {} does not exist", folder.display())),
                ));
            }
            Err(e) => {
                return Err(IoError::os(
                    path,
                    io::Error::new(
                        e.kind(),
                        format!("cannot create a temporary file in {}: {e}", folder.display()),
                    ),
                ));
            }
        }
    }
    Err(IoError::os(
        path,
        io::Error::new(
            ErrorKind::AlreadyExists,
            format!("no free temporary name in {} after {MAX_NAME_TRIES} tries", folder.display()),
        ),
    ))
}

/// Move the finished temporary file to `path`: a rename with `overwrite`, else a hard link
/// (which refuses an existing `path`) and the removal of the temporary name.
fn place(tmp: &Path, path: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        return fs::rename(tmp, path).map_err(|e| IoError::os(path, e));
    }
    match fs::hard_link(tmp, path) {
        Ok(()) => {
            // The output is complete and in place; a temporary name that cannot be removed is
            // only litter, and the caller's clean-up tries once more.
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            Err(IoError::OutputExists { path: path.to_path_buf() })
        }
        // No hard links on this file system (FAT, some network shares): a rename, after a last
        // look for a file that appeared meanwhile.
        Err(_) => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(IoError::OutputExists { path: path.to_path_buf() });
            }
            fs::rename(tmp, path).map_err(|e| IoError::os(path, e))
        }
    }
}

/// Flush the temporary file's content to disk.
fn sync_file(tmp: &Path) -> io::Result<()> {
    OpenOptions::new().write(true).open(tmp)?.sync_all()
}

/// Flush the folder's entry list, so the rename survives a crash (where folders can be opened;
/// a failure here changes nothing about the file, so it is not an error).
fn sync_folder(folder: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = folder;
}

/// `text` with every character other than an ASCII letter, digit, `-` or `_` replaced by `_`,
/// cut to at most `max` characters.
fn clean(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(max)
        .collect()
}

/// The run tag set by [`set_run_tag`].
static RUN_TAG: OnceLock<String> = OnceLock::new();

/// Put `tag` (e.g. a cohort part, `p3of8`; cleaned as the tag of [`write_atomic_tagged`]) before
/// the process id in every temporary name this process makes from now on, so that a restarted
/// run can find its own leftovers ([`remove_stale`]) and never touch another run's. Set once;
/// a second call with another tag is refused (returns `false`).
pub fn set_run_tag(tag: &str) -> bool {
    let tag = clean(tag, 24);
    RUN_TAG.get_or_init(|| tag.clone()) == &tag
}

/// Remove the temporary files of earlier processes of the run `tag` ([`set_run_tag`]) from
/// `folder` — what a process killed between writing and renaming left. Returns how many were
/// removed. Files of other runs, and every other file, are left alone.
pub fn remove_stale(folder: impl AsRef<Path>, tag: &str) -> Result<usize> {
    let folder = folder.as_ref();
    let prefix = format!("{TEMP_PREFIX}{}-", clean(tag, 24));
    let own = format!("{prefix}{}-", std::process::id());
    let entries = match fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(IoError::os(folder, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // This process's own names are being written now.
        if name.starts_with(&prefix)
            && !name.starts_with(&own)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            fs::remove_file(entry.path()).map_err(|e| IoError::os(entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The readable part of a temporary name: the run tag, if any, and the process id.
fn process_tag() -> String {
    match RUN_TAG.get() {
        Some(run) => format!("{run}-{}", std::process::id()),
        None => std::process::id().to_string(),
    }
}

/// A test hook (hidden, not an interface): with `VOXTELL_TEST_ABORT_BEFORE_RENAME=N` set, the
/// process aborts when its N-th complete temporary file is about to be moved into place — a
/// kill at the worst moment, on demand.
fn abort_hook() {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("VOXTELL_TEST_ABORT_BEFORE_RENAME").ok()?.parse().ok());
    if let Some(n) = at
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        std::process::abort();
    }
}

/// 64 random bits: SipHash of a per-call counter and the clock, keyed with the random keys the
/// standard library draws from the operating system for `HashMap`.
fn random_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Whether a file name is one of this module's temporary names (for tidying up after a killed
/// process).
pub fn is_temp_name(name: &OsStr) -> bool {
    name.to_string_lossy().starts_with(TEMP_PREFIX)
}
