//! A pre-check of the pickle inside a PyTorch checkpoint, run before candle's pickle reader sees
//! it: models come from the internet, and that reader assumes well-formed input (its LONG1
//! decoding shifts past 64 bits on wide integers). The check walks the opcode stream of every
//! `*.pkl` member and refuses integers wider than 64 bits and truncated arguments.

use std::io::Read;
use std::path::Path;

/// Check every pickle in the zip archive at `path`; `Err` carries the reason.
pub(crate) fn check_archive(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| format!("not a zip archive: {e}"))?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with(".pkl"))
        .collect();
    if names.is_empty() {
        return Err("no pickle (*.pkl) in the archive".into());
    }
    for name in names {
        let mut member = zip.by_name(&name).map_err(|e| e.to_string())?;
        if member.size() > 1 << 30 {
            return Err(format!("{name}: pickle of {} bytes is implausibly large", member.size()));
        }
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).map_err(|e| format!("{name}: {e}"))?;
        check_pickle(&bytes).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Walk the opcodes of one pickle. Unknown opcodes end the walk (the reader rejects them).
pub(crate) fn check_pickle(data: &[u8]) -> Result<(), String> {
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize, what: &str| -> Result<usize, String> {
        let start = *i;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= data.len())
            .ok_or(format!("truncated {what} at byte {start}"))?;
        *i = end;
        Ok(start)
    };
    let le = |bytes: &[u8]| bytes.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let line = |i: &mut usize| -> Result<(), String> {
        let rest = &data[*i..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(format!("unterminated text argument at byte {}", *i))?;
        *i += n + 1;
        Ok(())
    };
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op {
            b'.' => return Ok(()),
            // No argument.
            b'}' | b'(' | b')' | b']' | b't' | b'a' | b'e' | b's' | b'u' | b'R' | b'b' | b'N' | b'Q'
            | b'0' | b'1' | b'2' | b'o' | 0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | 0x8f | 0x90 | 0x91
            | 0x92 | 0x93 | 0x94 => {}
            // Fixed-size arguments.
            0x80 | b'q' | b'h' | b'K' | b'U' | b'C' | 0x82 => {
                take(&mut i, 1, "argument")?;
                if matches!(op, b'U' | b'C') {
                    let n = data[i - 1] as usize;
                    take(&mut i, n, "bytes")?;
                }
            }
            b'M' | 0x83 => {
                take(&mut i, 2, "argument")?;
            }
            b'r' | b'j' | b'J' | 0x84 => {
                take(&mut i, 4, "argument")?;
            }
            b'G' | 0x95 => {
                take(&mut i, 8, "argument")?;
            }
            // Length-prefixed data.
            b'X' | b'B' | b'T' => {
                let s = take(&mut i, 4, "length")?;
                let n = le(&data[s..s + 4]) as usize;
                take(&mut i, n, "data")?;
            }
            0x8d | 0x8e | 0x96 => {
                let s = take(&mut i, 8, "length")?;
                let n = usize::try_from(le(&data[s..s + 8])).map_err(|_| "length overflows".to_string())?;
                take(&mut i, n, "data")?;
            }
            0x8c => {
                let s = take(&mut i, 1, "length")?;
                let n = data[s] as usize;
                take(&mut i, n, "data")?;
            }
            // Integers of a given byte width.
            0x8a => {
                let s = take(&mut i, 1, "length")?;
                let n = data[s] as usize;
                if n > 8 {
                    return Err(format!("integer of {n} bytes at byte {s} is wider than 64 bits"));
                }
                take(&mut i, n, "integer")?;
            }
            0x8b => {
                let s = take(&mut i, 4, "length")?;
                let n = le(&data[s..s + 4]);
                if n > 8 {
                    return Err(format!("integer of {n} bytes at byte {s} is wider than 64 bits"));
                }
                take(&mut i, n as usize, "integer")?;
            }
            // Newline-terminated text arguments (two for GLOBAL and INST).
            b'I' | b'L' | b'S' | b'V' | b'F' | b'p' | b'g' | b'P' => line(&mut i)?,
            b'c' | b'i' => {
                line(&mut i)?;
                line(&mut i)?;
            }
            _ => return Ok(()),
        }
    }
    Err("pickle ends without STOP".into())
}

#[cfg(test)]
mod tests {
    use super::check_pickle;

    #[test]
    fn wide_and_truncated_integers_are_refused() {
        // PROTO 2, LONG1 with 9 bytes, STOP.
        let mut wide = vec![0x80, 2, 0x8a, 9];
        wide.extend([1u8; 9]);
        wide.push(b'.');
        assert!(check_pickle(&wide).unwrap_err().contains("wider than 64 bits"));
        assert!(check_pickle(&[0x80, 2, 0x8a, 4, 1]).unwrap_err().contains("truncated"));
        assert!(check_pickle(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f]).unwrap_err().contains("truncated"));
        assert!(check_pickle(&[0x80, 2, b'N']).unwrap_err().contains("without STOP"));
        // A well-formed small pickle: PROTO 2, LONG1 of 2 bytes, STOP.
        assert!(check_pickle(&[0x80, 2, 0x8a, 2, 1, 0, b'.']).is_ok());
    }
}
