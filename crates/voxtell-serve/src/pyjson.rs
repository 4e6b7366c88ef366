//! JSON text as Python's `json.dumps` writes it (`", "` and `": "` separators, floats as
//! `repr`), for the `X-Meta` header: clients parse it as JSON, but byte-equal headers make the
//! comparison with the official server exact. Written here because serde_json's compact and
//! pretty formats are neither, and Rust prints `1.0_f64` as `1`.

/// Python's `repr` of a float: the shortest text that reads back to the same value, with `.0`
/// on integral values and an exponent outside `1e-4 <= |x| < 1e16`.
pub(crate) fn float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = x.abs();
    if x != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's `{:e}` is shortest round-trip too: `1e-5`, `1.5e16`; Python writes `1e-05`,
        // `1.5e+16`.
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{x}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// A JSON string literal (serde_json escapes as Python does for ASCII; non-ASCII is escaped as
/// `\uXXXX`, Python's default `ensure_ascii`).
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_prints_them() {
        assert_eq!(float(2.5), "2.5");
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.8f32 as f64), "0.800000011920929");
        assert_eq!(float(1e-5), "1e-05");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(1.5e16), "1.5e+16");
        assert_eq!(float(123456789.0), "123456789.0");
        assert_eq!(float(-0.0), "-0.0");
    }

    #[test]
    fn strings_are_ascii_escaped() {
        assert_eq!(string("ab\"c"), r#""ab\"c""#);
        assert_eq!(string("Läsion"), r#""L\u00e4sion""#);
        assert_eq!(string("🫁"), r#""\ud83e\udec1""#);
    }
}
