//! Reorientation to the array layout nnU-Net's `NibabelIOWithReorient` gives the network, and
//! back.
//!
//! Reading: nibabel's `as_reoriented(io_orientation(affine))` makes voxel axis 0 run toward R,
//! axis 1 toward A and axis 2 toward S; the reader then transposes the array by `(2, 1, 0)`, so the
//! network sees array axes **(S, A, R)**. Writing undoes both steps with
//! `ornt_transform(RAS, io_orientation(original_affine))`, exactly as `write_seg` does.

use ndarray::{Array3, ArrayView3, Axis};

use crate::error::{IoError, Result};
use crate::orientation::{self, Affine, Ornt};
use crate::volume::Volume;

/// What is needed to map an (S, A, R) array back onto the original file's voxel grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RasGeometry {
    /// The affine of the file as read (voxel index → RAS+ mm).
    pub original_affine: Affine,
    /// The affine of the reoriented (R, A, S) image, as nibabel computes it.
    pub reoriented_affine: Affine,
    /// Orientation of the original voxel axes (nibabel's `io_orientation`).
    pub ornt: Ornt,
    /// Shape of the original voxel grid.
    pub original_shape: [usize; 3],
}

/// A volume in the network's layout: array axes (S, A, R), standard (C) memory order.
#[derive(Debug, Clone)]
pub struct RasVolume {
    /// Voxel values indexed `[s, a, r]`.
    pub data: Array3<f32>,
    /// How to go back to the original grid.
    pub geometry: RasGeometry,
}

impl RasGeometry {
    /// Shape of the (S, A, R) array.
    pub fn ras_shape(&self) -> [usize; 3] {
        let mut by_world = [0; 3];
        for (i, a) in self.ornt.0.iter().enumerate() {
            by_world[a.world_axis] = self.original_shape[i];
        }
        [by_world[2], by_world[1], by_world[0]]
    }

    /// Voxel spacing along the (S, A, R) array axes, as nnU-Net reports it (the reoriented
    /// image's zooms, reversed). Inference does not resample, so this is informative only.
    pub fn spacing(&self) -> [f64; 3] {
        let z = orientation::spacing(&self.reoriented_affine);
        [z[2], z[1], z[0]]
    }

    /// Map an (S, A, R) array back to the original voxel order, and return it with the affine
    /// nibabel computes for it (equal to the original affine up to rounding).
    pub fn restore<T: Clone>(&self, sar: ArrayView3<'_, T>) -> Result<(Array3<T>, Affine)> {
        let data = self.restore_view(sar)?.as_standard_layout().into_owned();
        // The reoriented affine is that of the (R, A, S) image; nibabel maps it back.
        let from_canonical = Ornt::RAS.transform_to(&self.ornt);
        if from_canonical.is_identity() {
            return Ok((data, self.reoriented_affine));
        }
        let [s, a, r] = self.ras_shape();
        let affine = orientation::matmul(&self.reoriented_affine, &from_canonical.inverse_affine([r, a, s]));
        Ok((data, affine))
    }

    /// [`RasGeometry::restore`] without the copy: the (S, A, R) array seen in the original
    /// voxel order (axes flipped and permuted by strides), for a caller that reads it once.
    pub fn restore_view<'a, T>(&self, sar: ArrayView3<'a, T>) -> Result<ArrayView3<'a, T>> {
        let ras_shape = self.ras_shape();
        if sar.shape() != ras_shape {
            return Err(IoError::BadOutput {
                path: Default::default(),
                reason: format!(
                    "array of shape {:?} does not fit the (S, A, R) grid {ras_shape:?}",
                    sar.shape()
                ),
            });
        }
        Ok(oriented_view(sar.reversed_axes(), &Ornt::RAS.transform_to(&self.ornt)))
    }
}

impl RasGeometry {
    /// [`RasGeometry::restore_view`] of a part of an (S, A, R) array: `part` starts at voxel
    /// `start` (S, A, R) of the whole. Returns the part in the original voxel order and where it
    /// starts in the original grid.
    pub fn restore_part<'a, T>(
        &self,
        part: ArrayView3<'a, T>,
        start: [usize; 3],
    ) -> Result<(ArrayView3<'a, T>, [usize; 3])> {
        let whole = self.ras_shape();
        if (0..3).any(|d| start[d].checked_add(part.shape()[d]).is_none_or(|end| end > whole[d])) {
            return Err(IoError::BadOutput {
                path: Default::default(),
                reason: format!(
                    "a part of shape {:?} at {start:?} does not fit the (S, A, R) grid {whole:?}",
                    part.shape()
                ),
            });
        }
        let ornt = Ornt::RAS.transform_to(&self.ornt);
        // In (R, A, S) order, as the view is built.
        let (len, n) = ([part.shape()[2], part.shape()[1], part.shape()[0]], [whole[2], whole[1], whole[0]]);
        let mut offset = [0; 3];
        for (i, a) in ornt.0.iter().enumerate() {
            let s = start[2 - i];
            offset[a.world_axis] = if a.flipped { n[i] - (s + len[i]) } else { s };
        }
        Ok((oriented_view(part.reversed_axes(), &ornt), offset))
    }
}

/// nibabel's `apply_orientation` as a view: flip the axes marked flipped, then order the axes by
/// the world axis they map to.
fn oriented_view<'a, T>(mut view: ArrayView3<'a, T>, ornt: &Ornt) -> ArrayView3<'a, T> {
    for (i, a) in ornt.0.iter().enumerate() {
        if a.flipped {
            view.invert_axis(Axis(i));
        }
    }
    let mut perm = [0; 3];
    for (i, a) in ornt.0.iter().enumerate() {
        perm[a.world_axis] = i;
    }
    view.permuted_axes(perm)
}

impl Volume {
    /// Reorient to the network's (S, A, R) layout exactly as nnU-Net's
    /// `NibabelIOWithReorient.read_images`, keeping what [`RasGeometry::restore`] needs.
    pub fn to_ras(&self) -> Result<RasVolume> {
        let ornt = self.orientation().ok_or_else(|| IoError::BadGeometry {
            path: self.source.path.clone(),
            reason: format!("affine is degenerate, no voxel orientation: {:?}", self.affine),
        })?;
        let shape = self.shape();
        // nibabel returns the image itself for the identity; the product is then exact too.
        let reoriented_affine = orientation::matmul(&self.affine, &ornt.inverse_affine(shape));
        // One copy: flips and the permutation are strides of the view.
        let data = oriented_view(self.data.view(), &ornt).reversed_axes().as_standard_layout().into_owned();
        Ok(RasVolume {
            data,
            geometry: RasGeometry {
                original_affine: self.affine,
                reoriented_affine,
                ornt,
                original_shape: shape,
            },
        })
    }
}
