//! Preprocessing as the official predictor (voxtell-spec §7.2–7.3): crop to the non-zero box,
//! z-score over the whole box, and centred zero padding up to the patch size. [`prepare`] does
//! all three; a batch runs it on its reading thread, beside the network.

use ndarray::{Array3, ArrayView3, s};

/// A half-open box `[start, end)` per axis.
pub type Bbox = [[usize; 2]; 3];

/// The bounding box of the voxels that are not zero (NaN counts as non-zero, as `!= 0` in
/// numpy); the whole extent when every voxel is zero. Filling holes (as nnU-Net does) cannot
/// change a bounding box, so it is not done.
pub fn nonzero_bbox(data: ArrayView3<'_, f32>) -> Bbox {
    let shape = data.shape();
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut any = false;
    for ((i, j, k), &v) in data.indexed_iter() {
        if v != 0.0 {
            any = true;
            for (a, idx) in [i, j, k].into_iter().enumerate() {
                lo[a] = lo[a].min(idx);
                hi[a] = hi[a].max(idx + 1);
            }
        }
    }
    if !any {
        return [[0, shape[0]], [0, shape[1]], [0, shape[2]]];
    }
    [[lo[0], hi[0]], [lo[1], hi[1]], [lo[2], hi[2]]]
}

/// Crop to `bbox` and z-score the crop over all its voxels (zeros inside the box included):
/// `(x − mean) / max(std, 1e-8)`, population std, statistics accumulated in f64.
pub fn crop_and_normalize(data: ArrayView3<'_, f32>, bbox: &Bbox) -> Array3<f32> {
    let crop = data.slice(s![bbox[0][0]..bbox[0][1], bbox[1][0]..bbox[1][1], bbox[2][0]..bbox[2][1]]);
    let n = crop.len().max(1) as f64;
    let mean = crop.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = crop.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let (mean, std) = (mean as f32, (var.sqrt() as f32).max(1e-8));
    crop.mapv(|v| (v - mean) / std)
}

/// Zero-pad each axis shorter than `patch` up to it, centred (`below = d / 2`, the extra voxel
/// on the high side). Returns the padded volume and the offsets of the original inside it.
pub fn pad_to_patch(data: Array3<f32>, patch: [usize; 3]) -> (Array3<f32>, [usize; 3]) {
    let shape = [data.shape()[0], data.shape()[1], data.shape()[2]];
    if (0..3).all(|a| shape[a] >= patch[a]) {
        return (data, [0; 3]);
    }
    let target: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let below: [usize; 3] = std::array::from_fn(|a| (target[a] - shape[a]) / 2);
    let mut out = Array3::<f32>::zeros(target);
    out.slice_mut(s![
        below[0]..below[0] + shape[0],
        below[1]..below[1] + shape[1],
        below[2]..below[2] + shape[2]
    ])
    .assign(&data);
    (out, below)
}

/// An image ready for the sliding window: its non-zero box cropped, z-scored and padded to at
/// least the patch size.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Shape of the (S, A, R) volume it was made from.
    pub ras_shape: [usize; 3],
    /// The non-zero box in (S, A, R) indices.
    pub bbox: Bbox,
    /// Shape of the crop (the box's extent).
    pub crop_shape: [usize; 3],
    /// The z-scored crop, zero-padded to at least the patch size.
    pub padded: Array3<f32>,
    /// Where the crop starts inside `padded`.
    pub offset: [usize; 3],
    /// The patch it was padded to.
    pub patch: [usize; 3],
}

impl Prepared {
    /// Bytes its arrays hold.
    pub fn bytes(&self) -> u64 {
        self.padded.len() as u64 * 4
    }
}

/// Crop `data` (in (S, A, R) layout) to its non-zero box, z-score the crop and pad it to
/// `patch`: the network's input, as the official predictor makes it.
pub fn prepare(data: ArrayView3<'_, f32>, patch: [usize; 3]) -> Prepared {
    let shape = data.shape();
    let ras_shape = [shape[0], shape[1], shape[2]];
    let bbox = nonzero_bbox(data);
    let cropped = crop_and_normalize(data, &bbox);
    let crop_shape = [cropped.shape()[0], cropped.shape()[1], cropped.shape()[2]];
    let (padded, offset) = pad_to_patch(cropped, patch);
    Prepared { ras_shape, bbox, crop_shape, padded, offset, patch }
}

/// Put a cropped result back into a volume of `full` shape (zeros outside `bbox`).
pub fn uncrop<T: Clone + Default>(cropped: ArrayView3<'_, T>, bbox: &Bbox, full: [usize; 3]) -> Array3<T> {
    let mut out = Array3::<T>::default(full);
    out.slice_mut(s![bbox[0][0]..bbox[0][1], bbox[1][0]..bbox[1][1], bbox[2][0]..bbox[2][1]])
        .assign(&cropped);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    #[test]
    fn bbox_of_nonzero_voxels_with_nan_counting() {
        let mut a = Array3::<f32>::zeros((5, 6, 7));
        assert_eq!(nonzero_bbox(a.view()), [[0, 5], [0, 6], [0, 7]]);
        a[[1, 2, 3]] = 1.0;
        a[[3, 4, 3]] = f32::NAN;
        assert_eq!(nonzero_bbox(a.view()), [[1, 4], [2, 5], [3, 4]]);
    }

    #[test]
    fn zscore_over_the_whole_box_including_zeros() {
        let mut a = Array3::<f32>::zeros((4, 4, 4));
        a[[1, 1, 1]] = 2.0;
        a[[2, 2, 2]] = 4.0;
        a[[2, 1, 2]] = 0.0; // a zero inside the box counts
        let bbox = nonzero_bbox(a.view());
        let z = crop_and_normalize(a.view(), &bbox);
        assert_eq!(z.shape(), &[2, 2, 2]);
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / 8.0;
        let var = z.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / 8.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{mean} {var}");
        // A constant box: std 0 → divided by 1e-8 after subtracting the mean, all zeros.
        let c = Array3::<f32>::from_elem((2, 2, 2), 3.0);
        assert!(crop_and_normalize(c.view(), &[[0, 2], [0, 2], [0, 2]]).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn centred_padding_puts_the_extra_voxel_high() {
        let a = Array3::<f32>::ones((3, 8, 5));
        let (p, below) = pad_to_patch(a, [6, 4, 8]);
        assert_eq!(p.shape(), &[6, 8, 8]);
        assert_eq!(below, [1, 0, 1]);
        assert_eq!(p.index_axis(Axis(0), 0).sum(), 0.0);
        assert_eq!(p.index_axis(Axis(0), 5).sum(), 0.0);
        assert_eq!(p.index_axis(Axis(0), 4).sum(), 0.0);
        assert_eq!(p.sum(), 3.0 * 8.0 * 5.0);
    }

    #[test]
    fn uncrop_restores_the_full_grid() {
        let c = Array3::<u8>::ones((2, 2, 1));
        let full = uncrop(c.view(), &[[1, 3], [0, 2], [4, 5]], [4, 3, 6]);
        assert_eq!(full.iter().map(|&v| v as usize).sum::<usize>(), 4);
        assert_eq!(full[[1, 0, 4]], 1);
        assert_eq!(full[[0, 0, 4]], 0);
    }
}
