//! The anatomy of one phantom: its random parameters ([`Anatomy::sample`]) and how it is painted
//! onto a voxel grid ([`Anatomy::paint`]).
//!
//! Everything is in the *body frame*: RAS+ millimetres (+x toward the patient's Right, +y
//! Anterior, +z Superior) with the torso's long axis on `x = y = 0` and `z = 0` at the top of
//! the right hemidiaphragm. The case's affine adds a random table offset to this frame.

use std::f64::consts::{PI, TAU};

use crate::geometry::{
    Blob, LabelGrid, V3, Wobble, add, dot, norm, normalize, rotation, scale, smoothstep, sub,
};
use crate::options::{
    AORTA, KIDNEY_LEFT, KIDNEY_RIGHT, LIVER, LIVER_LESION, LUNG_LEFT, LUNG_RIGHT, PhantomOptions, SPLEEN,
    URINARY_BLADDER, VERTEBRAE,
};
use crate::rng::Rng;

/// Patient sides: the sign of the RAS x coordinate.
const RIGHT: f64 = 1.0;
const LEFT: f64 = -1.0;

/// HU of air.
pub(crate) const AIR_HU: f32 = -1000.0;

/// Tissue intensities of one case (HU).
#[derive(Debug, Clone)]
struct Intensities {
    fat: f32,
    muscle: f32,
    bowel: f32,
    lung: f32,
    heart: f32,
    liver: f32,
    liver_lesion: f32,
    spleen: f32,
    kidney_cortex: f32,
    kidney_medulla: f32,
    kidney_cyst: f32,
    renal_sinus: f32,
    aorta: f32,
    ivc: f32,
    bone_cortex: f32,
    bone_cancellous: f32,
    disc: f32,
    csf: f32,
    bladder: f32,
    bladder_wall: f32,
    stomach: f32,
    rib: f32,
    pelvis: f32,
}

impl Intensities {
    fn sample(rng: &mut Rng, jitter: f64, lesion_contrast: [f64; 2]) -> Self {
        let mut j = |hu: f64, spread: f64| (hu + rng.range(-spread, spread)) as f32;
        let liver = j(65.0, jitter);
        let [lo, hi] = lesion_contrast;
        let lesion_drop = j((lo + hi) / 2.0, (hi - lo) / 2.0);
        Intensities {
            fat: j(-100.0, jitter.min(10.0)),
            muscle: j(45.0, jitter.min(10.0)),
            bowel: j(30.0, jitter),
            lung: j(-850.0, jitter * 2.0),
            heart: j(100.0, jitter),
            liver,
            liver_lesion: liver - lesion_drop,
            spleen: j(100.0, jitter),
            kidney_cortex: j(170.0, jitter),
            kidney_medulla: j(110.0, jitter),
            kidney_cyst: j(8.0, 8.0),
            renal_sinus: j(-50.0, 15.0),
            aorta: j(200.0, 50.0),
            ivc: j(120.0, jitter),
            bone_cortex: j(620.0, 80.0),
            bone_cancellous: j(330.0, 60.0),
            disc: j(80.0, 10.0),
            csf: j(10.0, 5.0),
            bladder: j(8.0, 8.0),
            bladder_wall: j(40.0, 8.0),
            stomach: j(20.0, 10.0),
            rib: j(500.0, 80.0),
            pelvis: j(450.0, 60.0),
        }
    }
}

/// The torso outline: a super-ellipse cross-section with a subcutaneous fat layer and a
/// muscle wall, slightly varying along z.
#[derive(Debug, Clone)]
struct Body {
    ax: f64,
    ay: f64,
    exponent: f64,
    fat: f64,
    muscle: f64,
    wave_amp: f64,
    wave_phase: f64,
}

fn superellipse(x: f64, y: f64, a: f64, b: f64, n: f64) -> f64 {
    ((x / a).abs().powf(n) + (y / b).abs().powf(n)).powf(1.0 / n)
}

impl Body {
    fn factor(&self, z: f64) -> f64 {
        1.0 + self.wave_amp * (z / 90.0 + self.wave_phase).sin()
    }

    /// Semi-axes of the outline at height `z`.
    fn semi(&self, z: f64) -> (f64, f64) {
        let f = self.factor(z);
        (self.ax * f, self.ay * f)
    }

    /// Level of the skin outline (below 1 inside the body).
    fn outer(&self, p: V3) -> f64 {
        let (a, b) = self.semi(p[2]);
        superellipse(p[0], p[1], a, b, self.exponent)
    }

    /// Level of the fat/muscle boundary.
    fn muscle_level(&self, p: V3) -> f64 {
        let (a, b) = self.semi(p[2]);
        superellipse(p[0], p[1], a - self.fat, b - self.fat, self.exponent)
    }

    /// Level of the body cavity's wall (below 1 inside the cavity).
    fn cavity(&self, p: V3) -> f64 {
        let (a, b) = self.semi(p[2]);
        let t = self.fat + self.muscle;
        superellipse(p[0], p[1], a - t, b - t, self.exponent)
    }

    /// Largest half-width and half-depth over all heights.
    fn max_semi(&self) -> (f64, f64) {
        (self.ax * (1.0 + self.wave_amp), self.ay * (1.0 + self.wave_amp))
    }
}

/// The diaphragm: two paraboloid domes; lungs lie above, abdominal organs below.
#[derive(Debug, Clone)]
struct Dome {
    /// (x, peak z) of the right and the left dome.
    right: (f64, f64),
    left: (f64, f64),
    y0: f64,
    wx: f64,
    wy: f64,
    drop_x: f64,
    drop_y: f64,
}

impl Dome {
    fn z(&self, x: f64, y: f64) -> f64 {
        let dy = ((y - self.y0) / self.wy).powi(2) * self.drop_y;
        let r = self.right.1 - ((x - self.right.0) / self.wx).powi(2) * self.drop_x - dy;
        let l = self.left.1 - ((x - self.left.0) / self.wx).powi(2) * self.drop_x - dy;
        r.max(l)
    }
}

/// The spine: a stack of rounded-cylinder vertebral bodies with discs, posterior arches with
/// spinous and transverse processes, and a sacrum plate below.
#[derive(Debug, Clone)]
struct Spine {
    y0: f64,
    rx: f64,
    ry: f64,
    lordosis: f64,
    lordosis_phase: f64,
    period: f64,
    disc: f64,
    /// Bottom of the lowest vertebral body (top of the sacrum's disc).
    z_lowest: f64,
    canal_r: f64,
    arch: f64,
    spinous: f64,
    transverse: f64,
}

impl Spine {
    fn centre_y(&self, z: f64) -> f64 {
        self.y0 + self.lordosis * (TAU * z / 420.0 + self.lordosis_phase).sin()
    }

    fn canal_y(&self, z: f64) -> f64 {
        self.centre_y(z) - self.ry - self.canal_r - 1.5
    }
}

/// The aorta (labelled above its bifurcation) and the common iliac arteries (unlabelled).
#[derive(Debug, Clone)]
struct Aorta {
    radius: f64,
    x_thorax: f64,
    dy_thorax: f64,
    x_abdomen: f64,
    dy_abdomen: f64,
    z_bifurcation: f64,
    iliac_spread: f64,
}

impl Aorta {
    /// Centre (x, y) and radius at height `z` (above the bifurcation).
    fn centre(&self, spine: &Spine, z: f64) -> (f64, f64, f64) {
        let t = smoothstep((-30.0 - z) / 60.0);
        let x = self.x_thorax + (self.x_abdomen - self.x_thorax) * t;
        let y = spine.centre_y(z) + self.dy_thorax + (self.dy_abdomen - self.dy_thorax) * t;
        (x, y, self.radius * (1.0 - 0.15 * t))
    }
}

/// A plane-wave sum giving a smooth random field of unit variance.
#[derive(Debug, Clone)]
struct Field {
    waves: [(V3, f64); 4],
}

impl Field {
    fn sample(rng: &mut Rng, wavelength: (f64, f64)) -> Self {
        let mut waves = [([0.0; 3], 0.0); 4];
        for w in &mut waves {
            let dir = normalize([rng.normal(), rng.normal(), rng.normal()]);
            let k = TAU / rng.range(wavelength.0, wavelength.1);
            *w = (scale(dir, k), rng.range(0.0, TAU));
        }
        Field { waves }
    }

    fn value(&self, p: V3) -> f64 {
        self.waves.iter().map(|&(k, ph)| (dot(k, p) + ph).sin()).sum::<f64>() / std::f64::consts::SQRT_2
    }
}

/// One kidney: a bean (ellipsoid with a medial hilum notch) with cortex and medulla.
#[derive(Debug, Clone)]
struct Kidney {
    side: f64,
    blob: Blob,
    notch_centre: V3,
    notch_radius: f64,
    /// Thickness of the perirenal fat, mm.
    fat: f64,
}

impl Kidney {
    fn label(&self) -> u8 {
        if self.side > 0.0 { KIDNEY_RIGHT } else { KIDNEY_LEFT }
    }

    /// The kidney grown by its perirenal fat.
    fn perirenal(&self) -> Blob {
        let mut fat = self.blob;
        fat.semi = fat.semi.map(|v| v + self.fat);
        fat
    }

    /// Whether `p` lies behind the kidney: within `depth` mm posterior of its perirenal fat, in
    /// the retroperitoneum, where neither the liver nor the spleen reaches (they lie anterior
    /// and lateral of the kidneys; a kidney pressed into them leaves an impression, not a ring
    /// of organ around it).
    fn shadows(&self, p: V3, depth: f64) -> bool {
        let fat = self.perirenal();
        let (lo, hi) = fat.bounds();
        if p[0] < lo[0]
            || p[0] > hi[0]
            || p[2] < lo[2]
            || p[2] > hi[2]
            || p[1] > hi[1]
            || p[1] < lo[1] - depth
        {
            return false;
        }
        // Step forward 2 mm at a time: finer than kidney plus fat are thick, so none is skipped.
        let steps = (depth / 2.0).ceil() as usize;
        (0..=steps).any(|i| fat.contains([p[0], p[1] + i as f64 * 2.0, p[2]]))
    }

    /// Level inside the bean (`None` outside the kidney, including the hilum notch).
    fn level(&self, p: V3) -> Option<f64> {
        let l = self.blob.level(p);
        (l < 1.0 && norm(sub(p, self.notch_centre)) >= self.notch_radius).then_some(l)
    }
}

/// A lesion: a small deformed sphere, painted only over its organ's label.
#[derive(Debug, Clone)]
struct Lesion {
    blob: Blob,
}

/// All random parameters of one phantom.
#[derive(Debug, Clone)]
pub(crate) struct Anatomy {
    body: Body,
    dome: Dome,
    spine: Spine,
    aorta: Aorta,
    ivc: (f64, f64, f64, f64),
    heart: Blob,
    mediastinum: (f64, f64),
    liver: [Blob; 2],
    spleen: Blob,
    spleen_notch: (V3, f64),
    kidneys: [Kidney; 2],
    bladder: Blob,
    /// Thickness of the perivesical fat around the bladder, mm.
    bladder_fat: f64,
    stomach: Blob,
    stomach_air: f64,
    bowel: Field,
    gas_threshold: f64,
    ribs: (f64, f64, f64),
    psoas_top: f64,
    pelvis_ring: (f64, f64),
    liver_lesions: Vec<Lesion>,
    kidney_cyst: Option<(usize, Lesion)>,
    hu: Intensities,
    /// Field of view: lowest and highest z (mm) of the scan.
    pub(crate) z_range: (f64, f64),
    /// Field of view: x and y extents (mm).
    pub(crate) x_range: (f64, f64),
    pub(crate) y_range: (f64, f64),
}

/// `nominal · (1 ± jitter)`.
fn vary(rng: &mut Rng, nominal: f64, jitter: f64) -> f64 {
    nominal * (1.0 + rng.range(-jitter, jitter))
}

/// Uniform in `[-a, a]`.
fn pm(rng: &mut Rng, a: f64) -> f64 {
    rng.range(-a, a)
}

/// Three semi-axes scaled by one size factor `1 ± size` and independent `±5 %`.
fn semi_axes(rng: &mut Rng, nominal: V3, s: f64, size: f64) -> V3 {
    let f = s * (1.0 + rng.range(-size, size));
    [
        nominal[0] * f * vary(rng, 1.0, 0.05),
        nominal[1] * f * vary(rng, 1.0, 0.05),
        nominal[2] * f * vary(rng, 1.0, 0.05),
    ]
}

impl Anatomy {
    /// Draw one phantom's parameters: geometry from `geo`, intensities from `hu`, lesions from
    /// `lesions` (separate streams, so that e.g. turning lesions off keeps the anatomy).
    pub(crate) fn sample(geo: &mut Rng, hu: &mut Rng, lesions: &mut Rng, o: &PhantomOptions) -> Self {
        let s = o.scale;
        let size = o.size_jitter;
        let pj = o.position_jitter_mm * s;
        let hu = Intensities::sample(hu, o.intensity_jitter_hu, o.lesion_contrast_hu);

        let body = Body {
            ax: vary(geo, 120.0, 0.08) * s,
            ay: vary(geo, 85.0, 0.08) * s,
            exponent: geo.range(2.2, 2.8),
            fat: geo.range(8.0, 22.0) * s,
            muscle: geo.range(7.0, 12.0) * s,
            wave_amp: geo.range(0.0, 0.04),
            wave_phase: geo.range(0.0, TAU),
        };
        let (ax, ay) = (body.ax, body.ay);

        let dome = Dome {
            right: (0.42 * ax + pm(geo, 0.3 * pj), 0.0),
            left: (-0.42 * ax + pm(geo, 0.3 * pj), -geo.range(5.0, 20.0) * s),
            y0: 0.05 * ay,
            wx: 0.5 * ax,
            wy: ay,
            drop_x: geo.range(40.0, 60.0) * s,
            drop_y: geo.range(25.0, 40.0) * s,
        };

        let z_bifurcation = -geo.range(150.0, 170.0) * s;
        let spine = Spine {
            y0: -0.28 * ay + pm(geo, 4.0 * s),
            rx: vary(geo, 19.0, 0.1) * s,
            ry: vary(geo, 15.0, 0.1) * s,
            lordosis: geo.range(2.0, 7.0) * s,
            lordosis_phase: geo.range(0.0, TAU),
            period: geo.range(27.0, 32.0) * s,
            disc: geo.range(5.0, 7.5) * s,
            z_lowest: z_bifurcation - geo.range(40.0, 55.0) * s,
            canal_r: vary(geo, 7.5, 0.1) * s,
            arch: geo.range(5.0, 7.0) * s,
            spinous: geo.range(14.0, 20.0) * s,
            transverse: geo.range(14.0, 22.0) * s,
        };

        let radius = vary(geo, 10.5, 0.15) * s;
        let aorta = Aorta {
            radius,
            x_thorax: LEFT * (spine.rx + radius + geo.range(1.0, 4.0) * s),
            dy_thorax: geo.range(0.0, 0.3) * spine.ry,
            x_abdomen: LEFT * geo.range(6.0, 14.0) * s,
            dy_abdomen: spine.ry + radius + geo.range(1.5, 4.0) * s,
            z_bifurcation,
            iliac_spread: geo.range(0.45, 0.65),
        };
        // IVC: (x, dy from the spine centre, semi-x, semi-y), to the right of the aorta.
        let ivc = (
            RIGHT * geo.range(15.0, 23.0) * s,
            spine.ry + geo.range(9.0, 13.0) * s,
            vary(geo, 11.0, 0.15) * s,
            vary(geo, 8.5, 0.15) * s,
        );

        let heart_c = [LEFT * 12.0 * s + pm(geo, pj), 0.2 * ay + pm(geo, 0.5 * pj), 42.0 * s];
        let heart = Blob {
            centre: heart_c,
            semi: semi_axes(geo, [52.0, 40.0, 45.0], s, size * 0.5),
            axes: rotation(-0.5 + pm(geo, 0.2), pm(geo, 0.1), pm(geo, 0.1)),
            wobble: Wobble::random(geo, 0.03),
        };
        let mediastinum = (LEFT * 4.0 * s + pm(geo, 3.0 * s), geo.range(8.0, 13.0) * s);

        // Liver: a large right lobe and a smaller left lobe reaching across the midline.
        let right_c = [RIGHT * 0.42 * ax + pm(geo, pj), 0.08 * ay + pm(geo, pj), -72.0 * s + pm(geo, pj)];
        let right_lobe = Blob {
            centre: right_c,
            semi: semi_axes(geo, [64.0, 60.0, 80.0], s, size),
            // Tilted so that the inferior edge lies anterior (and the bare area posterior).
            axes: rotation(pm(geo, 0.25), pm(geo, 0.15), geo.range(0.3, 0.45)),
            wobble: Wobble::random(geo, 0.045),
        };
        let left_c = [
            right_c[0] - geo.range(65.0, 80.0) * s,
            right_c[1] + geo.range(15.0, 28.0) * s,
            right_c[2] + geo.range(25.0, 40.0) * s,
        ];
        let left_lobe = Blob {
            centre: left_c,
            semi: semi_axes(geo, [48.0, 36.0, 34.0], s, size),
            axes: rotation(pm(geo, 0.3), pm(geo, 0.2), pm(geo, 0.2)),
            wobble: Wobble::random(geo, 0.05),
        };

        // Spleen: posterolateral on the left, thin axis pointing radially.
        // Its lower pole reaches the upper pole of the left kidney (whose centre lies about 100 mm
        // below the dome), not the kidney's middle.
        let spleen_c = [LEFT * 0.54 * ax + pm(geo, pj), -0.25 * ay + pm(geo, pj), -46.0 * s + pm(geo, pj)];
        let theta = spleen_c[1].atan2(spleen_c[0]);
        let spleen_semi = semi_axes(geo, [23.0, 46.0, 50.0], s, size);
        let spleen = Blob {
            centre: spleen_c,
            semi: spleen_semi,
            axes: rotation(theta + pm(geo, 0.2), pm(geo, 0.2), pm(geo, 0.2)),
            wobble: Wobble::random(geo, 0.05),
        };
        let inward = normalize([-spleen_c[0], -spleen_c[1], 0.0]);
        let spleen_notch = (add(spleen_c, scale(inward, 2.3 * spleen_semi[0])), 1.45 * spleen_semi[0]);

        // Kidneys: retroperitoneal either side of the spine, the right one lower.
        let mut kidney = |side: f64, z: f64| {
            let c = [
                side * geo.range(54.0, 62.0) * s + pm(geo, 0.5 * pj),
                spine.y0 + pm(geo, 6.0 * s),
                z * s + pm(geo, pj),
            ];
            let semi = semi_axes(geo, [25.0, 19.0, 50.0], s, size);
            // Local axis 0 points lateral-posterior, so the hilum faces anteromedially.
            let yaw = if side > 0.0 { -PI / 6.0 } else { PI + PI / 6.0 } + pm(geo, 0.2);
            let axes = rotation(yaw, -geo.range(0.12, 0.3), pm(geo, 0.1));
            let blob = Blob { centre: c, semi, axes, wobble: Wobble::random(geo, 0.04) };
            let notch_centre = blob.point([-1.0, 0.0, 0.0]);
            Kidney { side, blob, notch_centre, notch_radius: 0.55 * semi[0], fat: 5.0 * s }
        };
        let kidney_left = kidney(LEFT, -100.0);
        let kidney_right = kidney(RIGHT, -113.0);

        let bladder_z = z_bifurcation - geo.range(75.0, 92.0) * s;
        let bladder = Blob {
            centre: [pm(geo, 0.5 * pj), 0.2 * ay + pm(geo, 0.5 * pj), bladder_z],
            semi: semi_axes(geo, [40.0, 30.0, 30.0], s, size * 1.25),
            axes: rotation(pm(geo, 0.2), pm(geo, 0.1), pm(geo, 0.1)),
            wobble: Wobble::random(geo, 0.05),
        };

        let stomach = Blob {
            centre: [LEFT * 0.36 * ax + pm(geo, pj), 0.32 * ay + pm(geo, 0.5 * pj), -45.0 * s + pm(geo, pj)],
            semi: semi_axes(geo, [30.0, 24.0, 42.0], s, size),
            axes: rotation(0.4 + pm(geo, 0.3), pm(geo, 0.2), pm(geo, 0.2)),
            wobble: Wobble::random(geo, 0.06),
        };
        let stomach_air = if geo.bernoulli(0.7) { geo.range(0.2, 0.6) } else { 2.0 };
        let bowel = Field::sample(geo, (22.0 * s, 45.0 * s));
        let gas_threshold = geo.range(1.4, 2.0);
        let ribs = (geo.range(26.0, 32.0) * s, geo.range(7.0, 10.0) * s, geo.range(0.0, 30.0) * s);
        let psoas_top = -geo.range(70.0, 85.0) * s;
        let pelvis_ring = (geo.range(0.74, 0.8), geo.range(0.07, 0.1));

        // Field of view: the torso with a margin, from just below the bladder to the lower chest.
        let (mx, my) = body.max_semi();
        let margin = |g: &mut Rng| g.range(6.0, 22.0) * s;
        let x_range = (-mx - margin(geo), mx + margin(geo));
        let y_range = (-my - margin(geo), my + margin(geo));
        let bladder_bottom = bladder.bounds().0[2];
        let z_range = (bladder_bottom.min(bladder_z - 25.0 * s) - margin(geo), geo.range(35.0, 60.0) * s);
        // Drawn last, so that it changes none of the parameters above.
        let bladder_fat = geo.range(6.0, 12.0) * s;

        let mut anatomy = Anatomy {
            body,
            dome,
            spine,
            aorta,
            ivc,
            heart,
            mediastinum,
            liver: [right_lobe, left_lobe],
            spleen,
            spleen_notch,
            kidneys: [kidney_left, kidney_right],
            bladder,
            bladder_fat,
            stomach,
            stomach_air,
            bowel,
            gas_threshold,
            ribs,
            psoas_top,
            pelvis_ring,
            liver_lesions: Vec::new(),
            kidney_cyst: None,
            hu,
            z_range,
            x_range,
            y_range,
        };
        anatomy.sample_lesions(lesions, o);
        anatomy
    }

    fn sample_lesions(&mut self, rng: &mut Rng, o: &PhantomOptions) {
        let s = o.scale;
        // Always draw the same numbers, so that the options change only what is used.
        let has_liver = rng.bernoulli(o.lesion_case_fraction);
        let count = 1 + rng.below(o.max_liver_lesions.max(1) as u64) as usize;
        let has_cyst = rng.bernoulli(o.kidney_cyst_fraction);
        let cyst_side = rng.index(2);
        let mut lesion_rng = rng.fork(1);
        let mut cyst_rng = rng.fork(2);
        if !o.include_lesions {
            return;
        }
        if has_liver && o.max_liver_lesions > 0 {
            for _ in 0..count {
                let radius = lesion_rng.range(o.lesion_radius_mm[0], o.lesion_radius_mm[1]) * s;
                if let Some(lesion) =
                    self.place_lesion(&mut lesion_rng, radius, &self.liver, |a, p| a.liver_lesion_site(p))
                {
                    self.liver_lesions.push(lesion);
                }
            }
        }
        if has_cyst {
            let radius = cyst_rng.range(6.0, 11.0) * s;
            let kidney = self.kidneys[cyst_side].clone();
            if let Some(lesion) =
                self.place_lesion(&mut cyst_rng, radius, &[kidney.blob], |_, p| kidney.level(p).is_some())
            {
                self.kidney_cyst = Some((cyst_side, lesion));
            }
        }
    }

    /// A lesion of about `radius` mm whose centre and 14 points (axes and diagonals) at its
    /// largest possible extent plus 2 mm are inside the organ (`inside`); `None` after 400
    /// failed tries.
    fn place_lesion(
        &self,
        rng: &mut Rng,
        radius: f64,
        blobs: &[Blob],
        inside: impl Fn(&Anatomy, V3) -> bool,
    ) -> Option<Lesion> {
        let semi = [0; 3].map(|_| radius * rng.range(0.9, 1.1));
        let axes = rotation(rng.range(0.0, TAU), rng.range(-0.5, 0.5), rng.range(-0.5, 0.5));
        let wobble = Wobble::random(rng, 0.05);
        let reach = wobble.max_radius() * semi.iter().copied().fold(0.0, f64::max) + 2.0;
        let mut directions: Vec<V3> = Vec::with_capacity(14);
        for a in 0..3 {
            for d in [-1.0, 1.0] {
                let mut v = [0.0; 3];
                v[a] = d;
                directions.push(v);
            }
        }
        for i in 0..8 {
            let sign = |bit: usize| if i & bit != 0 { 1.0 } else { -1.0 };
            directions.push(normalize([sign(1), sign(2), sign(4)]));
        }
        // Candidates: uniform in the inner 80 % of the organ's ellipsoids (the first favoured).
        for _ in 0..400 {
            let blob = if blobs.len() > 1 && rng.bernoulli(0.3) {
                blobs[1 + rng.index(blobs.len() - 1)]
            } else {
                blobs[0]
            };
            let q = loop {
                let q = [rng.range(-1.0, 1.0), rng.range(-1.0, 1.0), rng.range(-1.0, 1.0)];
                if norm(q) < 1.0 {
                    break scale(q, 0.8);
                }
            };
            let c = blob.point(q);
            if inside(self, c) && directions.iter().all(|&d| inside(self, add(c, scale(d, reach)))) {
                return Some(Lesion { blob: Blob { centre: c, semi, axes, wobble } });
            }
        }
        None
    }

    /// Whether `p` lies in the liver shape (before other organs carve it).
    fn in_liver(&self, p: V3) -> bool {
        (self.liver[0].contains(p) || self.liver[1].contains(p))
            && p[2] < self.dome.z(p[0], p[1]) - 1.5
            && self.body.cavity(p) < 0.93
            && !self.behind_a_kidney(p)
    }

    /// Whether `p` lies posterior of either kidney (see [`Kidney::shadows`]).
    fn behind_a_kidney(&self, p: V3) -> bool {
        self.kidneys.iter().any(|k| k.shadows(p, self.body.ay))
    }

    /// Whether `p` lies in the liver and in none of the structures painted over it later.
    fn liver_lesion_site(&self, p: V3) -> bool {
        let (x0, dy, rx, ry) = self.ivc;
        let in_ivc =
            ((p[0] - x0) / rx).powi(2) + ((p[1] - self.spine.centre_y(p[2]) - dy) / ry).powi(2) < 1.0;
        self.in_liver(p)
            && !in_ivc
            && !self.spleen.contains(p)
            && self.kidneys.iter().all(|k| !k.perirenal().contains(p))
            && !(p[0].abs() < self.spine.rx + 5.0 && p[1] < self.spine.centre_y(p[2]) + self.spine.ry + 5.0)
            && {
                let (ax, ay, ar) = self.aorta.centre(&self.spine, p[2]);
                (p[0] - ax).hypot(p[1] - ay) > ar + 5.0
            }
    }

    /// Number of liver lesions placed.
    pub(crate) fn liver_lesion_count(&self) -> usize {
        self.liver_lesions.len()
    }

    /// Whether a kidney cyst was placed.
    pub(crate) fn has_kidney_cyst(&self) -> bool {
        self.kidney_cyst.is_some()
    }

    /// Paint every structure onto `c` (tissue HU and labels at voxel centres).
    pub(crate) fn paint(&self, c: &mut LabelGrid) {
        self.paint_body(c);
        self.paint_wall_bones(c);
        self.paint_muscles(c);
        self.paint_thorax(c);
        self.paint_stomach(c);
        self.paint_pelvis(c);
        self.paint_liver(c);
        self.paint_spleen(c);
        self.paint_kidneys(c);
        self.paint_bladder(c);
        self.paint_ivc(c);
        self.paint_spine(c);
        self.paint_aorta(c);
        self.paint_lesions(c);
    }

    fn paint_body(&self, c: &mut LabelGrid) {
        let h = &self.hu;
        let spine = &self.spine;
        let s = self.body_scale();
        c.paint(c.everywhere(), |p, hu, lab| {
            *lab = 0;
            if self.body.outer(p) >= 1.0 {
                *hu = AIR_HU;
            } else if self.body.muscle_level(p) >= 1.0 {
                *hu = h.fat;
            } else if self.body.cavity(p) >= 1.0 {
                *hu = h.muscle;
            } else if p[2] > self.dome.z(p[0], p[1]) {
                // Mediastinal and chest-wall fat (lungs and heart are painted over it).
                *hu = h.fat + 20.0;
            } else if p[1] < spine.centre_y(p[2]) + 4.0 {
                // Retroperitoneal fat.
                *hu = h.fat + 10.0;
            } else {
                let f = self.bowel.value(p);
                if f > self.gas_threshold && p[2] < -60.0 * s {
                    *hu = AIR_HU + 50.0;
                } else {
                    let w = smoothstep((f + 0.4) / 0.8) as f32;
                    *hu = h.fat + (h.bowel - h.fat) * w;
                }
            }
        });
    }

    /// Ribs (descending anteriorly), the sternum.
    fn paint_wall_bones(&self, c: &mut LabelGrid) {
        let (period, width, phase) = self.ribs;
        let (_, ay) = self.body.max_semi();
        let lo = [self.x_range.0, self.y_range.0, -110.0 * self.body_scale()];
        let hi = [self.x_range.1, self.y_range.1, self.z_range.1];
        let rib_hu = self.hu.rib;
        let s = self.body_scale();
        c.paint((lo, hi), |p, hu, lab| {
            let e = self.body.cavity(p);
            if !(0.93..1.03).contains(&e) || *lab != 0 {
                return;
            }
            let [x, y, z] = p;
            let lowest = -95.0 * s + 55.0 * s * ((y / ay + 1.0) / 2.0).clamp(0.0, 1.0);
            if z < lowest {
                return;
            }
            if x.abs() < 12.0 * s && y > 0.0 && z > -40.0 * s {
                *hu = rib_hu; // sternum
                return;
            }
            if x.abs() < 25.0 * s {
                return;
            }
            let u = (z + 0.45 * y - phase) / period;
            if (u - u.floor()) * period < width {
                *hu = rib_hu;
            }
        });
    }

    /// A rough overall size (1 for the nominal phantom).
    fn body_scale(&self) -> f64 {
        self.body.ax / 120.0
    }

    /// Paraspinal and psoas muscles.
    fn paint_muscles(&self, c: &mut LabelGrid) {
        let sp = &self.spine;
        let m = self.hu.muscle;
        let s = self.body_scale();
        let lo = [-80.0 * s, self.y_range.0, self.z_range.0];
        let hi = [80.0 * s, sp.y0 + 40.0 * s, self.z_range.1];
        let z_bif = self.aorta.z_bifurcation;
        let top = self.psoas_top;
        c.paint((lo, hi), |p, hu, _| {
            let [x, y, z] = p;
            if self.body.muscle_level(p) >= 1.0 {
                return;
            }
            // Paraspinal muscles behind the spine.
            let cy = sp.canal_y(z) - 20.0 * s;
            let q = ((x.abs() - 24.0 * s) / (20.0 * s)).powi(2) + ((y - cy) / (17.0 * s)).powi(2);
            if q < 1.0 && z > sp.z_lowest - 60.0 * s {
                *hu = m;
                return;
            }
            // Psoas muscles beside the lumbar spine, growing downward.
            if z < top && z > z_bif - 70.0 * s {
                let t = smoothstep((top - z) / (top - z_bif));
                let r = (6.0 + 13.0 * t) * s;
                let cx = sp.rx + 4.0 * s + r + (z_bif - z).max(0.0) * 0.35;
                let cyp = sp.centre_y(z) + 0.2 * sp.ry;
                if (x.abs() - cx).powi(2) + (y - cyp).powi(2) < r * r {
                    *hu = m;
                }
            }
        });
    }

    /// Lungs (labelled by side) and the heart.
    fn paint_thorax(&self, c: &mut LabelGrid) {
        let (mx, my) = self.body.max_semi();
        let lo_z = [(mx, my), (mx, -my), (-mx, my), (-mx, -my)]
            .iter()
            .map(|&(x, y)| self.dome.z(x, y))
            .fold(f64::INFINITY, f64::min)
            - 5.0;
        let lo = [-mx, -my, lo_z];
        let hi = [mx, my, self.z_range.1];
        let (x_med, w_med) = self.mediastinum;
        let h = &self.hu;
        c.paint((lo, hi), |p, hu, lab| {
            let [x, y, z] = p;
            if z <= self.dome.z(x, y) + 1.0 || self.body.cavity(p) >= 0.93 {
                return;
            }
            if self.heart.contains(p) {
                *hu = h.heart;
                *lab = 0;
                return;
            }
            let front_of_spine = y > self.spine.centre_y(z) - self.spine.ry;
            if front_of_spine && (x - x_med).abs() < w_med {
                return;
            }
            let posterior = ((1.0 - y / my) / 2.0).clamp(0.0, 1.0) as f32;
            *hu = h.lung + 50.0 * posterior * posterior;
            *lab = if x > x_med { LUNG_RIGHT } else { LUNG_LEFT };
        });
    }

    fn paint_stomach(&self, c: &mut LabelGrid) {
        let st = &self.stomach;
        let (fluid, air_level) = (self.hu.stomach, self.stomach_air);
        c.paint(st.bounds(), |p, hu, lab| {
            if *lab != 0 || p[2] > self.dome.z(p[0], p[1]) - 1.0 || self.body.cavity(p) >= 0.93 {
                return;
            }
            if st.contains(p) {
                // Supine patient: gas rises anteriorly.
                *hu = if st.local(p)[1] > air_level { AIR_HU + 30.0 } else { fluid };
            }
        });
    }

    /// Pelvic bones (iliac wings, rami) and the sacrum; unlabelled.
    fn paint_pelvis(&self, c: &mut LabelGrid) {
        let s = self.body_scale();
        let sp = &self.spine;
        let z_top = self.aorta.z_bifurcation + 15.0 * s;
        let bladder_z = self.bladder.centre[2];
        let lo = [self.x_range.0, self.y_range.0, self.z_range.0];
        let hi = [self.x_range.1, self.y_range.1, z_top];
        let (ring, thick) = self.pelvis_ring;
        let h = &self.hu;
        let sacrum_top = sp.z_lowest - sp.disc;
        let y_sacrum = sp.centre_y(sp.z_lowest);
        c.paint((lo, hi), |p, hu, lab| {
            if *lab != 0 {
                return;
            }
            let [x, y, z] = p;
            // Sacrum: a plate tilting backward as it descends.
            if z < sacrum_top && z > sacrum_top - 85.0 * s {
                let t = (sacrum_top - z) / (85.0 * s);
                let cy = y_sacrum - 0.4 * (sacrum_top - z);
                let half_w = 45.0 * s * (1.0 - 0.55 * t);
                if x.abs() < half_w && (y - cy).abs() < 14.0 * s * (1.0 - 0.4 * t) {
                    *hu = h.pelvis;
                    return;
                }
            }
            // The wings flare outward toward the iliac crest.
            let t = ((z - self.z_range.0) / (z_top - self.z_range.0)).clamp(0.0, 1.0);
            let inner = ring - 0.06 + 0.14 * t;
            let e = self.body.cavity(p);
            if !(inner..inner + thick).contains(&e) {
                return;
            }
            let angle = x.atan2(y).abs().to_degrees();
            let upper = z > bladder_z + 5.0 * s;
            let ok = if upper { (60.0..150.0).contains(&angle) } else { (8.0..150.0).contains(&angle) };
            if ok {
                *hu = h.pelvis;
            }
        });
    }

    fn paint_liver(&self, c: &mut LabelGrid) {
        let (l0, h0) = self.liver[0].bounds();
        let (l1, h1) = self.liver[1].bounds();
        let lo = [l0[0].min(l1[0]), l0[1].min(l1[1]), l0[2].min(l1[2])];
        let hi = [h0[0].max(h1[0]), h0[1].max(h1[1]), h0[2].max(h1[2])];
        let liver = self.hu.liver;
        c.paint((lo, hi), |p, hu, lab| {
            if self.in_liver(p) {
                *hu = liver;
                *lab = LIVER;
            }
        });
    }

    fn paint_spleen(&self, c: &mut LabelGrid) {
        let sp = &self.spleen;
        let (notch, nr) = self.spleen_notch;
        let v = self.hu.spleen;
        c.paint(sp.bounds(), |p, hu, lab| {
            if sp.contains(p)
                && norm(sub(p, notch)) >= nr
                && p[2] < self.dome.z(p[0], p[1]) - 1.5
                && self.body.cavity(p) < 0.93
                && !self.behind_a_kidney(p)
            {
                *hu = v;
                *lab = SPLEEN;
            }
        });
    }

    fn paint_kidneys(&self, c: &mut LabelGrid) {
        let h = &self.hu;
        for k in &self.kidneys {
            let label = k.label();
            // Perirenal fat: the kidney grown by a few millimetres pushes neighbouring organs away.
            let fat = k.perirenal();
            c.paint(fat.bounds(), |p, hu, lab| {
                if fat.contains(p) && !k.blob.contains(p) && matches!(*lab, 0 | LIVER | SPLEEN) {
                    *hu = h.fat + 10.0;
                    *lab = 0;
                }
            });
            c.paint(k.blob.bounds(), |p, hu, lab| {
                if k.blob.contains(p) {
                    match k.level(p) {
                        Some(l) => {
                            *hu = if l > 0.8 { h.kidney_cortex } else { h.kidney_medulla };
                            *lab = label;
                        }
                        None => {
                            *hu = h.renal_sinus;
                            *lab = 0;
                        }
                    }
                }
            });
        }
    }

    fn paint_bladder(&self, c: &mut LabelGrid) {
        let b = &self.bladder;
        let wall = 1.0 - 3.0 / b.semi.iter().copied().fold(f64::INFINITY, f64::min);
        let h = &self.hu;
        // Perivesical fat: the bladder sits in a fat pad that separates its wall from bowel and
        // muscle (bone and labelled structures keep their place).
        let mut pad = *b;
        pad.semi = b.semi.map(|v| v + self.bladder_fat);
        c.paint(pad.bounds(), |p, hu, lab| {
            if *lab == 0 && *hu < h.pelvis.min(h.rib) - 100.0 && self.body.cavity(p) < 1.0 && pad.contains(p)
            {
                *hu = h.fat;
            }
        });
        c.paint(b.bounds(), |p, hu, lab| {
            if self.body.cavity(p) >= 0.95 {
                return;
            }
            let l = b.level(p);
            if l < 1.0 {
                *hu = if l > wall { h.bladder_wall } else { h.bladder };
                *lab = URINARY_BLADDER;
            }
        });
    }

    /// The inferior vena cava: unlabelled; it carves the liver (as in real scans) but no other
    /// organ.
    fn paint_ivc(&self, c: &mut LabelGrid) {
        let (x0, dy, rx, ry) = self.ivc;
        let sp = &self.spine;
        let s = self.body_scale();
        let lo = [x0 - rx - 1.0, sp.y0 - 20.0 * s, self.aorta.z_bifurcation + 5.0 * s];
        let hi = [x0 + rx + 1.0, sp.y0 + 80.0 * s, self.z_range.1];
        let v = self.hu.ivc;
        c.paint((lo, hi), |p, hu, lab| {
            let [x, y, z] = p;
            if !(*lab == 0 || *lab == LIVER) || z > self.dome.z(x, y) + 15.0 * s {
                return;
            }
            let cy = sp.centre_y(z) + dy;
            if ((x - x0) / rx).powi(2) + ((y - cy) / ry).powi(2) < 1.0 {
                *hu = v;
                *lab = 0;
            }
        });
    }

    /// Vertebral bodies (with cortex), discs, arches with processes, and the spinal canal.
    fn paint_spine(&self, c: &mut LabelGrid) {
        let sp = &self.spine;
        let reach = sp.canal_r + sp.arch + sp.transverse.max(sp.rx) + 2.0;
        let lo = [
            -reach,
            sp.y0 - sp.ry - 2.0 * sp.canal_r - sp.arch - sp.spinous - sp.lordosis - 4.0,
            sp.z_lowest,
        ];
        let hi = [reach, sp.y0 + sp.ry + sp.lordosis + 2.0, self.z_range.1];
        let h = &self.hu;
        let half = (sp.period - sp.disc) / 2.0;
        let phase0 = sp.z_lowest - sp.disc / 2.0;
        c.paint((lo, hi), |p, hu, lab| {
            let [x, y, z] = p;
            let yc = sp.centre_y(z);
            let u = (z - phase0) / sp.period;
            let zc = phase0 + (u.floor() + 0.5) * sp.period;
            let tau = (z - zc).abs() / half;
            let rho = ((x / sp.rx).powi(2) + ((y - yc) / sp.ry).powi(2)).sqrt();
            let level = (rho.powi(6) + tau.powi(6)).powf(1.0 / 6.0);
            if level < 1.0 {
                *hu = if level > 0.84 { h.bone_cortex } else { h.bone_cancellous };
                *lab = VERTEBRAE;
                return;
            }
            if rho < 0.97 {
                *hu = h.disc;
                *lab = 0;
                return;
            }
            // Posterior elements around the canal.
            let cy = sp.canal_y(z);
            let (dx, dy) = (x, y - cy);
            let r = (dx * dx + dy * dy).sqrt();
            if r < sp.canal_r {
                *hu = h.csf;
                *lab = 0;
                return;
            }
            let dz = z - zc;
            let in_arch = r < sp.canal_r + sp.arch && dy < 0.5 * sp.canal_r && dz.abs() < 0.85 * half;
            let in_spinous = dx.abs() < 0.6 * sp.arch
                && dy < 0.0
                && dy > -(sp.canal_r + sp.arch + sp.spinous)
                && (dz + 0.25 * half).abs() < 0.6 * half;
            let in_transverse = dy.abs() < 0.8 * sp.arch
                && dx.abs() < sp.canal_r + sp.arch + sp.transverse
                && dz.abs() < 0.35 * half;
            if in_arch || in_spinous || in_transverse {
                *hu = 0.5 * (h.bone_cortex + h.bone_cancellous);
                *lab = VERTEBRAE;
            }
        });
    }

    /// The aorta (labelled) and the common iliac arteries (unlabelled, painted over the
    /// background only).
    fn paint_aorta(&self, c: &mut LabelGrid) {
        let a = &self.aorta;
        let sp = &self.spine;
        let r_max = a.radius + 1.0;
        let lo =
            [a.x_thorax.min(a.x_abdomen) - 80.0, sp.y0 - sp.ry - r_max - sp.lordosis - 30.0, self.z_range.0];
        let hi = [
            a.x_thorax.max(a.x_abdomen) + 80.0,
            sp.y0 + sp.lordosis + a.dy_abdomen + r_max + 5.0,
            self.z_range.1,
        ];
        let v = self.hu.aorta;
        let (bx, by, br) = a.centre(sp, a.z_bifurcation);
        c.paint((lo, hi), |p, hu, lab| {
            let [x, y, z] = p;
            if z >= a.z_bifurcation {
                let (cx, cy, r) = a.centre(sp, z);
                if (x - cx).powi(2) + (y - cy).powi(2) < r * r {
                    *hu = v;
                    *lab = AORTA;
                }
                return;
            }
            let d = a.z_bifurcation - z;
            if *lab != 0 || d > 90.0 {
                return;
            }
            let r = 0.62 * br;
            let cy = by - 0.15 * d;
            for side in [LEFT, RIGHT] {
                let cx = bx + side * a.iliac_spread * d;
                if (x - cx).powi(2) + (y - cy).powi(2) < r * r {
                    *hu = v;
                }
            }
        });
    }

    fn paint_lesions(&self, c: &mut LabelGrid) {
        let h = &self.hu;
        for lesion in &self.liver_lesions {
            c.paint(lesion.blob.bounds(), |p, hu, lab| {
                if (*lab == LIVER || *lab == LIVER_LESION) && lesion.blob.contains(p) {
                    *hu = h.liver_lesion;
                    *lab = LIVER_LESION;
                }
            });
        }
        if let Some((side, lesion)) = &self.kidney_cyst {
            let label = self.kidneys[*side].label();
            c.paint(lesion.blob.bounds(), |p, hu, lab| {
                if *lab == label && lesion.blob.contains(p) {
                    *hu = h.kidney_cyst;
                }
            });
        }
    }
}
