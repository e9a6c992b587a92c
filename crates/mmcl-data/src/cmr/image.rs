//! Channel-first float images (`[C, H, W]`, values in [0, 1]) and the torchvision operations the
//! reference applies to them: bilinear resize with antialiasing, crops, horizontal flip,
//! rotation (nearest neighbour, zero fill), colour jitter and random resized crop.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A `[C, H, W]` float image, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Values, `data[(c·H + y)·W + x]`.
    pub data: Vec<f32>,
    /// Channels.
    pub channels: usize,
    /// Height (rows).
    pub height: usize,
    /// Width (columns).
    pub width: usize,
}

impl Image {
    /// A zero image.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Self {
            data: vec![0.0; channels * height * width],
            channels,
            height,
            width,
        }
    }

    fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// The window of `height × width` pixels at (`top`, `left`); pixels outside the image are 0
    /// (torchvision's `crop` pads the same way).
    pub fn crop(&self, top: isize, left: isize, height: usize, width: usize) -> Image {
        let mut out = Image::zeros(self.channels, height, width);
        // Columns of the window that fall inside the image, copied row by row.
        let x0 = left.clamp(0, self.width as isize);
        let x1 = (left + width as isize).clamp(0, self.width as isize);
        if x1 <= x0 {
            return out;
        }
        let (sx0, sx1) = (x0 as usize, x1 as usize);
        let dx0 = (x0 - left) as usize;
        for c in 0..self.channels {
            let src = self.plane(c);
            let dst = &mut out.data[c * height * width..(c + 1) * height * width];
            for y in 0..height {
                let sy = top + y as isize;
                if sy < 0 || sy >= self.height as isize {
                    continue;
                }
                let row = &src[sy as usize * self.width..(sy as usize + 1) * self.width];
                dst[y * width + dx0..y * width + dx0 + (sx1 - sx0)].copy_from_slice(&row[sx0..sx1]);
            }
        }
        out
    }

    /// Bilinear resize with antialiasing (PyTorch's `interpolate(…, antialias=True)`, which
    /// torchvision's `Resize` uses): a triangle filter widened by the scale when shrinking,
    /// half-pixel centres, weights renormalised at the borders.
    pub fn resize(&self, height: usize, width: usize) -> Image {
        if height == self.height && width == self.width {
            return self.clone();
        }
        let wx = filter_weights(self.width, width);
        let wy = filter_weights(self.height, height);
        let mut tmp = vec![0.0f32; self.channels * self.height * width];
        for c in 0..self.channels {
            let src = self.plane(c);
            for y in 0..self.height {
                let row = &src[y * self.width..(y + 1) * self.width];
                let dst =
                    &mut tmp[(c * self.height + y) * width..(c * self.height + y + 1) * width];
                for (x, (start, weights)) in wx.iter().enumerate() {
                    dst[x] = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * row[start + k])
                        .sum();
                }
            }
        }
        let mut out = Image::zeros(self.channels, height, width);
        for c in 0..self.channels {
            let plane = &tmp[c * self.height * width..(c + 1) * self.height * width];
            let dst = &mut out.data[c * height * width..(c + 1) * height * width];
            for (y, (start, weights)) in wy.iter().enumerate() {
                let row = &mut dst[y * width..(y + 1) * width];
                for (k, w) in weights.iter().enumerate() {
                    let src = &plane[(start + k) * width..(start + k + 1) * width];
                    for (d, s) in row.iter_mut().zip(src) {
                        *d += w * s;
                    }
                }
            }
        }
        out
    }

    /// Mirrors left–right.
    pub fn hflip(&mut self) {
        let w = self.width;
        for row in self.data.chunks_mut(w) {
            row.reverse();
        }
    }

    /// Rotates by `degrees` counter-clockwise about the centre, nearest neighbour, zero fill,
    /// same size (torchvision `rotate` on tensors).
    pub fn rotate(&self, degrees: f64) -> Image {
        let (h, w) = (self.height, self.width);
        let mut out = Image::zeros(self.channels, h, w);
        // torchvision builds the inverse map in float32 for float images: the normalised grid
        // coordinate g = (cos·x − sin·y) / (w/2) (resp. (sin·x + cos·y) / (h/2)) of each output
        // pixel centre, then grid_sample reads pixel nearbyint(((g + 1)·w − 1) / 2).
        let rad = degrees.to_radians();
        let (sin, cos) = (rad.sin() as f32, rad.cos() as f32);
        let (half_w, half_h) = (0.5 * w as f32, 0.5 * h as f32);
        let (ax, bx) = (cos / half_w, -sin / half_w);
        let (ay, by) = (sin / half_h, cos / half_h);
        let mut source = Vec::with_capacity(h * w);
        for y in 0..h {
            let ry = y as f32 + 0.5 - half_h;
            for x in 0..w {
                let rx = x as f32 + 0.5 - half_w;
                let gx = rx * ax + ry * bx;
                let gy = rx * ay + ry * by;
                let ix = round_half_even((((gx + 1.0) * w as f32 - 1.0) / 2.0) as f64);
                let iy = round_half_even((((gy + 1.0) * h as f32 - 1.0) / 2.0) as f64);
                let inside = ix >= 0.0 && iy >= 0.0 && ix < w as f64 && iy < h as f64;
                source.push(if inside {
                    iy as u32 * w as u32 + ix as u32
                } else {
                    u32::MAX
                });
            }
        }
        for c in 0..self.channels {
            let src = self.plane(c);
            let dst = &mut out.data[c * h * w..(c + 1) * h * w];
            for (d, &s) in dst.iter_mut().zip(&source) {
                if s != u32::MAX {
                    *d = src[s as usize];
                }
            }
        }
        out
    }

    /// The grey level of each pixel: ITU-R 601 luma for 3 channels (torchvision's
    /// `rgb_to_grayscale`), the channel mean otherwise.
    fn grey(&self) -> Vec<f32> {
        let n = self.height * self.width;
        if self.channels == 3 {
            let (r, g, b) = (self.plane(0), self.plane(1), self.plane(2));
            (0..n)
                .map(|i| 0.2989 * r[i] + 0.587 * g[i] + 0.114 * b[i])
                .collect()
        } else {
            let mut grey = vec![0.0f32; n];
            for c in 0..self.channels {
                for (g, v) in grey.iter_mut().zip(self.plane(c)) {
                    *g += v;
                }
            }
            let k = 1.0 / self.channels as f32;
            grey.iter_mut().for_each(|g| *g *= k);
            grey
        }
    }

    /// `clamp(f·img, 0, 1)`.
    pub fn adjust_brightness(&mut self, factor: f32) {
        self.data
            .iter_mut()
            .for_each(|v| *v = (factor * *v).clamp(0.0, 1.0));
    }

    /// Blends with the mean grey level: `clamp(f·img + (1 − f)·mean, 0, 1)`.
    pub fn adjust_contrast(&mut self, factor: f32) {
        let grey = self.grey();
        let mean = grey.iter().map(|v| *v as f64).sum::<f64>() / grey.len().max(1) as f64;
        let offset = (1.0 - factor) * mean as f32;
        self.data
            .iter_mut()
            .for_each(|v| *v = (factor * *v + offset).clamp(0.0, 1.0));
    }

    /// Blends each pixel with its grey level: `clamp(f·img + (1 − f)·grey, 0, 1)`; a
    /// single-channel image is left unchanged (as torchvision).
    pub fn adjust_saturation(&mut self, factor: f32) {
        if self.channels == 1 {
            return;
        }
        let grey = self.grey();
        let n = self.height * self.width;
        for c in 0..self.channels {
            let plane = &mut self.data[c * n..(c + 1) * n];
            for (v, g) in plane.iter_mut().zip(&grey) {
                *v = (factor * *v + (1.0 - factor) * g).clamp(0.0, 1.0);
            }
        }
    }
}

/// Rounds half to even (as `torch.nearbyint`) without a library call: adding and removing
/// 1.5·2^52 leaves the integer nearest under the default rounding mode (|v| < 2^51).
#[inline]
fn round_half_even(v: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    if v.abs() < 2_251_799_813_685_248.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// For each output pixel, the first source pixel and the normalised filter weights.
fn filter_weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let support = if scale > 1.0 { scale } else { 1.0 };
    let inv = 1.0 / support;
    (0..output)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let start = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let end = ((centre + support + 0.5).floor() as usize).min(input);
            let mut weights: Vec<f64> = (start..end)
                .map(|j| (1.0 - ((j as f64 + 0.5 - centre) * inv).abs()).max(0.0))
                .collect();
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (start, weights.into_iter().map(|w| w as f32).collect())
        })
        .collect()
}

/// The image augmentation of the contrastive stage (`grab_image_augmentations` of the
/// reference), applied with probability `apply_prob`; otherwise the image is only resized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageAugmentConfig {
    /// Probability of augmenting (the reference's `augmentation_rate`, 0.95).
    pub apply_prob: f64,
    /// Probability of the horizontal flip.
    pub hflip_prob: f64,
    /// Rotation uniform in ± this many degrees.
    pub rotation_deg: f64,
    /// Brightness factor uniform in `[1 − b, 1 + b]`.
    pub brightness: f64,
    /// Contrast factor uniform in `[1 − c, 1 + c]`.
    pub contrast: f64,
    /// Saturation factor uniform in `[1 − s, 1 + s]`.
    pub saturation: f64,
    /// Area fraction range of the random resized crop.
    pub crop_scale: (f64, f64),
    /// Aspect-ratio range of the random resized crop.
    pub crop_ratio: (f64, f64),
    /// Output side length.
    pub size: usize,
}

impl Default for ImageAugmentConfig {
    /// The reference: flip, rotation 45°, colour jitter 0.5, resized crop (0.6, 1) to 210,
    /// with probability 0.95.
    fn default() -> Self {
        Self {
            apply_prob: 0.95,
            hflip_prob: 0.5,
            rotation_deg: 45.0,
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
            crop_scale: (0.6, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            size: 210,
        }
    }
}

impl ImageAugmentConfig {
    /// Augments (or only resizes) an image to `size × size`, in the reference's order:
    /// flip, rotation, colour jitter (its three adjustments in random order), random resized
    /// crop.
    pub fn apply(&self, image: &Image, rng: &mut Rng) -> Image {
        if !rng.chance(self.apply_prob) {
            return image.resize(self.size, self.size);
        }
        let mut img = image.clone();
        if rng.chance(self.hflip_prob) {
            img.hflip();
        }
        let angle = rng.uniform_in(-self.rotation_deg, self.rotation_deg);
        let mut img = img.rotate(angle);
        let factor = |rng: &mut Rng, amount: f64| rng.uniform_in(1.0 - amount, 1.0 + amount) as f32;
        let mut order = [0usize, 1, 2, 3];
        rng.shuffle(&mut order);
        let b = factor(rng, self.brightness);
        let c = factor(rng, self.contrast);
        let s = factor(rng, self.saturation);
        for op in order {
            match op {
                0 => img.adjust_brightness(b),
                1 => img.adjust_contrast(c),
                2 => img.adjust_saturation(s),
                _ => {} // hue is not jittered by the reference
            }
        }
        let (top, left, h, w) = random_resized_crop_params(
            img.height,
            img.width,
            self.crop_scale,
            self.crop_ratio,
            rng,
        );
        img.crop(top as isize, left as isize, h, w)
            .resize(self.size, self.size)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries of a random area fraction and
/// log-uniform aspect ratio, else a centre crop clamped to the ratio range. Returns
/// `(top, left, height, width)`.
pub fn random_resized_crop_params(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform_in(scale.0, scale.1);
        let aspect = rng.uniform_in(log_lo, log_hi).exp();
        let w = (target * aspect).sqrt().round_ties_even() as usize;
        let h = (target / aspect).sqrt().round_ties_even() as usize;
        if w > 0 && w <= width && h > 0 && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        ((width as f64 / ratio.0).round_ties_even() as usize, width)
    } else if in_ratio > ratio.1 {
        (height, (height as f64 * ratio.1).round_ties_even() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> Image {
        Image {
            data: (0..c * h * w).map(|i| (i % 97) as f32 / 97.0).collect(),
            channels: c,
            height: h,
            width: w,
        }
    }

    #[test]
    fn magic_rounding_is_half_even() {
        for v in [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001, 7.0, -3.2] {
            assert_eq!(round_half_even(v), f64::round_ties_even(v), "{v}");
        }
    }

    #[test]
    fn rotation_by_zero_and_full_turn_is_identity() {
        let img = ramp(2, 9, 7);
        assert_eq!(img.rotate(0.0), img);
        let r = img.rotate(90.0).rotate(-90.0);
        // A square centre region survives a quarter turn and back.
        assert_eq!(r.data[4 * 7 + 3], img.data[4 * 7 + 3]);
    }

    #[test]
    fn resize_preserves_constants_and_halves_by_averaging() {
        let img = Image {
            data: vec![0.25; 3 * 8 * 8],
            channels: 3,
            height: 8,
            width: 8,
        };
        let r = img.resize(5, 13);
        assert!(r.data.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let img = Image {
            data: vec![0.0, 1.0, 0.0, 1.0],
            channels: 1,
            height: 1,
            width: 4,
        };
        // Expected values from torch.nn.functional.interpolate(bilinear, antialias=True).
        let r = img.resize(1, 2);
        assert!((r.data[0] - 0.428_571_4).abs() < 1e-6, "{:?}", r.data);
        assert!((r.data[1] - 0.571_428_6).abs() < 1e-6, "{:?}", r.data);
        let img = Image {
            data: (0..35).map(|v| v as f32 / 35.0).collect(),
            channels: 1,
            height: 5,
            width: 7,
        };
        let r = img.resize(3, 11);
        let torch_row1 = [
            0.4000, 0.4130, 0.4312, 0.4494, 0.4675, 0.4857, 0.5039, 0.5221, 0.5403, 0.5584, 0.5714,
        ];
        for (a, b) in r.data[11..22].iter().zip(torch_row1) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn augmentation_is_seeded_and_sized() {
        let img = ramp(3, 40, 40);
        let cfg = ImageAugmentConfig {
            size: 32,
            ..Default::default()
        };
        let a = cfg.apply(&img, &mut Rng::new(4));
        assert_eq!((a.channels, a.height, a.width), (3, 32, 32));
        assert_eq!(a, cfg.apply(&img, &mut Rng::new(4)));
        assert_ne!(a, cfg.apply(&img, &mut Rng::new(5)));
        assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn crop_pads_outside_with_zeros() {
        let img = ramp(2, 4, 5);
        let c = img.crop(-1, 3, 3, 4);
        assert_eq!((c.height, c.width), (3, 4));
        for ch in 0..2 {
            for y in 0..3 {
                for x in 0..4 {
                    let (sy, sx) = (y as isize - 1, x as isize + 3);
                    let expected = if (0..4).contains(&sy) && (0..5).contains(&sx) {
                        img.data[(ch * 4 + sy as usize) * 5 + sx as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(c.data[(ch * 3 + y) * 4 + x], expected);
                }
            }
        }
        assert!(img.crop(0, 9, 2, 2).data.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn crop_params_fit() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let (t, l, h, w) =
                random_resized_crop_params(78, 78, (0.6, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(t + h <= 78 && l + w <= 78 && h > 0 && w > 0);
            let frac = (h * w) as f64 / (78.0 * 78.0);
            assert!((0.55..=1.0).contains(&frac), "{frac}");
        }
    }
}
