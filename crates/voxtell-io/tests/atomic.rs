//! The atomic writer: two writers that share a process id never mix their files, an existing
//! file is never clobbered or truncated unless asked, a failed write leaves nothing behind, and
//! bad destinations are errors that name them.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use voxtell_io::IoError;
use voxtell_io::atomic::{TEMP_PREFIX, is_temp_name, write_atomic, write_atomic_tagged, write_bytes};

/// The temporary files left in `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| is_temp_name(&e.file_name()))
        .map(|e| e.path())
        .collect()
}

/// 4 MiB of one repeated byte pattern, distinct per `seed`.
fn content(seed: u8) -> Vec<u8> {
    (0..4usize << 20).map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8)).collect()
}

/// Write `bytes` into `tmp` the way the `nifti` crate does (create with truncation), in eight
/// chunks with a yield between them, so that concurrent writers interleave.
fn fill_in_chunks(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    for chunk in bytes.chunks(bytes.len() / 8) {
        f.write_all(chunk)?;
        std::thread::yield_now();
    }
    Ok(())
}

/// Two writers with the same process-id part and the same counter sequence (what two
/// containers that both run as PID 1 had before: `pid` + a per-process counter starting at 0)
/// write one output many times at once; the output is always entirely one of the two, and no
/// temporary file is left.
#[test]
fn two_writers_with_the_same_pid_never_mix_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = Arc::new(dir.path().join("mask.nii.gz"));
    let contents = Arc::new([content(1), content(2)]);
    for round in 0..12 {
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (out, contents, barrier) = (out.clone(), contents.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Both "processes" draw the same sequence: the name collides unless the
                    // writer refuses a taken name.
                    let mut counter = round * 4;
                    let mut next = move || {
                        counter += 1;
                        counter
                    };
                    barrier.wait();
                    write_atomic_tagged(&out, true, Some(".nii.gz"), "1", &mut next, |tmp| {
                        fill_in_chunks(tmp, &contents[w])
                    })
                    .unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let written = std::fs::read(&*out).unwrap();
        assert!(
            written == contents[0] || written == contents[1],
            "round {round}: the output is a mix of the two writers ({} bytes)",
            written.len()
        );
        assert!(leftovers(dir.path()).is_empty(), "round {round}: {:?}", leftovers(dir.path()));
    }
}

/// The same with the real random part: the names differ even with one process tag.
#[test]
fn random_names_differ_under_one_process_tag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stats.json");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        write_atomic(&out, true, |tmp| {
            assert!(tmp.parent() == Some(dir.path()), "temporary file outside the folder: {tmp:?}");
            assert!(seen.insert(tmp.to_path_buf()), "temporary name drawn twice: {tmp:?}");
            std::fs::write(tmp, b"{}")
        })
        .unwrap();
    }
    assert!(leftovers(dir.path()).is_empty());
}

/// Without overwrite, of two writers racing for a new file exactly one wins, and the loser's
/// error is `OutputExists`; the file is the winner's.
#[test]
fn without_overwrite_one_of_two_racing_writers_wins() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..8 {
        let out = Arc::new(dir.path().join(format!("race{round}.bin")));
        let contents = Arc::new([content(3), content(4)]);
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (out, contents, barrier) = (out.clone(), contents.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    write_atomic(&*out, false, |tmp| fill_in_chunks(tmp, &contents[w])).map(|()| w)
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let winners: Vec<usize> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        // Both may fail the early check only if the file existed before: it did not, so one
        // writer at least gets through, and at most one can link its file into place.
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, IoError::OutputExists { path } if path == &*out), "{e}");
            }
        }
        assert_eq!(std::fs::read(&*out).unwrap(), contents[winners[0]]);
        assert!(leftovers(dir.path()).is_empty());
    }
}

#[test]
fn an_existing_output_is_refused_and_left_untouched_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bank.npz");
    std::fs::write(&out, b"precious").unwrap();
    let mut called = false;
    let e = write_atomic(&out, false, |tmp| {
        called = true;
        std::fs::write(tmp, b"new")
    })
    .unwrap_err();
    assert!(matches!(&e, IoError::OutputExists { path } if path == &out), "{e}");
    assert!(e.to_string().contains("bank.npz"), "{e}");
    assert!(!called, "the content is not computed for an output that cannot be written");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    // An output that appears while the content is written is not replaced either.
    let late = dir.path().join("late.json");
    let e = write_atomic(&late, false, |tmp| {
        std::fs::write(&late, b"theirs")?;
        std::fs::write(tmp, b"mine")
    })
    .unwrap_err();
    assert!(matches!(&e, IoError::OutputExists { path } if path == &late), "{e}");
    assert_eq!(std::fs::read(&late).unwrap(), b"theirs");

    // With overwrite the file is replaced.
    write_bytes(&out, b"replaced", true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"replaced");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn a_failing_fill_leaves_neither_output_nor_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let e = write_atomic(&out, false, |tmp| {
        std::fs::write(tmp, b"half a fi")?;
        Err::<(), _>(std::io::Error::other("encoder failed"))
    })
    .unwrap_err();
    assert!(matches!(&e, IoError::Os { path, .. } if path == &out), "{e}");
    assert!(e.to_string().contains("model.safetensors") && e.to_string().contains("encoder failed"), "{e}");
    assert!(!out.exists());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    // The same when an existing file was to be replaced: it keeps its content.
    std::fs::write(&out, b"old").unwrap();
    let e = write_atomic(&out, true, |_| Err::<(), _>(std::io::Error::new(ErrorKind::InvalidData, "no")));
    assert!(e.is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert!(leftovers(dir.path()).is_empty());
}

/// A file that happens to carry the temporary name the writer draws is skipped, not truncated.
#[test]
fn an_existing_file_named_like_a_temporary_is_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mask.nii");
    // Learn the name that the draw 7 gives.
    let mut first = || 7;
    let taken = write_atomic_tagged(&out, true, Some(".nii"), "1", &mut first, |tmp| {
        std::fs::write(tmp, b"first")?;
        Ok(tmp.to_path_buf())
    })
    .unwrap();
    assert!(taken.file_name().unwrap().to_string_lossy().starts_with(TEMP_PREFIX));
    assert!(taken.to_string_lossy().ends_with(".nii"), "{taken:?}");
    std::fs::write(&taken, b"someone else's file").unwrap();
    // The writer draws 7 again, finds it taken, and goes on to 8.
    let mut draws = [7u64, 8].into_iter();
    let mut next = move || draws.next().unwrap_or(9);
    let used = write_atomic_tagged(&out, true, Some(".nii"), "1", &mut next, |tmp| {
        std::fs::write(tmp, b"second")?;
        Ok(tmp.to_path_buf())
    })
    .unwrap();
    assert_ne!(used, taken);
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's file");
    assert_eq!(std::fs::read(&out).unwrap(), b"second");
    assert!(!used.exists());

    // A draw that never finds a free name gives up with an error naming the output.
    let mut stuck = || 7;
    let e = write_atomic_tagged(&out, true, Some(".nii"), "1", &mut stuck, |tmp| std::fs::write(tmp, b"x"))
        .unwrap_err();
    assert!(e.to_string().contains("mask.nii") && e.to_string().contains("temporary name"), "{e}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's file");
}

#[test]
fn the_temporary_name_keeps_the_suffix_with_no_other_dot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("case.liver v2.nii.gz");
    let tmp = voxtell_io::atomic::write_atomic_with_suffix(&out, false, ".nii.gz", |tmp| {
        std::fs::write(tmp, b"x")?;
        Ok(tmp.to_path_buf())
    })
    .unwrap();
    let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with(".nii.gz") && name[1..name.len() - ".nii.gz".len()].find('.').is_none(), "{name}");
    // A process tag with odd characters cannot add dots or folders either.
    let mut r = || 1;
    let tmp = write_atomic_tagged(&out, true, Some(".nii"), "host.a/b", &mut r, |tmp| Ok(tmp.to_path_buf()))
        .unwrap();
    assert_eq!(tmp.parent(), Some(dir.path()));
    let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name[1..name.len() - 4].find('.').is_none(), "{name}");
    // A suffix that is not an ending is refused.
    for bad in ["nii", "./x", ".", ""] {
        let e = voxtell_io::atomic::write_atomic_with_suffix(&out, true, bad, |_| Ok(())).unwrap_err();
        assert!(matches!(e, IoError::BadOutput { .. }) && e.to_string().contains("suffix"), "{bad:?}: {e}");
    }
}

#[test]
fn bad_destinations_are_errors_that_name_them() {
    let dir = tempfile::tempdir().unwrap();
    // No file name.
    for p in [PathBuf::from("/"), dir.path().join("..")] {
        let e = write_bytes(&p, b"x", true).unwrap_err();
        assert!(matches!(&e, IoError::BadOutput { path, .. } if path == &p), "{e}");
        assert!(e.to_string().contains("names no file"), "{e}");
    }
    // A folder that does not exist.
    let nowhere = dir.path().join("missing").join("out.json");
    let e = write_bytes(&nowhere, b"x", false).unwrap_err();
    assert!(matches!(&e, IoError::Os { path, .. } if path == &nowhere), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("out.json") && text.contains("missing") && text.contains("does not exist"),
        "{text}"
    );
    assert!(leftovers(dir.path()).is_empty());
    // A destination that is a folder.
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let e = write_bytes(&folder, b"x", true).unwrap_err();
    assert!(e.to_string().contains("folder"), "{e}");
    assert!(folder.is_dir());
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn parts_with_the_same_pid_keep_their_temporaries_apart() {
    // Two cohort parts on two hosts, both PID 1, writing into one folder; each is killed while
    // its temporary file is still open (the `fill` closure stops the write by failing only after
    // copying the file aside, as a kill would leave it).
    let dir = tempfile::tempdir().unwrap();
    let mut leftovers = Vec::new();
    for part in ["p0of2", "p1of2"] {
        let out = dir.path().join(format!("{part}.nii.gz"));
        let mut draw = || 7u64; // the same random draw too: only the tag tells them apart
        write_atomic_tagged(&out, true, Some(".nii.gz"), &format!("{part}-1"), &mut draw, |tmp| {
            std::fs::write(tmp, b"partial")?;
            let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with(&format!("{TEMP_PREFIX}{part}-1-")), "{name}");
            let kept = tmp.with_file_name(format!("{name}.kept"));
            std::fs::copy(tmp, &kept)?;
            leftovers.push((kept, tmp.to_path_buf()));
            Ok(())
        })
        .unwrap();
    }
    for (kept, tmp) in &leftovers {
        std::fs::rename(kept, tmp).unwrap();
    }
    std::fs::write(dir.path().join("p0of2.nii.gz.other"), b"not ours").unwrap();
    // Part 0 restarts: only its own leftover goes.
    assert_eq!(voxtell_io::atomic::remove_stale(dir.path(), "p0of2").unwrap(), 1);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| is_temp_name(n.as_ref()))
        .collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(&format!("{TEMP_PREFIX}p1of2-1-")), "{names:?}");
    assert!(dir.path().join("p0of2.nii.gz").is_file() && dir.path().join("p0of2.nii.gz.other").is_file());
    assert_eq!(voxtell_io::atomic::remove_stale(dir.path(), "p0of2").unwrap(), 0);
}
