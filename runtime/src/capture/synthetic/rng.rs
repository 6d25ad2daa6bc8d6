//! Randomness and portable maths: the SplitMix64 hash and stream every random choice
//! comes from, the salts that keep the scene, frame and background streams apart, and
//! the small float helpers whose results do not depend on the platform's maths library.

// Keys that keep the scene, frame and background random streams apart.
pub(super) const SCENE_SALT: u64 = 0x7363_656e_6521;
pub(super) const FRAME_SALT: u64 = 0x6672_616d_6521;
pub(super) const BACKGROUND_SALT: u64 = 0x6261_736b_6574;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Order-sensitive hash of two words.
pub(super) fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b).rotate_left(17))
}

/// SplitMix64 stream (also `framesift bench`'s resampling).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), exactly representable (24 bits).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0)
    }

    pub(super) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    pub(super) fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    pub(super) fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 }
    }
}

/// Sine and cosine of an angle in degrees (|deg| <= 180), from a polynomial so the result
/// does not depend on the platform's maths library.
pub(super) fn sin_cos_deg(deg: f32) -> (f32, f32) {
    let d = deg.clamp(-180.0, 180.0);
    // Fold into [-90, 90] for the sine; the cosine's sign comes from the fold.
    let (folded, cos_sign) = if d > 90.0 {
        (180.0 - d, -1.0)
    } else if d < -90.0 {
        (-180.0 - d, -1.0)
    } else {
        (d, 1.0)
    };
    let x = folded * (std::f32::consts::PI / 180.0);
    let x2 = x * x;
    let s = x
        * (1.0
            - x2 / 6.0
                * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * (1.0 - x2 / 110.0)))));
    let s = s.clamp(-1.0, 1.0);
    let c = cos_sign * (1.0 - s * s).max(0.0).sqrt();
    (s, c)
}

/// Triangle wave with period 1: 1 at integers, 0 half-way between.
#[inline]
pub(super) fn tri(x: f32) -> f32 {
    let f = x - x.floor();
    (2.0 * f - 1.0).abs()
}

#[inline]
pub(super) fn to_u8(x: f32) -> u8 {
    (x + 0.5).clamp(0.0, 255.0) as u8
}

/// Small fixed per-pixel noise in -8..=7 (sensor grain / print texture).
#[inline]
pub(super) fn pixel_noise(x: u32, y: u32, salt: u32) -> i32 {
    let h = (x.wrapping_mul(0x9e37_79b1) ^ y.wrapping_mul(0x85eb_ca77) ^ salt)
        .wrapping_mul(0xc2b2_ae3d);
    let h = h ^ (h >> 15);
    ((h.wrapping_mul(0x2c1b_3c6d) >> 28) as i32) - 8
}

pub(super) fn mix3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

pub(super) fn scale3(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_is_accurate() {
        for i in -180..=180 {
            let deg = i as f32;
            let (s, c) = sin_cos_deg(deg);
            let rad = f64::from(deg).to_radians();
            assert!((f64::from(s) - rad.sin()).abs() < 1e-4, "sin {deg}");
            assert!((f64::from(c) - rad.cos()).abs() < 2e-3, "cos {deg}");
        }
    }
}
