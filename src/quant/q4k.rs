//! The Q4_K quantizer: ggml's `quantize_row_q4_K_ref` method, in Rust.
//!
//! A 256-element super-block is 8 sub-blocks of 32. Each sub-block gets an affine fit
//! `x ≈ scale * q - min` with `q` in 0..=15, found by [`fit_sub_block`]: a search over 21 trial
//! scales around `15 / (max - min)`, each followed by the weighted least-squares scale and min
//! for the levels it picked, keeping the fit of least weighted squared error (weights
//! `rms(sub-block) + |x|`, so large values count more). The eight scales and eight mins are then
//! stored as 6-bit multiples of the super-block's f16 `d = max scale / 63` and
//! `dmin = max min / 63`, and the values are re-rounded against those stored (rounded) scales.
//!
//! `docs/gguf.md` gives the measured error against Q4_0.

use half::f16;

use super::QK_K;

/// Round to nearest, ties to even, as ggml's `nearest_int`.
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Levels 0..=`NMAX` of a sub-block.
const NMAX: i32 = 15;

/// The best affine fit `x ≈ scale * l - min` of one 32-element sub-block, with weights `w`:
/// returns `(scale, min)` with `min >= 0`, writing the levels into `levels`.
/// (ggml's `make_qkx2_quants` with nmax 15, rmin -1, rdelta 0.1, 20 steps, squared error.)
fn fit_sub_block(x: &[f32; 32], w: &[f32; 32], levels: &mut [u8; 32]) -> (f32, f32) {
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *levels = [0; 32];
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, NMAX);
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..32 {
        let l = level(iscale, x[i], min);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for step in 0..=nstep {
        iscale = (rmin + rdelta * step as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            let l = level(iscale, x[i], min);
            trial[i] = l as u8;
            let l = l as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..32 {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                error += w[i] * (diff * diff);
            }
            if error < best_error {
                *levels = trial;
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// One Q4_K block (144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins, 128
/// bytes of 4-bit levels) of 256 finite values.
pub fn quantize_block(x: &[f32; QK_K]) -> [u8; 144] {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let w = xs.map(|v| av_x + v.abs());
        let l: &mut [u8; 32] = (&mut levels[32 * j..32 * j + 32]).try_into().unwrap();
        (scales[j], mins[j]) = fit_sub_block(xs, &w, l);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };

    let mut b = [0u8; 144];
    {
        let s = &mut b[4..16];
        for j in 0..8 {
            let ls = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
            let lm = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
            if j < 4 {
                s[j] = ls;
                s[j + 4] = lm;
            } else {
                s[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                s[j - 4] |= (ls >> 4) << 6;
                s[j] |= (lm >> 4) << 6;
            }
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    b[..2].copy_from_slice(&d.to_le_bytes());
    b[2..4].copy_from_slice(&dmin.to_le_bytes());

    // Re-round every value against the scale and min as stored.
    for (j, (sc, m)) in super::k_scale_min(&b[4..16]).into_iter().enumerate() {
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + ml) / dl).clamp(0, NMAX) as u8;
        }
    }
    for (k, q) in b[16..].chunks_exact_mut(32).enumerate() {
        for (l, q) in q.iter_mut().enumerate() {
            *q = levels[64 * k + l] | (levels[64 * k + 32 + l] << 4);
        }
    }
    b
}
