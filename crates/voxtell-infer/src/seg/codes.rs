//! TotalSegmentator's structures and their SNOMED CT codes: `codes.tsv` in this folder (written
//! by `tools/gen_seg_codes.py` from TotalSegmentator's SNOMED mapping; its header says from which
//! wheel, under which licence, with which corrections), embedded in the crate and parsed once.

use std::sync::OnceLock;

use voxtell_io::dicom_seg::Code;

use super::SegCodes;

/// The table as `tools/gen_seg_codes.py` writes it: `#` comment lines, the column names, then one
/// tab-separated row per structure.
const TSV: &str = include_str!("codes.tsv");

/// Where [`TSV`] comes from, for the messages of a malformed table.
const TSV_PATH: &str = "crates/voxtell-infer/src/seg/codes.tsv";

/// The column names line of [`TSV`].
const COLUMNS: &str = "name\tspellings\tcategory\tproperty\tmodifier\tregion\tregion_modifier";

/// One structure: (name, lowercased spellings, codes).
pub(super) type Structure = (&'static str, &'static [&'static str], SegCodes);

/// A row of [`TSV`] as parsed, before its spellings move into one shared list.
type Row = (&'static str, Vec<&'static str>, SegCodes);

/// TotalSegmentator's structures in the table's order, parsed at the first call.
///
/// # Panics
/// When the embedded table is malformed (a unit test parses it, so a build that passed its tests
/// never does).
pub(super) fn structures() -> &'static [Structure] {
    static SPELLINGS: OnceLock<Vec<&'static str>> = OnceLock::new();
    static STRUCTURES: OnceLock<Vec<Structure>> = OnceLock::new();
    STRUCTURES.get_or_init(|| {
        let rows = parse(TSV).unwrap_or_else(|e| panic!("{TSV_PATH}: {e}"));
        let all: &'static [&'static str] = SPELLINGS
            .get_or_init(|| rows.iter().flat_map(|(_, spellings, _)| spellings.iter().copied()).collect());
        let mut rest = all;
        rows.into_iter()
            .map(|(name, spellings, codes)| {
                let (own, tail) = rest.split_at(spellings.len());
                rest = tail;
                (name, own, codes)
            })
            .collect()
    })
}

/// The rows of a table: comment lines skipped, the column names checked; an error names the line.
fn parse(text: &'static str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.starts_with('#'));
    match lines.next() {
        Some((_, line)) if line == COLUMNS => {}
        Some((i, line)) => {
            return Err(format!("line {}: {line:?}, expected the column names {COLUMNS:?}", i + 1));
        }
        None => return Err(format!("no column names {COLUMNS:?}")),
    }
    lines.map(|(i, line)| parse_row(line).map_err(|e| format!("line {}: {e}", i + 1))).collect()
}

/// One row: name, spellings separated by `|`, then the five codes.
fn parse_row(line: &'static str) -> Result<Row, String> {
    let cells: Vec<&'static str> = line.split('\t').collect();
    let [name, spellings, category, property, modifier, region, region_modifier] = cells[..] else {
        return Err(format!("{} cells, expected 7 ({COLUMNS:?})", cells.len()));
    };
    if name.is_empty() {
        return Err("no name".to_string());
    }
    let spellings: Vec<&'static str> = spellings.split('|').collect();
    if spellings.iter().any(|s| s.is_empty()) {
        return Err(format!("{name}: an empty spelling"));
    }
    let required = |cell, column| code(cell, column)?.ok_or_else(|| format!("{name}: no {column} code"));
    let codes = SegCodes {
        category: required(category, "category")?,
        property: required(property, "property")?,
        modifier: code(modifier, "modifier")?,
        region: code(region, "region")?,
        region_modifier: code(region_modifier, "region_modifier")?,
    };
    Ok((name, spellings, codes))
}

/// A code cell: `scheme value meaning` (the meaning may hold spaces), or `-` for none.
fn code(cell: &'static str, column: &str) -> Result<Option<Code>, String> {
    if cell == "-" {
        return Ok(None);
    }
    let mut parts = cell.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(value), Some(meaning))
            if !scheme.is_empty() && !value.is_empty() && !meaning.is_empty() =>
        {
            Ok(Some(Code { value, scheme, meaning }))
        }
        _ => Err(format!("{column} {cell:?}: expected \"scheme value meaning\" or \"-\"")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_table_parses_completely() {
        let rows = TSV.lines().filter(|line| !line.starts_with('#')).count() - 1;
        let table = structures();
        // The header's own count, and every row parsed.
        let header = TSV.lines().filter_map(|line| line.strip_prefix("# ")).collect::<Vec<_>>().join(" ");
        assert!(header.contains("170 structures, 290 spellings."), "{header}");
        assert_eq!((table.len(), rows), (170, 170));
        let mut names = HashSet::new();
        let mut spellings = HashSet::new();
        for &(name, own, codes) in table {
            assert!(names.insert(name), "{name} twice");
            assert!(!own.is_empty(), "{name}");
            for &s in own {
                assert!(spellings.insert(s), "{s:?} twice");
            }
            for c in codes.present() {
                assert!(
                    !c.value.is_empty() && !c.scheme.is_empty() && !c.meaning.is_empty(),
                    "{name}: {c:?}"
                );
            }
        }
        assert_eq!(spellings.len(), 290);
    }

    #[test]
    fn malformed_rows_are_refused_with_their_line() {
        assert!(
            parse_row("liver\tliver\tSCT 123037004 Anatomical Structure\tSCT 10200004 Liver\t-\t-\t-")
                .is_ok()
        );
        for (line, error) in [
            ("liver\tliver", "2 cells"),
            ("\tliver\tA 1 B\tA 2 C\t-\t-\t-", "no name"),
            ("liver\tliver|\tA 1 B\tA 2 C\t-\t-\t-", "empty spelling"),
            ("liver\tliver\t-\tA 2 C\t-\t-\t-", "no category code"),
            ("liver\tliver\tA 1 B\tA 2\t-\t-\t-", "property \"A 2\""),
            ("liver\tliver\tA 1 B\tA 2 C\t\t-\t-", "modifier \"\""),
        ] {
            let e = parse_row(line).unwrap_err();
            assert!(e.contains(error), "{line:?}: {e}");
        }
        let e = parse("# comment\nname\tspellings\n").unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
        let e =
            parse("name\tspellings\tcategory\tproperty\tmodifier\tregion\tregion_modifier\nliver\tliver\n")
                .unwrap_err();
        assert!(e.starts_with("line 2: 2 cells"), "{e}");
    }
}
