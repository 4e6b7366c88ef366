//! A preview image of a scan with its masks: three orthogonal slices side by side.
//!
//! The arrays are indexed `[s, a, r]`: the index of axis 0 grows toward the patient's Superior,
//! axis 1 toward Anterior, axis 2 toward the patient's Right (the RAS volume of `voxtell-io` in
//! the official reader's axis order). The preview shows an axial, a coronal and a sagittal slice
//! through the centre of mass of the union of all masks, in radiological convention, with the
//! masks as coloured overlays, orientation letters, titles and a legend. Text is drawn with a
//! small built-in 5 × 7 bitmap font (printable ASCII; other characters are drawn as `?`).

use std::path::Path;

use ndarray::{ArrayView2, ArrayView3, Axis};

use crate::error::{InferError, Result};

mod font;

/// The widest preview the layout aims for, in pixels (long titles may add a little).
const MAX_WIDTH: usize = 1200;
/// The tallest panel, in pixels.
const MAX_PANEL_HEIGHT: usize = 1000;
/// Small volumes are upscaled by an integer factor until the tallest panel has this height.
const MIN_PANEL_HEIGHT: usize = 192;
/// Space between panels and around the preview.
const PAD: usize = 8;
/// Space around each panel image for the orientation letters.
const MARGIN: usize = 20;
/// Magnification of the bitmap font.
const TEXT_SCALE: usize = 2;
/// Horizontal advance of one character.
const CHAR_W: usize = (font::GLYPH_W + 1) * TEXT_SCALE;
/// Height of one line of text.
const LINE_H: usize = (font::GLYPH_H + 1) * TEXT_SCALE;
/// Side of a legend colour swatch.
const SWATCH: usize = 14;
/// Appended to the legend label of a mask without any voxel.
const EMPTY_SUFFIX: &str = " (empty)";
/// Narrowest legend column.
const LEGEND_COLUMN: usize = 320;
/// Opacity of the mask overlays inside the outline.
const ALPHA: f32 = 0.4;
/// Most image values the grey window is estimated from.
const WINDOW_SAMPLES: usize = 1 << 20;

/// Background colour.
const BACKGROUND: [u8; 3] = [16, 16, 16];
/// Colour of the orientation letters.
const LETTER_COLOUR: [u8; 3] = [255, 200, 0];
/// Colour of titles and legend text.
const TEXT_COLOUR: [u8; 3] = [235, 235, 235];

/// The overlay colours, used in order and cycled.
const PALETTE: [[u8; 3]; 12] = [
    [230, 30, 60],
    [40, 200, 80],
    [30, 120, 255],
    [250, 140, 30],
    [170, 60, 220],
    [40, 230, 230],
    [240, 60, 200],
    [190, 240, 40],
    [255, 160, 170],
    [0, 150, 140],
    [180, 110, 50],
    [255, 240, 80],
];

/// The overlay colour of the mask at `index` (a fixed palette of 12 distinct colours, cycled).
pub fn mask_colour(index: usize) -> [u8; 3] {
    PALETTE[index % PALETTE.len()]
}

/// Which slice a panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// A slice at fixed `s`: patient's right on the image left, anterior at the top.
    Axial,
    /// A slice at fixed `a`: patient's right on the image left, superior at the top.
    Coronal,
    /// A slice at fixed `r`: anterior on the image left, superior at the top.
    Sagittal,
}

impl View {
    /// The array axis held fixed (0 = s, 1 = a, 2 = r).
    fn fixed_axis(self) -> usize {
        match self {
            View::Axial => 0,
            View::Coronal => 1,
            View::Sagittal => 2,
        }
    }

    /// The array axes shown vertically and horizontally; both run from the highest index at the
    /// top/left to the lowest at the bottom/right.
    fn shown_axes(self) -> (usize, usize) {
        match self {
            View::Axial => (1, 2),
            View::Coronal => (0, 2),
            View::Sagittal => (0, 1),
        }
    }

    /// Orientation letters at the left, right, top and bottom edge.
    fn letters(self) -> [char; 4] {
        match self {
            View::Axial => ['R', 'L', 'A', 'P'],
            View::Coronal => ['R', 'L', 'S', 'I'],
            View::Sagittal => ['A', 'P', 'S', 'I'],
        }
    }

    /// The panel title for the slice at `index`.
    fn title(self, index: usize) -> String {
        match self {
            View::Axial => format!("axial s={index}"),
            View::Coronal => format!("coronal a={index}"),
            View::Sagittal => format!("sagittal r={index}"),
        }
    }
}

/// Where one panel's image lies in the preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    /// The view shown.
    pub view: View,
    /// Index of the slice along the fixed axis.
    pub slice: usize,
    /// Left edge of the panel image, in preview pixels.
    pub x: u32,
    /// Top edge of the panel image, in preview pixels.
    pub y: u32,
    /// Width of the panel image.
    pub width: u32,
    /// Height of the panel image.
    pub height: u32,
}

/// A rendered preview: 8-bit RGB pixels, row by row from the top.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, RGB, rows from the top.
    pub rgb: Vec<u8>,
    /// The placement of the axial, coronal and sagittal panel images, in that order.
    pub panels: [Panel; 3],
}

impl Preview {
    /// The colour of the pixel at column `x`, row `y` (`None` outside the image).
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let p = self.rgb.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }

    /// Encodes the preview as PNG and writes it to `path` atomically (through
    /// [`voxtell_io::atomic`]). An existing file is replaced only when `overwrite` is true,
    /// otherwise it is [`voxtell_io::IoError::OutputExists`]; every error names `path`.
    pub fn write_png(&self, path: &Path, overwrite: bool) -> Result<()> {
        let bytes = self.encode_png().map_err(|e| InferError::Output {
            path: path.to_path_buf(),
            reason: format!("PNG encoding failed: {e}"),
        })?;
        Ok(voxtell_io::atomic::write_bytes(path, &bytes, overwrite)?)
    }

    /// The PNG file content.
    fn encode_png(&self) -> std::result::Result<Vec<u8>, png::EncodingError> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(bytes)
    }
}

/// [`render`] for a prediction: the (S, A, R) image `image` (as the predictor read it) with
/// every mask of `masks`, labelled by its prompt.
pub fn of_masks(image: &voxtell_io::RasVolume, masks: &crate::Masks) -> Result<Preview> {
    let all: Vec<_> = (0..masks.len()).map(|i| masks.mask(i)).collect::<Result<_>>()?;
    let views: Vec<_> = all.iter().map(|m| m.view()).collect();
    render(image.data.view(), &views, masks.prompts(), image.geometry.spacing())
}

/// Renders the preview of `image_sar` with the masks `masks_sar` (non-zero where the value is
/// not 0) labelled `labels` in the legend.
///
/// All arrays are indexed `[s, a, r]` (see the module documentation) and must have the same
/// shape; `spacing_sar` is the voxel size in mm along those axes (a spacing that is not a
/// positive finite number is taken as 1). The three panels cut through the centre of mass of
/// the union of the masks, or the centre of the volume when all masks are empty. Each panel is
/// resampled (nearest voxel) to square pixels of one common size; large volumes are shrunk to
/// keep the preview about 1200 pixels wide, small ones enlarged by an integer factor until the
/// tallest panel is at least 192 pixels high. Grey values are windowed between the 0.5 and 99.5
/// percentiles of the finite image values (estimated from at most about a million evenly spaced
/// voxels). Masks are blended over the image in order, each with a one-pixel outline in its full
/// colour ([`mask_colour`]).
///
/// An empty image, masks of another shape, or a label count different from the mask count are
/// an [`InferError::Invalid`].
pub fn render(
    image_sar: ArrayView3<f32>,
    masks_sar: &[ArrayView3<u8>],
    labels: &[String],
    spacing_sar: [f64; 3],
) -> Result<Preview> {
    let shape = {
        let (s, a, r) = image_sar.dim();
        [s, a, r]
    };
    if shape.contains(&0) {
        return Err(InferError::Invalid(format!("cannot preview an empty image of shape {shape:?}")));
    }
    for (i, mask) in masks_sar.iter().enumerate() {
        if mask.shape() != shape {
            return Err(InferError::Invalid(format!(
                "mask {i} has shape {:?}, the image {shape:?}; cannot preview",
                mask.shape()
            )));
        }
    }
    if labels.len() != masks_sar.len() {
        return Err(InferError::Invalid(format!(
            "{} labels for {} masks; cannot preview",
            labels.len(),
            masks_sar.len()
        )));
    }

    let (centre, mask_voxels) = union_centre(masks_sar, shape);
    let window = grey_window(image_sar);
    let sizes = panel_sizes(shape, spacing_sar);
    let views = [View::Axial, View::Coronal, View::Sagittal];

    // Cells: title line, letter margin, panel image, letter margin.
    let titles: Vec<String> = views.iter().map(|v| v.title(centre[v.fixed_axis()])).collect();
    let cell_w: Vec<usize> =
        (0..3).map(|i| (sizes[i].0 + 2 * MARGIN).max(text_width(&titles[i]) + 2 * PAD)).collect();
    let cells_h = (0..3).map(|i| LINE_H + 2 * MARGIN + sizes[i].1).max().unwrap_or(0);
    let width = PAD * 4 + cell_w.iter().sum::<usize>();

    // Legend columns as wide as the longest entry needs (at least LEGEND_COLUMN), as many as fit.
    let n_masks = masks_sar.len();
    let longest = labels.iter().map(|l| l.chars().count() + EMPTY_SUFFIX.len()).max().unwrap_or(0);
    let entry_w = (SWATCH + 6 + longest * CHAR_W + PAD).max(LEGEND_COLUMN);
    let legend_cols = ((width - 2 * PAD) / entry_w).clamp(1, n_masks.max(1));
    let legend_rows = n_masks.div_ceil(legend_cols);
    let legend_y = PAD + cells_h + PAD;
    let height = legend_y + legend_rows * (LINE_H + 4) + PAD;

    let mut canvas = Canvas::new(width, height);
    let mut panels = Vec::with_capacity(3);
    let mut cell_x = PAD;
    for (i, &view) in views.iter().enumerate() {
        let (w, h) = sizes[i];
        let px = cell_x + (cell_w[i] - w) / 2;
        let py = PAD + LINE_H + MARGIN;
        let slice = centre[view.fixed_axis()];
        draw_panel(&mut canvas, (px, py), (w, h), view, slice, image_sar, masks_sar, window);

        canvas.text(cell_x + (cell_w[i] - text_width(&titles[i])) / 2, PAD, &titles[i], TEXT_COLOUR);
        let [left, right, top, bottom] = view.letters();
        let glyph_w = font::GLYPH_W * TEXT_SCALE;
        let glyph_h = font::GLYPH_H * TEXT_SCALE;
        let mid_y = (py + h / 2).saturating_sub(glyph_h / 2);
        let mid_x = (px + w / 2).saturating_sub(glyph_w / 2);
        canvas.glyph(px - MARGIN + (MARGIN - glyph_w) / 2, mid_y, left, LETTER_COLOUR);
        canvas.glyph(px + w + (MARGIN - glyph_w) / 2, mid_y, right, LETTER_COLOUR);
        canvas.glyph(mid_x, py - MARGIN + (MARGIN - glyph_h) / 2, top, LETTER_COLOUR);
        canvas.glyph(mid_x, py + h + (MARGIN - glyph_h) / 2, bottom, LETTER_COLOUR);

        panels.push(Panel {
            view,
            slice,
            x: to_u32(px)?,
            y: to_u32(py)?,
            width: to_u32(w)?,
            height: to_u32(h)?,
        });
        cell_x += cell_w[i] + PAD;
    }

    // Legend: a grid of swatches and labels, row by row.
    let column_w = (width - 2 * PAD) / legend_cols;
    let max_chars = column_w.saturating_sub(SWATCH + 6 + PAD) / CHAR_W;
    for (m, label) in labels.iter().enumerate() {
        let x = PAD + (m % legend_cols) * column_w;
        let y = legend_y + (m / legend_cols) * (LINE_H + 4);
        canvas.fill_rect(x, y, SWATCH, SWATCH, mask_colour(m));
        let suffix = if mask_voxels[m] == 0 { EMPTY_SUFFIX } else { "" };
        let text = truncate(label, max_chars.saturating_sub(suffix.len())) + suffix;
        canvas.text(x + SWATCH + 6, y, &text, TEXT_COLOUR);
    }

    let panels: [Panel; 3] =
        panels.try_into().map_err(|_| InferError::Invalid("preview layout failed".into()))?;
    Ok(Preview { width: to_u32(width)?, height: to_u32(height)?, rgb: canvas.rgb, panels })
}

/// `v` as `u32`, or an error for an absurd size.
fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| InferError::Invalid(format!("preview size {v} out of range")))
}

/// The rounded centre of mass of the union of the masks (the volume centre when all are empty)
/// and the number of non-zero voxels of each mask.
fn union_centre(masks: &[ArrayView3<u8>], shape: [usize; 3]) -> ([usize; 3], Vec<u64>) {
    let mut counts = vec![0u64; masks.len()];
    if masks.is_empty() {
        return (shape.map(|n| n / 2), counts);
    }
    let mut union = vec![false; shape[1] * shape[2]];
    let mut total: u64 = 0;
    let mut sums = [0f64; 3];
    for s in 0..shape[0] {
        union.fill(false);
        for (m, mask) in masks.iter().enumerate() {
            let plane = mask.index_axis(Axis(0), s);
            for ((a, r), &v) in plane.indexed_iter() {
                if v != 0 {
                    counts[m] += 1;
                    union[a * shape[2] + r] = true;
                }
            }
        }
        for (i, _) in union.iter().enumerate().filter(|(_, u)| **u) {
            total += 1;
            sums[0] += s as f64;
            sums[1] += (i / shape[2]) as f64;
            sums[2] += (i % shape[2]) as f64;
        }
    }
    let centre = if total == 0 {
        shape.map(|n| n / 2)
    } else {
        std::array::from_fn(|a| ((sums[a] / total as f64).round() as usize).min(shape[a] - 1))
    };
    (centre, counts)
}

/// The grey window: the 0.5 and 99.5 percentiles of the finite values (linear interpolation
/// between order statistics), from evenly spaced samples of at most about [`WINDOW_SAMPLES`]
/// voxels. A flat or all-NaN image gets a window one unit wide.
fn grey_window(image: ArrayView3<f32>) -> (f32, f32) {
    let n = image.len();
    let mut step = (n / WINDOW_SAMPLES).max(1);
    if step > 1 {
        // A step sharing no factor with the row and plane lengths visits every column and row.
        let (_, a, r) = image.dim();
        while gcd(step, r) != 1 || gcd(step, a * r) != 1 {
            step += 1;
        }
    }
    let mut values: Vec<f32> = image.iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return (0.0, 1.0);
    }
    values.sort_unstable_by(f32::total_cmp);
    let lo = crate::stats::quantile(&values, 0.005) as f32;
    let hi = crate::stats::quantile(&values, 0.995) as f32;
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

/// Greatest common divisor.
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Pixel sizes `(width, height)` of the axial, coronal and sagittal panels: one common square
/// pixel size in mm, chosen as described in [`render`].
fn panel_sizes(shape: [usize; 3], spacing: [f64; 3]) -> [(usize, usize); 3] {
    let spacing = spacing.map(|s| if s.is_finite() && s > 0.0 { s } else { 1.0 });
    let largest = spacing.iter().copied().fold(0.0, f64::max);
    // Relative spacing in (0, 1]; anisotropy beyond 10^6 is clamped.
    let spacing = spacing.map(|s| (s / largest).max(1e-6));
    let extent: [f64; 3] = std::array::from_fn(|a| shape[a] as f64 * spacing[a]);
    let phys = [(extent[2], extent[1]), (extent[2], extent[0]), (extent[1], extent[0])];
    let budget_w = (MAX_WIDTH - 6 * MARGIN - 4 * PAD) as f64;
    let total_w = 2.0 * extent[2] + extent[1];
    let max_h = extent[0].max(extent[1]);

    let mut pixel = spacing.iter().copied().fold(f64::INFINITY, f64::min);
    if total_w / pixel > budget_w {
        pixel = total_w / budget_w;
    }
    if max_h / pixel > MAX_PANEL_HEIGHT as f64 {
        pixel = max_h / MAX_PANEL_HEIGHT as f64;
    }
    if max_h / pixel < MIN_PANEL_HEIGHT as f64 {
        let wanted = (MIN_PANEL_HEIGHT as f64 * pixel / max_h).ceil();
        let fit_w = (budget_w * pixel / total_w).floor();
        let fit_h = (MAX_PANEL_HEIGHT as f64 * pixel / max_h).floor();
        pixel /= wanted.min(fit_w).min(fit_h).max(1.0);
    }
    let px = |mm: f64| ((mm / pixel).round() as usize).clamp(1, MAX_WIDTH.max(MAX_PANEL_HEIGHT));
    phys.map(|(w, h)| (px(w), px(h)))
}

/// For each of `pixels` output pixels along an axis of `n` voxels, the voxel index, highest
/// index first (nearest voxel centre).
fn index_lut(n: usize, pixels: usize) -> Vec<usize> {
    (0..pixels)
        .map(|p| {
            let i = (((p as f64 + 0.5) * n as f64 / pixels as f64) as usize).min(n - 1);
            n - 1 - i
        })
        .collect()
}

/// Draws one panel image (grey slice, overlays, outlines) with its top-left corner at `origin`.
#[allow(clippy::too_many_arguments)]
fn draw_panel(
    canvas: &mut Canvas,
    origin: (usize, usize),
    (w, h): (usize, usize),
    view: View,
    slice: usize,
    image: ArrayView3<f32>,
    masks: &[ArrayView3<u8>],
    (lo, hi): (f32, f32),
) {
    let fixed = Axis(view.fixed_axis());
    let plane: ArrayView2<f32> = image.index_axis(fixed, slice);
    let (v_axis, h_axis) = view.shown_axes();
    let (n_v, n_h) = (image.shape()[v_axis], image.shape()[h_axis]);
    let rows = index_lut(n_v, h);
    let cols = index_lut(n_h, w);
    let scale = 255.0 / (hi - lo);
    for (y, &vi) in rows.iter().enumerate() {
        for (x, &hj) in cols.iter().enumerate() {
            let v = plane[[vi, hj]];
            let g = if v.is_finite() { ((v - lo) * scale).clamp(0.0, 255.0).round() as u8 } else { 0 };
            canvas.set(origin.0 + x, origin.1 + y, [g, g, g]);
        }
    }
    let mut inside = vec![false; w * h];
    for (m, mask) in masks.iter().enumerate() {
        let plane = mask.index_axis(fixed, slice);
        for (y, &vi) in rows.iter().enumerate() {
            for (x, &hj) in cols.iter().enumerate() {
                inside[y * w + x] = plane[[vi, hj]] != 0;
            }
        }
        let colour = mask_colour(m);
        let is_in = |x: usize, y: usize| inside[y * w + x];
        for y in 0..h {
            for x in 0..w {
                if !is_in(x, y) {
                    continue;
                }
                let edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h;
                let outline =
                    edge || !is_in(x - 1, y) || !is_in(x + 1, y) || !is_in(x, y - 1) || !is_in(x, y + 1);
                let (cx, cy) = (origin.0 + x, origin.1 + y);
                if outline {
                    canvas.set(cx, cy, colour);
                } else {
                    canvas.blend(cx, cy, colour, ALPHA);
                }
            }
        }
    }
}

/// Pixel width of `text` drawn with the bitmap font.
fn text_width(text: &str) -> usize {
    (text.chars().count() * CHAR_W).saturating_sub(TEXT_SCALE)
}

/// `text` cut to at most `max_chars` characters, ending in `...` when cut.
fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    if max_chars < 4 {
        return text.chars().take(max_chars).collect();
    }
    text.chars().take(max_chars - 3).chain("...".chars()).collect()
}

/// An RGB image being drawn (previews, training curves); writes outside it are ignored.
#[derive(Debug, Clone)]
pub struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

/// Width in pixels of one character drawn by [`Canvas::text`] (glyph plus spacing).
pub const TEXT_CHAR_WIDTH: usize = CHAR_W;
/// Height in pixels of one line of text drawn by [`Canvas::text`] (glyph plus spacing).
pub const TEXT_LINE_HEIGHT: usize = LINE_H;

impl Canvas {
    /// A canvas of `width × height` pixels filled with the preview's dark background.
    pub fn new(width: usize, height: usize) -> Self {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            rgb.extend_from_slice(&BACKGROUND);
        }
        Self { width, height, rgb }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Draw a straight line (Bresenham) between two points; parts outside are clipped.
    pub fn line(&mut self, from: (i64, i64), to: (i64, i64), colour: [u8; 3]) {
        let (mut x, mut y) = from;
        let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
        let (sx, sy) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            if x >= 0 && y >= 0 {
                self.set(x as usize, y as usize, colour);
            }
            if (x, y) == to {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Encode as PNG and write atomically (see [`Preview::write_png`]).
    pub fn write_png(self, path: &Path, overwrite: bool) -> Result<()> {
        let panel = Panel { view: View::Axial, slice: 0, x: 0, y: 0, width: 0, height: 0 };
        let preview = Preview {
            width: to_u32(self.width)?,
            height: to_u32(self.height)?,
            rgb: self.rgb,
            panels: [panel.clone(), panel.clone(), panel],
        };
        preview.write_png(path, overwrite)
    }

    /// Set one pixel.
    pub fn set(&mut self, x: usize, y: usize, colour: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.rgb[i..i + 3].copy_from_slice(&colour);
        }
    }

    /// Blend `colour` over one pixel with opacity `alpha`.
    pub fn blend(&mut self, x: usize, y: usize, colour: [u8; 3], alpha: f32) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            for (c, &o) in self.rgb[i..i + 3].iter_mut().zip(&colour) {
                *c = (f32::from(*c) * (1.0 - alpha) + f32::from(o) * alpha).round() as u8;
            }
        }
    }

    /// Fill a rectangle.
    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, colour: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, colour);
            }
        }
    }

    /// Draws one character with its top-left corner at (`x`, `y`).
    fn glyph(&mut self, x: usize, y: usize, c: char, colour: [u8; 3]) {
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..font::GLYPH_W {
                if bits >> (font::GLYPH_W - 1 - col) & 1 == 1 {
                    self.fill_rect(
                        x + col * TEXT_SCALE,
                        y + row * TEXT_SCALE,
                        TEXT_SCALE,
                        TEXT_SCALE,
                        colour,
                    );
                }
            }
        }
    }

    /// Draws a line of text with its top-left corner at (`x`, `y`) (printable ASCII; other
    /// characters as `?`).
    pub fn text(&mut self, x: usize, y: usize, text: &str, colour: [u8; 3]) {
        for (i, c) in text.chars().enumerate() {
            self.glyph(x + i * CHAR_W, y, c, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, s};

    fn is_grey(p: [u8; 3]) -> bool {
        p[0] == p[1] && p[1] == p[2]
    }

    /// Pixels of `panel` (x, y relative to the panel) whose colour is `colour`.
    fn pixels_of(p: &Preview, panel: &Panel, colour: [u8; 3]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for y in 0..panel.height {
            for x in 0..panel.width {
                if p.pixel(panel.x + x, panel.y + y) == Some(colour) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    fn phantom(shape: (usize, usize, usize)) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(s, a, r)| {
            let c = |i: usize, n: usize| (i as f32 + 0.5) / n as f32 - 0.5;
            let d = c(s, shape.0).powi(2) + c(a, shape.1).powi(2) + c(r, shape.2).powi(2);
            if d < 0.2 { 50.0 + 150.0 * (s as f32 / shape.0 as f32) } else { 0.0 }
        })
    }

    #[test]
    fn right_sided_cube_appears_on_the_image_left() {
        let image = phantom((20, 24, 30));
        let mut mask = Array3::<u8>::zeros((20, 24, 30));
        // High r = patient's right; high a = anterior; high s = superior.
        mask.slice_mut(s![12..16, 16..20, 22..28]).fill(1);
        let p = render(image.view(), &[mask.view()], &["cube".into()], [1.0, 1.0, 1.0]).expect("render");
        assert_eq!(p.rgb.len(), (p.width * p.height * 3) as usize);
        let colour = mask_colour(0);
        let [axial, coronal, sagittal] = &p.panels;
        assert_eq!((axial.slice, coronal.slice, sagittal.slice), (14, 18, 25));
        for panel in [axial, coronal, sagittal] {
            let hits = pixels_of(&p, panel, colour);
            assert!(!hits.is_empty(), "{:?} shows no outline", panel.view);
            let (w, h) = (panel.width, panel.height);
            match panel.view {
                // Right on the image left, anterior at the top.
                View::Axial => assert!(hits.iter().all(|&(x, y)| x < w / 2 && y < h / 2)),
                // Right on the image left, superior at the top.
                View::Coronal => assert!(hits.iter().all(|&(x, y)| x < w / 2 && y < h / 2)),
                // Anterior on the image left, superior at the top.
                View::Sagittal => assert!(hits.iter().all(|&(x, y)| x < w / 2 && y < h / 2)),
            }
        }
        // Overlay inside the outline: blended, so neither grey nor the pure colour.
        // Centre of the cube in the axial panel: columns 2..8 of 30, rows 4..8 of 24.
        let inner = (axial.x + axial.width * 11 / 60, axial.y + axial.height * 13 / 48);
        let px = p.pixel(inner.0, inner.1).expect("pixel");
        assert!(!is_grey(px), "{px:?}");
    }

    #[test]
    fn dimensions_and_upscaling() {
        let image = phantom((10, 12, 14));
        let p = render(image.view(), &[], &[], [1.0, 1.0, 1.0]).expect("render");
        let max_h = p.panels.iter().map(|q| q.height).max().expect("panels");
        assert!(max_h >= MIN_PANEL_HEIGHT as u32, "{max_h}");
        assert!(p.width <= MAX_WIDTH as u32 + 40, "{}", p.width);
        // Integer upscaling: the axial panel is 14 × 12 voxels times a whole factor.
        let axial = &p.panels[0];
        assert_eq!(axial.width % 14, 0);
        assert_eq!(axial.width / 14, axial.height / 12);

        let big = Array3::<f32>::zeros((150, 256, 256));
        let p = render(big.view(), &[], &[], [5.0, 1.4, 1.4]).expect("render");
        assert!(p.width <= MAX_WIDTH as u32 + 40, "{}", p.width);
        let [axial, coronal, sagittal] = &p.panels;
        // Square physical pixels: 256 * 1.4 mm across, 150 * 5 mm high.
        let ratio = f64::from(coronal.height) / f64::from(coronal.width);
        assert!((ratio - 750.0 / 358.4).abs() < 0.02, "{ratio}");
        assert_eq!(axial.width, axial.height);
        assert_eq!(sagittal.height, coronal.height);
    }

    #[test]
    fn orientation_letters_are_drawn() {
        let image = phantom((16, 16, 16));
        let p = render(image.view(), &[], &[], [1.0, 1.0, 1.0]).expect("render");
        for panel in &p.panels {
            // The margin left of the panel, at mid height, holds a letter.
            let y0 = panel.y + panel.height / 2 - 10;
            let found = (panel.x - MARGIN as u32..panel.x)
                .any(|x| (y0..y0 + 20).any(|y| p.pixel(x, y) == Some(LETTER_COLOUR)));
            assert!(found, "{:?}", panel.view);
            // And above the panel.
            let x0 = panel.x + panel.width / 2 - 8;
            let found = (x0..x0 + 16)
                .any(|x| (panel.y - MARGIN as u32..panel.y).any(|y| p.pixel(x, y) == Some(LETTER_COLOUR)));
            assert!(found, "{:?}", panel.view);
        }
    }

    #[test]
    fn empty_masks_and_tiny_volumes() {
        let image = phantom((8, 8, 8));
        let empty = Array3::<u8>::zeros((8, 8, 8));
        let p = render(image.view(), &[empty.view()], &["nothing".into()], [1.0, 1.0, 1.0]).expect("render");
        assert_eq!([p.panels[0].slice, p.panels[1].slice, p.panels[2].slice], [4, 4, 4]);
        for panel in &p.panels {
            assert!(pixels_of(&p, panel, mask_colour(0)).is_empty());
        }

        let one = Array3::<f32>::from_elem((1, 1, 1), f32::NAN);
        let m = Array3::<u8>::ones((1, 1, 1));
        let p = render(one.view(), &[m.view()], &["x".into()], [0.0, f64::NAN, -3.0]).expect("render");
        assert!(p.width > 0 && p.height > 0);
        assert_eq!(p.panels[0].width, p.panels[0].height);

        let flat = Array3::<f32>::from_elem((1, 50, 2), 7.0);
        assert!(render(flat.view(), &[], &[], [1e-300, 1e300, 1.0]).is_ok());
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let image = Array3::<f32>::zeros((4, 4, 4));
        let wrong = Array3::<u8>::zeros((4, 4, 5));
        assert!(matches!(
            render(image.view(), &[wrong.view()], &["a".into()], [1.0; 3]),
            Err(InferError::Invalid(_))
        ));
        let ok = Array3::<u8>::zeros((4, 4, 4));
        assert!(matches!(render(image.view(), &[ok.view()], &[], [1.0; 3]), Err(InferError::Invalid(_))));
        let empty = Array3::<f32>::zeros((0, 4, 4));
        assert!(matches!(render(empty.view(), &[], &[], [1.0; 3]), Err(InferError::Invalid(_))));
    }

    #[test]
    fn window_ignores_nan_and_outliers() {
        let mut v = Array3::<f32>::from_shape_fn((10, 10, 10), |(s, a, r)| (s * 100 + a * 10 + r) as f32);
        v[[0, 0, 0]] = f32::NAN;
        v[[9, 9, 9]] = 1e9;
        let (lo, hi) = grey_window(v.view());
        assert!(lo > 0.0 && lo < 10.0, "{lo}");
        assert!(hi > 990.0 && hi < 1e6, "{hi}");
        assert_eq!(truncate("abcdefgh", 6), "abc...");
        assert_eq!(truncate("abc", 6), "abc");
        assert_eq!(truncate("\u{00e9}t\u{00e9}", 2), "\u{00e9}t");
    }

    #[test]
    fn writes_png() {
        let image = phantom((6, 7, 8));
        let p = render(image.view(), &[], &[], [1.0; 3]).expect("render");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("case_preview.png");
        p.write_png(&path, false).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(matches!(
            p.write_png(&path, false),
            Err(InferError::Io(voxtell_io::IoError::OutputExists { path: ref q })) if q == &path
        ));
        p.write_png(&path, true).expect("overwrite");
    }

    /// Renders a synthetic preview to /tmp/preview_test.png for looking at.
    #[test]
    #[ignore]
    fn render_sample_preview() {
        let shape = (60, 80, 90);
        let mut image = phantom(shape);
        // A dark image marker on the patient's right, crossing the axial and coronal slices.
        image.slice_mut(s![30..50, 35..70, 60..80]).fill(0.0);
        let mut right = Array3::<u8>::zeros(shape);
        right.slice_mut(s![25..40, 40..60, 60..80]).fill(1); // patient's right, anterior, superior-ish
        let mut left = Array3::<u8>::zeros(shape);
        left.slice_mut(s![20..35, 20..40, 10..30]).fill(1); // patient's left, posterior
        let mut high = Array3::<u8>::zeros(shape);
        high.slice_mut(s![50..58, 30..50, 35..55]).fill(1); // superior
        let mut labels = vec![
            "right anterior cube".to_string(),
            "left posterior cube".to_string(),
            "a superior block with a very long prompt describing it in detail, Gr\u{00f6}\u{00df}e"
                .to_string(),
        ];
        labels.push("empty \u{00fc}ber".to_string());
        let none = Array3::<u8>::zeros(shape);
        let masks = [right.view(), left.view(), high.view(), none.view()];
        let p = render(image.view(), &masks, &labels, [2.0, 1.0, 1.0]).expect("render");
        p.write_png(Path::new("/tmp/preview_test.png"), true).expect("write");
    }
}
