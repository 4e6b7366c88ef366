//! numpy dtypes as they travel in a VXA2 header (`arr.dtype.str`).

use crate::WireError;

/// The element type of a [`crate::WireArray`]: the numpy kinds a VoxTell client or server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `bool` (`|b1`), one byte, 0 or 1.
    Bool,
    /// `uint8` (`|u1`): the official masks.
    U8,
    /// `int8` (`|i1`).
    I8,
    /// `uint16` (`<u2`): the napari widget's export label maps.
    U16,
    /// `int16` (`<i2`): CT volumes as stored.
    I16,
    /// `uint32` (`<u4`).
    U32,
    /// `int32` (`<i4`).
    I32,
    /// `uint64` (`<u8`).
    U64,
    /// `int64` (`<i8`).
    I64,
    /// `float16` (`<f2`).
    F16,
    /// `float32` (`<f4`): the official server's images.
    F32,
    /// `float64` (`<f8`).
    F64,
}

/// Byte order of a multi-byte element (numpy's `<` and `>`; one-byte types are always
/// [`ByteOrder::Little`] here and written with `|`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// `<`: least significant byte first (what numpy writes on x86 and ARM).
    Little,
    /// `>`: most significant byte first.
    Big,
}

impl ByteOrder {
    /// The byte order of the machine this runs on (numpy's `=` and `|`).
    pub const NATIVE: ByteOrder =
        if cfg!(target_endian = "big") { ByteOrder::Big } else { ByteOrder::Little };
}

impl Dtype {
    /// Every dtype, in declaration order.
    pub const ALL: [Dtype; 12] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::U16,
        Dtype::I16,
        Dtype::U32,
        Dtype::I32,
        Dtype::U64,
        Dtype::I64,
        Dtype::F16,
        Dtype::F32,
        Dtype::F64,
    ];

    /// Bytes per element (numpy's `itemsize`; also the blosc2 `typesize`).
    pub fn itemsize(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// Whether the type is a floating-point one.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }

    /// numpy's kind letter and itemsize without the order prefix (`"u2"`).
    fn code(self) -> &'static str {
        match self {
            Dtype::Bool => "b1",
            Dtype::U8 => "u1",
            Dtype::I8 => "i1",
            Dtype::U16 => "u2",
            Dtype::I16 => "i2",
            Dtype::U32 => "u4",
            Dtype::I32 => "i4",
            Dtype::U64 => "u8",
            Dtype::I64 => "i8",
            Dtype::F16 => "f2",
            Dtype::F32 => "f4",
            Dtype::F64 => "f8",
        }
    }

    /// The string numpy's `dtype.str` gives for this type in this byte order (`"<f4"`, `">u2"`,
    /// `"|u1"`).
    pub fn numpy_str(self, order: ByteOrder) -> &'static str {
        if self.itemsize() == 1 {
            return match self {
                Dtype::Bool => "|b1",
                Dtype::I8 => "|i1",
                _ => "|u1",
            };
        }
        let little = order == ByteOrder::Little;
        match (self, little) {
            (Dtype::U16, true) => "<u2",
            (Dtype::U16, false) => ">u2",
            (Dtype::I16, true) => "<i2",
            (Dtype::I16, false) => ">i2",
            (Dtype::U32, true) => "<u4",
            (Dtype::U32, false) => ">u4",
            (Dtype::I32, true) => "<i4",
            (Dtype::I32, false) => ">i4",
            (Dtype::U64, true) => "<u8",
            (Dtype::U64, false) => ">u8",
            (Dtype::I64, true) => "<i8",
            (Dtype::I64, false) => ">i8",
            (Dtype::F16, true) => "<f2",
            (Dtype::F16, false) => ">f2",
            (Dtype::F32, true) => "<f4",
            (Dtype::F32, false) => ">f4",
            (_, true) => "<f8",
            (_, false) => ">f8",
        }
    }

    /// Parses a numpy dtype string as the official serializer writes it (`arr.dtype.str`):
    /// an optional order character (`<` little, `>` big, `=` or `|` native, as numpy reads
    /// them) then kind and itemsize (`b1`, `u1`…`u8`, `i1`…`i8`, `f2`, `f4`, `f8`).
    ///
    /// The byte order of a one-byte type is reported as [`ByteOrder::Little`].
    pub fn parse_numpy(s: &str) -> Result<(Dtype, ByteOrder), WireError> {
        let (order, code) = match s.as_bytes().first() {
            Some(b'<') => (ByteOrder::Little, &s[1..]),
            Some(b'>') => (ByteOrder::Big, &s[1..]),
            Some(b'=' | b'|') => (ByteOrder::NATIVE, &s[1..]),
            _ => (ByteOrder::NATIVE, s),
        };
        let dtype = Dtype::ALL
            .into_iter()
            .find(|d| d.code() == code)
            .ok_or_else(|| WireError::UnknownDtype(s.to_string()))?;
        let order = if dtype.itemsize() == 1 { ByteOrder::Little } else { order };
        Ok((dtype, order))
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.numpy_str(ByteOrder::Little))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_strings_round_trip() {
        for d in Dtype::ALL {
            for order in [ByteOrder::Little, ByteOrder::Big] {
                let s = d.numpy_str(order);
                let (back, back_order) = Dtype::parse_numpy(s).expect("parse");
                assert_eq!(back, d);
                assert_eq!(back.numpy_str(back_order), s);
                assert_eq!(s.len(), 3);
            }
        }
        assert_eq!(Dtype::parse_numpy("=u2").expect("=u2"), (Dtype::U16, ByteOrder::NATIVE));
        assert_eq!(Dtype::parse_numpy("f4").expect("f4"), (Dtype::F32, ByteOrder::NATIVE));
        assert_eq!(Dtype::parse_numpy("<u1").expect("<u1"), (Dtype::U8, ByteOrder::Little));
        for bad in ["", "<", "<f3", "<c8", "float32", "<U4", "O", "<u2 ", "\u{e9}u2"] {
            assert!(Dtype::parse_numpy(bad).is_err(), "{bad:?}");
        }
    }
}
