//! Connected components of binary masks.
//!
//! Only what post-processing needs: keep the largest 6-connected component of a mask. The
//! search is iterative (a breadth-first queue, no recursion), touches every voxel a bounded
//! number of times, and needs one bit per voxel plus the queue of the current front, so a
//! 512 × 512 × 1000 mask costs about 33 MB besides itself.

use std::collections::VecDeque;

use ndarray::Array3;

/// One bit per voxel.
struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    fn new(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)] }
    }

    fn get(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    fn set(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn clear(&mut self) {
        self.words.fill(0);
    }
}

/// Keeps only the largest 6-connected component of the non-zero voxels of `mask`; every other
/// non-zero voxel is set to 0 and the kept voxels keep their values.
///
/// Two voxels are connected when they differ by one in exactly one index (faces touch); voxels
/// touching only at an edge or a corner are not. Among components of equal size the one whose
/// first voxel in C (row-major, last axis fastest) order comes first is kept. An empty mask is
/// left unchanged.
pub fn keep_largest_component(mask: &mut Array3<u8>) {
    let dims = mask.dim();
    if let Some(slice) = mask.as_slice_mut() {
        keep_largest_in_slice(slice, dims);
    } else {
        let mut standard = mask.as_standard_layout().into_owned();
        if let Some(slice) = standard.as_slice_mut() {
            keep_largest_in_slice(slice, dims);
        }
        mask.assign(&standard);
    }
}

/// [`keep_largest_component`] on a C-ordered buffer of shape `dims`.
fn keep_largest_in_slice(data: &mut [u8], dims: (usize, usize, usize)) {
    let n = data.len();
    let mut visited = Bitmap::new(n);
    let mut queue = VecDeque::new();
    // (size, seed) of the largest component so far; strictly larger replaces it, so ties keep the
    // component met first in C order.
    let mut best: Option<(usize, usize)> = None;
    let mut total = 0;
    for seed in 0..n {
        if data[seed] == 0 || visited.get(seed) {
            continue;
        }
        let size = flood(data, dims, seed, &mut visited, &mut queue);
        total += size;
        if best.is_none_or(|(best_size, _)| size > best_size) {
            best = Some((size, seed));
        }
    }
    let Some((size, seed)) = best else { return };
    if size == total {
        // A single component: nothing to remove.
        return;
    }
    visited.clear();
    flood(data, dims, seed, &mut visited, &mut queue);
    for (i, v) in data.iter_mut().enumerate() {
        if *v != 0 && !visited.get(i) {
            *v = 0;
        }
    }
}

/// Marks the 6-connected component of non-zero voxels containing `seed` in `visited` and returns
/// its size.
fn flood(
    data: &[u8],
    (d0, d1, d2): (usize, usize, usize),
    seed: usize,
    visited: &mut Bitmap,
    queue: &mut VecDeque<usize>,
) -> usize {
    let plane = d1 * d2;
    let mut size = 0;
    queue.clear();
    visited.set(seed);
    queue.push_back(seed);
    while let Some(i) = queue.pop_front() {
        size += 1;
        let (a, rest) = (i / plane, i % plane);
        let (b, c) = (rest / d2, rest % d2);
        let mut visit = |j: usize| {
            if data[j] != 0 && !visited.get(j) {
                visited.set(j);
                queue.push_back(j);
            }
        };
        if a > 0 {
            visit(i - plane);
        }
        if a + 1 < d0 {
            visit(i + plane);
        }
        if b > 0 {
            visit(i - d2);
        }
        if b + 1 < d1 {
            visit(i + d2);
        }
        if c > 0 {
            visit(i - 1);
        }
        if c + 1 < d2 {
            visit(i + 1);
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ShapeBuilder, s};

    #[test]
    fn keeps_the_larger_of_two_blobs() {
        let mut m = Array3::<u8>::zeros((6, 7, 8));
        m.slice_mut(s![0..2, 0..2, 0..2]).fill(1); // 8 voxels
        m.slice_mut(s![3..6, 3..6, 4..8]).fill(3); // 36 voxels, value kept
        keep_largest_component(&mut m);
        assert_eq!(m.iter().filter(|&&v| v != 0).count(), 36);
        assert!(m.slice(s![3..6, 3..6, 4..8]).iter().all(|&v| v == 3));
        assert!(m.slice(s![0..2, 0..2, 0..2]).iter().all(|&v| v == 0));
    }

    #[test]
    fn diagonal_contact_is_not_connected() {
        let mut m = Array3::<u8>::zeros((4, 4, 4));
        // Edge contact: (1,1,1)-(1,2,2); corner contact: (1,1,1)-(2,2,2) chain of three singles.
        m[[1, 1, 1]] = 1;
        m[[1, 2, 2]] = 1;
        m[[2, 3, 3]] = 1;
        m[[3, 3, 3]] = 1; // face neighbour of (2,3,3): a 2-voxel component
        keep_largest_component(&mut m);
        let kept: Vec<_> = m.indexed_iter().filter(|(_, v)| **v != 0).map(|(i, _)| i).collect();
        assert_eq!(kept, [(2, 3, 3), (3, 3, 3)]);
    }

    #[test]
    fn ties_keep_the_first_in_c_order() {
        let mut m = Array3::<u8>::zeros((3, 3, 3));
        m[[2, 0, 0]] = 1;
        m[[0, 2, 2]] = 1;
        keep_largest_component(&mut m);
        assert_eq!(m[[0, 2, 2]], 1);
        assert_eq!(m[[2, 0, 0]], 0);
    }

    #[test]
    fn empty_and_full_masks() {
        let mut empty = Array3::<u8>::zeros((3, 4, 5));
        keep_largest_component(&mut empty);
        assert!(empty.iter().all(|&v| v == 0));
        let mut full = Array3::<u8>::from_elem((3, 4, 5), 1);
        keep_largest_component(&mut full);
        assert!(full.iter().all(|&v| v == 1));
        let mut none = Array3::<u8>::zeros((0, 4, 5));
        keep_largest_component(&mut none);
        let mut one = Array3::<u8>::from_elem((1, 1, 1), 9);
        keep_largest_component(&mut one);
        assert_eq!(one[[0, 0, 0]], 9);
    }

    #[test]
    fn snake_spanning_the_volume() {
        // A long winding path (one component) versus a compact blob with fewer voxels.
        let mut m = Array3::<u8>::zeros((1, 9, 9));
        for row in (0..9).step_by(2) {
            m.slice_mut(s![0, row, ..]).fill(1);
            let link = if row % 4 == 0 { 8 } else { 0 };
            if row + 1 < 9 {
                m[[0, row + 1, link]] = 1;
            }
        }
        let snake = m.iter().filter(|&&v| v != 0).count();
        keep_largest_component(&mut m);
        assert_eq!(m.iter().filter(|&&v| v != 0).count(), snake);
    }

    #[test]
    fn fortran_layout_gives_the_same_result() {
        let mut c = Array3::<u8>::zeros((5, 6, 7));
        c.slice_mut(s![0..1, 0..3, 0..3]).fill(1);
        c.slice_mut(s![2..5, 2..6, 2..7]).fill(1);
        c[[4, 0, 0]] = 1;
        let mut f = Array3::<u8>::zeros((5, 6, 7).f());
        f.assign(&c);
        keep_largest_component(&mut c);
        keep_largest_component(&mut f);
        assert_eq!(c, f);
        assert_eq!(c.iter().filter(|&&v| v != 0).count(), 60);
    }
}
