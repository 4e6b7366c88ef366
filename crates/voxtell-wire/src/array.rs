//! [`WireArray`]: a numpy array's dtype, shape and raw C-order bytes.

use crate::{ByteOrder, Dtype, WireError};

/// A numpy array as VXA2 carries it: dtype (with byte order), shape and the raw bytes of
/// `np.ascontiguousarray(arr).tobytes()` (C order, the dtype's own byte order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireArray {
    dtype: Dtype,
    order: ByteOrder,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// prod(shape) × itemsize, or `None` on overflow.
pub(crate) fn byte_len(shape: &[usize], itemsize: usize) -> Option<usize> {
    shape.iter().try_fold(itemsize, |acc, &d| acc.checked_mul(d))
}

impl WireArray {
    /// An array of `dtype` in little-endian order (numpy's `<`, or `|` for one-byte types).
    /// Fails unless `bytes.len() == prod(shape) × itemsize`.
    pub fn new(dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Self, WireError> {
        Self::with_order(dtype, ByteOrder::Little, shape, bytes)
    }

    /// An array whose multi-byte elements are stored in `order` (ignored for one-byte types).
    /// Fails unless `bytes.len() == prod(shape) × itemsize`.
    pub fn with_order(
        dtype: Dtype,
        order: ByteOrder,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<Self, WireError> {
        let expected = byte_len(&shape, dtype.itemsize());
        if expected != Some(bytes.len()) {
            return Err(WireError::ByteLength {
                dtype: dtype.numpy_str(order).to_string(),
                shape,
                expected: expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string()),
                got: bytes.len(),
            });
        }
        let order = if dtype.itemsize() == 1 { ByteOrder::Little } else { order };
        Ok(WireArray { dtype, order, shape, bytes })
    }

    /// A `uint8` array (`|u1`), e.g. masks of shape (N, Z, Y, X).
    pub fn from_u8(shape: Vec<usize>, data: Vec<u8>) -> Result<Self, WireError> {
        Self::new(Dtype::U8, shape, data)
    }

    /// A little-endian `float32` array (`<f4`), e.g. an image of shape (Z, Y, X).
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Result<Self, WireError> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(Dtype::F32, shape, bytes)
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The byte order of multi-byte elements ([`ByteOrder::Little`] for one-byte types).
    pub fn byte_order(&self) -> ByteOrder {
        self.order
    }

    /// The shape, C order (last axis fastest).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements, prod(shape).
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.itemsize()
    }

    /// Whether the array has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw C-order bytes in the dtype's byte order.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Takes the raw bytes out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// numpy's `dtype.str` for this array (`"|u1"`, `"<f4"`, `">u2"`), as [`crate::encode`]
    /// writes it.
    pub fn numpy_str(&self) -> &str {
        self.dtype.numpy_str(self.order)
    }

    /// The elements as `N`-byte words in native order.
    fn words<const N: usize>(&self) -> impl Iterator<Item = [u8; N]> + '_ {
        let big = self.order == ByteOrder::Big;
        self.bytes.chunks_exact(N).map(move |c| {
            let mut w = [0u8; N];
            w.copy_from_slice(c);
            if big != cfg!(target_endian = "big") {
                w.reverse();
            }
            w
        })
    }

    /// The elements widened to i128 (integers and bool only).
    fn integers(&self) -> Option<Box<dyn Iterator<Item = i128> + '_>> {
        Some(match self.dtype {
            Dtype::Bool | Dtype::U8 => Box::new(self.bytes.iter().map(|&b| i128::from(b))),
            Dtype::I8 => Box::new(self.bytes.iter().map(|&b| i128::from(b as i8))),
            Dtype::U16 => Box::new(self.words::<2>().map(|w| i128::from(u16::from_ne_bytes(w)))),
            Dtype::I16 => Box::new(self.words::<2>().map(|w| i128::from(i16::from_ne_bytes(w)))),
            Dtype::U32 => Box::new(self.words::<4>().map(|w| i128::from(u32::from_ne_bytes(w)))),
            Dtype::I32 => Box::new(self.words::<4>().map(|w| i128::from(i32::from_ne_bytes(w)))),
            Dtype::U64 => Box::new(self.words::<8>().map(|w| i128::from(u64::from_ne_bytes(w)))),
            Dtype::I64 => Box::new(self.words::<8>().map(|w| i128::from(i64::from_ne_bytes(w)))),
            Dtype::F16 | Dtype::F32 | Dtype::F64 => return None,
        })
    }

    /// The elements of an integer or bool array (any byte order) as u32 labels, C order.
    ///
    /// Floating-point arrays are refused ([`WireError::NotLabels`]), and so is any negative
    /// value or one above `u32::MAX` ([`WireError::LabelOutOfRange`], naming the first one).
    pub fn to_labels(&self) -> Result<Vec<u32>, WireError> {
        let Some(values) = self.integers() else {
            return Err(WireError::NotLabels { dtype: self.numpy_str().to_string() });
        };
        let mut out = Vec::with_capacity(self.len());
        for (index, value) in values.enumerate() {
            match u32::try_from(value) {
                Ok(v) => out.push(v),
                Err(_) => {
                    return Err(WireError::LabelOutOfRange {
                        dtype: self.numpy_str().to_string(),
                        index,
                        value,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The elements converted to f32, C order, as numpy's `astype(np.float32)` does (integers
    /// and float64 rounded to nearest, float16 widened exactly, bool as 0/1).
    pub fn to_f32(&self) -> Result<Vec<f32>, WireError> {
        Ok(match self.dtype {
            Dtype::F16 => self.words::<2>().map(|w| f16_to_f32(u16::from_ne_bytes(w))).collect(),
            Dtype::F32 => self.words::<4>().map(f32::from_ne_bytes).collect(),
            Dtype::F64 => self.words::<8>().map(|w| f64::from_ne_bytes(w) as f32).collect(),
            Dtype::Bool | Dtype::U8 => self.bytes.iter().map(|&b| f32::from(b)).collect(),
            Dtype::I8 => self.bytes.iter().map(|&b| f32::from(b as i8)).collect(),
            Dtype::U16 => self.words::<2>().map(|w| f32::from(u16::from_ne_bytes(w))).collect(),
            Dtype::I16 => self.words::<2>().map(|w| f32::from(i16::from_ne_bytes(w))).collect(),
            Dtype::U32 => self.words::<4>().map(|w| u32::from_ne_bytes(w) as f32).collect(),
            Dtype::I32 => self.words::<4>().map(|w| i32::from_ne_bytes(w) as f32).collect(),
            Dtype::U64 => self.words::<8>().map(|w| u64::from_ne_bytes(w) as f32).collect(),
            Dtype::I64 => self.words::<8>().map(|w| i64::from_ne_bytes(w) as f32).collect(),
        })
    }
}

/// IEEE half → single, exact (subnormals, infinities and NaN payloads kept).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let shift = m.leading_zeros() - 21; // bring bit 10 to the top of the 10-bit field
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        let cases: [(u16, f32); 9] = [
            (0x0000, 0.0),
            (0x8000, -0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x0200, 3.051_757_8e-5),
            (0x7c00, f32::INFINITY),
        ];
        for (h, f) in cases {
            assert_eq!(f16_to_f32(h).to_bits(), f.to_bits(), "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn labels_and_floats() {
        let a = WireArray::with_order(Dtype::U16, ByteOrder::Big, vec![2], vec![0, 7, 1, 0]).expect("a");
        assert_eq!(a.to_labels().expect("labels"), vec![7, 256]);
        assert_eq!(a.to_f32().expect("f32"), vec![7.0, 256.0]);
        assert_eq!(a.numpy_str(), ">u2");
        let neg = WireArray::new(Dtype::I16, vec![2], vec![1, 0, 0xff, 0xff]).expect("neg");
        let err = neg.to_labels().expect_err("negative").to_string();
        assert!(err.contains("<i2") && err.contains("-1") && err.contains("index 1"), "{err}");
        let big = WireArray::new(Dtype::U64, vec![1], (1u64 << 32).to_le_bytes().to_vec()).expect("big");
        assert!(big.to_labels().is_err());
        let f = WireArray::from_f32(vec![1], &[1.0]).expect("f");
        assert!(f.to_labels().expect_err("float").to_string().contains("<f4"));
        assert!(WireArray::new(Dtype::U16, vec![3], vec![0; 5]).is_err());
        assert!(WireArray::new(Dtype::U16, vec![usize::MAX, 2], vec![]).is_err());
    }
}
