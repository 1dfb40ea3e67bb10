//! `kernels::rope`'s reference: rotary position embedding (rotate_half convention) packed
//! into qkv rows, and its transpose.

use crate::kernels::rope::RopeShape;

/// Rotate head `x` (hs elements) into `y` by the angles whose cos / sin are `c`, `s` (hs/2
/// each); `transpose` applies Rᵀ instead of R.
fn rotate(y: &mut [f32], x: &[f32], c: &[f32], s: &[f32], transpose: bool) {
    let half = x.len() / 2;
    let sign = if transpose { -1.0 } else { 1.0 };
    for i in 0..half {
        let (a, b) = (x[i] as f64, x[i + half] as f64);
        let (c, s) = (c[i] as f64, sign * s[i] as f64);
        y[i] = (a * c - b * s) as f32;
        y[i + half] = (b * c + a * s) as f32;
    }
}

/// The (cos, sin) rows of row r's position, pos + r % t.
fn angles<'a>(
    cos: &'a [f32],
    sin: &'a [f32],
    pos: u32,
    r: usize,
    s: &RopeShape,
) -> (&'a [f32], &'a [f32]) {
    let half = s.hs / 2;
    let at = (pos as usize + r % s.t) * half;
    (&cos[at..at + half], &sin[at..at + half])
}

/// qkv = [rope(q) | rope(k) | v] row by row.
///   qkv: (rows, (nh + 2·nkv)·hs)   q: (rows, nh·hs)   k, v: (rows, nkv·hs)   cos, sin: (P, hs/2)
pub fn forward(
    qkv: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: u32,
    s: &RopeShape,
) {
    let (hs, qw, kw) = (s.hs, s.nh * s.hs, s.nkv * s.hs);
    let w = qw + 2 * kw;
    for r in 0..s.rows {
        let (c, sn) = angles(cos, sin, pos, r, s);
        let row = &mut qkv[r * w..(r + 1) * w];
        for h in 0..s.nh {
            let x = &q[r * qw + h * hs..r * qw + (h + 1) * hs];
            rotate(&mut row[h * hs..(h + 1) * hs], x, c, sn, false);
        }
        for h in 0..s.nkv {
            let x = &k[r * kw + h * hs..r * kw + (h + 1) * hs];
            rotate(&mut row[qw + h * hs..qw + (h + 1) * hs], x, c, sn, false);
        }
        row[qw + kw..].copy_from_slice(&v[r * kw..(r + 1) * kw]);
    }
}

/// dq, dk = Rᵀ applied to the q and k parts of dqkv; dv = its v part. Written, not added.
///   dq: (rows, nh·hs)   dk, dv: (rows, nkv·hs)   dqkv: (rows, (nh + 2·nkv)·hs)
pub fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dqkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    pos: u32,
    s: &RopeShape,
) {
    let (hs, qw, kw) = (s.hs, s.nh * s.hs, s.nkv * s.hs);
    let w = qw + 2 * kw;
    for r in 0..s.rows {
        let (c, sn) = angles(cos, sin, pos, r, s);
        let row = &dqkv[r * w..(r + 1) * w];
        for h in 0..s.nh {
            let y = &mut dq[r * qw + h * hs..r * qw + (h + 1) * hs];
            rotate(y, &row[h * hs..(h + 1) * hs], c, sn, true);
        }
        for h in 0..s.nkv {
            let y = &mut dk[r * kw + h * hs..r * kw + (h + 1) * hs];
            rotate(y, &row[qw + h * hs..qw + (h + 1) * hs], c, sn, true);
        }
        dv[r * kw..(r + 1) * kw].copy_from_slice(&row[qw + kw..]);
    }
}
