//! LoRA initialisations, PEFT's `init_lora_weights`: Kaiming (PEFT's default `True`), Gaussian,
//! PiSSA (full or randomized SVD) and OLoRA (QR).
//!
//! PiSSA and OLoRA move the principal part of each adapted weight into the adapter: with W the
//! frozen weight as `nn.Linear` holds it, (d_out, d_in), and s the LoRA scale,
//!
//! ```text
//! PiSSA:  W = U S Vᵀ            A0 = √(S_r / s) V_rᵀ   (r, d_in)    B0 = U_r √(S_r / s)   (d_out, r)
//! OLoRA:  W = Q R (thin QR)     A0 = R_r (first r rows)             B0 = Q_r (first r columns)
//! both:   the frozen weight becomes the residual W_res = W − s·B0·A0, so training starts at W
//! ```
//!
//! `pissa_niter_N` takes the top-r triplets from a randomized SVD (Halko et al.'s algorithm 5.1,
//! as `torch.svd_lowrank` computes it: a seeded Gaussian sketch and N power iterations) instead of
//! a full one. Everything is computed in f32 on the CPU ([faer]), like PEFT, across modules in
//! parallel.
//!
//! **Sign freedom.** A singular triplet (u, σ, v) is unique only up to a joint sign flip, and a
//! thin QR only up to the sign of each column of Q with the matching row of R. So A0's row k and
//! B0's column k may both come out negated relative to PEFT's (LAPACK's) choice. B0·A0, the
//! residual, every loss and the whole training trajectory are unchanged by such a flip (AdamW is
//! sign-equivariant element-wise), and the adapter a run saves differs from PEFT's by the same
//! flips. Tests compare after normalising each row of A (largest |entry| positive, flipping B's
//! column with it), and compare B·A directly.
//!
//! **Saving.** Every adapter a PiSSA / OLoRA run writes is converted as PEFT's
//! `save_pretrained(..., path_initial_model_for_weight_conversion=...)` converts it:
//! ΔW = B·A − B0·A0 = [B, −B0]·[A; A0], an ordinary LoRA adapter of rank 2r with lora_alpha
//! doubled (×√2 with rsLoRA, which keeps alpha / √r) and `init_lora_weights = true`. It applies to
//! the original, unmodified base, so evaluation, generation and merging need nothing new; the
//! residual base is never written. A resumed run splits it back ([`split`]) and rebuilds the
//! residual from the saved A0, B0 with the same code ([`subtract_principal`]).

use std::fmt;
use std::str::FromStr;

use faer::{Mat, MatRef};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use super::{target_matches, AdaptableModel, LoraConfig, LoraEntry, LoraLayout};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::lora::MAX_RANK;
use crate::model::{HostWeights, Model, Transformer};

/// How the adapter's A and B start (PEFT's `init_lora_weights`). The string forms are PEFT's:
/// `true`, `gaussian`, `pissa`, `pissa_niter_N`, `olora`.
///
/// ```
/// use lora_wgpu::lora::LoraInit;
///
/// assert_eq!("pissa_niter_4".parse::<LoraInit>().unwrap(), LoraInit::PissaNiter(4));
/// assert_eq!(LoraInit::Olora.to_string(), "olora");
/// assert!("pissa_niter_0".parse::<LoraInit>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoraInit {
    /// PEFT's default (`True`): A Kaiming-uniform (a = √5, U(±1/√d_in)), B = 0.
    #[default]
    Kaiming,
    /// A ~ N(0, (1/r)²) (std 1/r, as PEFT's `gaussian`), B = 0.
    Gaussian,
    /// PiSSA: the top-r singular triplets of the full SVD; the base becomes the residual.
    Pissa,
    /// PiSSA from a randomized SVD with this many power iterations (≥ 1).
    PissaNiter(usize),
    /// OLoRA: the first r columns of Q and rows of R of W's thin QR; the base becomes the
    /// residual.
    Olora,
}

impl FromStr for LoraInit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "init",
                s,
                "expected true (Kaiming, PEFT's default), gaussian, pissa, pissa_niter_N with \
                 N >= 1 power iterations, or olora",
            )
        };
        match s.to_ascii_lowercase().as_str() {
            "true" | "kaiming" | "default" => Ok(LoraInit::Kaiming),
            "gaussian" => Ok(LoraInit::Gaussian),
            "pissa" => Ok(LoraInit::Pissa),
            "olora" => Ok(LoraInit::Olora),
            other => match other.strip_prefix("pissa_niter_").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(LoraInit::PissaNiter(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for LoraInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoraInit::Kaiming => write!(f, "true"),
            LoraInit::Gaussian => write!(f, "gaussian"),
            LoraInit::Pissa => write!(f, "pissa"),
            LoraInit::PissaNiter(n) => write!(f, "pissa_niter_{n}"),
            LoraInit::Olora => write!(f, "olora"),
        }
    }
}

impl LoraInit {
    /// Whether it moves the principal part of the frozen weights into the adapter (PiSSA,
    /// OLoRA): the run trains on a residual base and saves converted adapters.
    pub fn mutates_base(self) -> bool {
        matches!(
            self,
            LoraInit::Pissa | LoraInit::PissaNiter(_) | LoraInit::Olora
        )
    }

    /// `init_lora_weights` as PEFT writes it in adapter_config.json: `true` or the string.
    /// (A PiSSA / OLoRA run saves converted adapters, whose config says `true`:
    /// [`converted_config`].)
    pub fn peft_value(self) -> serde_json::Value {
        match self {
            LoraInit::Kaiming => true.into(),
            other => other.to_string().into(),
        }
    }

    /// PiSSA / OLoRA need r ≤ min(d_in, d_out) of every adapted module (an SVD or thin QR has
    /// only that many vectors), and the converted adapter of rank 2r must be one this crate
    /// can load (2r ≤ the kernels' [`MAX_RANK`] and ≤ min(d_in, d_out) of every linear layer).
    pub(crate) fn validate(self, lora: &LoraConfig, model: &impl AdaptableModel) -> Result<()> {
        if !self.mutates_base() || lora.r == 0 {
            return Ok(());
        }
        let layer = lora
            .layers_to_transform
            .as_ref()
            .and_then(|l| l.first().copied())
            .unwrap_or(0);
        let linears = model.linear_layers();
        for &(linear, d_in, d_out) in &linears {
            let path = model.module_path(layer, linear);
            if !lora.target_modules.iter().any(|t| target_matches(t, &path)) {
                continue;
            }
            if lora.r > d_in.min(d_out) {
                return Err(Error::invalid(
                    "rank",
                    lora.r,
                    format!(
                        "--init {self} needs r <= min(d_in, d_out) = {} for {path} ({d_in} -> \
                         {d_out}): its {} has only that many vectors",
                        d_in.min(d_out),
                        if self == LoraInit::Olora { "QR" } else { "SVD" }
                    ),
                ));
            }
        }
        let min_dim = linears
            .iter()
            .map(|&(_, d_in, d_out)| d_in.min(d_out))
            .min()
            .unwrap_or(0);
        let limit = MAX_RANK.min(min_dim);
        if 2 * lora.r > limit {
            return Err(Error::invalid(
                "rank",
                lora.r,
                format!(
                    "--init {self} needs r <= {}: its adapters are saved converted to rank 2r \
                     (PEFT's path_initial_model_for_weight_conversion) so that they apply to \
                     the unmodified base, and this crate loads ranks up to {limit} for this \
                     model (the LoRA kernels allow {MAX_RANK}, and r <= min(d_in, d_out) = \
                     {min_dim} over its linear layers)",
                    limit / 2
                ),
            ));
        }
        Ok(())
    }
}

/// The initialisation an adapter_config.json's `init_lora_weights` names (absent, `true` and
/// `false` read as Kaiming: the saved weights replace it anyway). PiSSA / OLoRA adapters saved
/// without PEFT's conversion are refused: they apply only to the residual base.
pub(crate) fn from_peft_value(
    v: Option<&serde_json::Value>,
) -> std::result::Result<LoraInit, String> {
    let s = match v {
        None | Some(serde_json::Value::Bool(_)) | Some(serde_json::Value::Null) => {
            return Ok(LoraInit::Kaiming)
        }
        Some(serde_json::Value::String(s)) => s,
        Some(other) => return Err(format!("init_lora_weights = {other} is not a PEFT value")),
    };
    let parsed = s.parse::<LoraInit>().ok();
    let mutated = parsed.is_some_and(LoraInit::mutates_base)
        || ["corda", "lora_ga", "loftq"]
            .iter()
            .any(|p| s.to_ascii_lowercase().starts_with(p));
    if mutated {
        return Err(format!(
            "init_lora_weights = {s:?}: this adapter was saved without PEFT's conversion and \
             applies only to the {s} residual base, not to the model itself; save it again \
             with save_pretrained(..., path_initial_model_for_weight_conversion=...), as \
             `lora-wgpu train --init` does"
        ));
    }
    // Initialisations that leave the base as it is (eva, orthogonal, ...): the saved weights
    // are the whole adapter.
    Ok(parsed.unwrap_or(LoraInit::Kaiming))
}

/// Initial A and B for the Kaiming and Gaussian initialisations, in `layout`'s flat buffer
/// (seeded: the same `seed` gives the same values). PiSSA / OLoRA need the base: see
/// [`principal`].
pub fn initial_params(init: LoraInit, layout: &LoraLayout, seed: u64) -> Result<Vec<f32>> {
    match init {
        LoraInit::Kaiming => Ok(layout.init(seed)),
        LoraInit::Gaussian => {
            let mut rng = StdRng::seed_from_u64(seed);
            let std = 1.0 / layout.r as f64;
            let mut flat = vec![0.0f32; layout.len];
            for e in &layout.entries {
                for v in &mut flat[e.a_offset..e.a_offset + layout.r * e.d_in] {
                    *v = (std * normal(&mut rng)) as f32;
                }
            }
            Ok(flat)
        }
        other => Err(Error::invalid(
            "init",
            other,
            "needs the base weights: use lora::init::principal",
        )),
    }
}

/// A0 and B0 of every adapted module for PiSSA / OLoRA, in `layout`'s flat buffer: computed
/// from the frozen weights `host` (checkpoint names and layout) in f32, modules in parallel.
/// `scale` is the LoRA scale ([`LoraConfig::scale`]); `seed` seeds `pissa_niter_N`'s sketches.
pub fn principal(
    init: LoraInit,
    host: &HostWeights,
    layout: &LoraLayout,
    scale: f32,
    seed: u64,
) -> Result<Vec<f32>> {
    if !init.mutates_base() {
        return Err(Error::invalid(
            "init",
            init,
            "only pissa, pissa_niter_N and olora take their values from the base",
        ));
    }
    let r = layout.r;
    let parts = layout
        .entries
        .par_iter()
        .enumerate()
        .map(|(i, e)| {
            let w = weight(host, layout, e)?;
            let module_seed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            Ok(decompose(init, w.as_ref(), r, scale, module_seed))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut flat = vec![0.0f32; layout.len];
    for (e, (a, b)) in layout.entries.iter().zip(parts) {
        flat[e.a_offset..e.a_offset + a.len()].copy_from_slice(&a);
        flat[e.b_offset..e.b_offset + b.len()].copy_from_slice(&b);
    }
    Ok(flat)
}

/// Replace every adapted module's weight in `host` by its residual W − scale·B0·A0 (in the
/// checkpoint's layout), with A0, B0 from `a0b0` (`layout`'s flat buffer, as [`principal`]
/// returns it or [`split`] recovers it).
pub fn subtract_principal(
    host: &mut HostWeights,
    layout: &LoraLayout,
    scale: f32,
    a0b0: &[f32],
) -> Result<()> {
    expect_len("subtract_principal", layout, a0b0)?;
    let residuals = layout
        .entries
        .par_iter()
        .map(|e| {
            let (a0, b0) = entry_mats(layout, e, a0b0);
            let product = &b0 * &a0; // (d_out, d_in)
            let mut w = host_weight(host, e)?.clone();
            let (d_in, d_out) = (e.d_in, e.d_out);
            for o in 0..d_out {
                for i in 0..d_in {
                    let at = if layout.fan_in_fan_out {
                        i * d_out + o
                    } else {
                        o * d_in + i
                    };
                    w[at] -= scale * product[(o, i)];
                }
            }
            Ok((format!("{}.weight", e.path), w))
        })
        .collect::<Result<Vec<_>>>()?;
    for (name, w) in residuals {
        host.insert(name, w);
    }
    Ok(())
}

/// The frozen weights a PiSSA / OLoRA run trains on, on the GPU, and its A0, B0: `model`'s
/// host weights are read again from its source, decomposed ([`principal`]) and the adapted
/// modules' residuals uploaded (in `model`'s weight storage); every other weight is shared
/// with `model.transformer`. The adapted modules' weights are held twice on the GPU while
/// `model` lives (its originals and the residuals).
pub fn residual_model(
    gpu: &Gpu,
    model: &Model,
    lora: &LoraConfig,
    seed: u64,
) -> Result<(Transformer, Vec<f32>)> {
    let layout = LoraLayout::new(&model.config, lora)?;
    let host = model.host_weights()?;
    let a0b0 = principal(lora.init, &host, &layout, lora.scale(), seed)?;
    let transformer = residual_transformer(gpu, model, &layout, lora.scale(), &a0b0, host)?;
    Ok((transformer, a0b0))
}

/// `model.transformer` with the adapted modules' weights replaced by W − scale·B0·A0 from
/// `a0b0`, `host` being `model`'s host weights.
pub(crate) fn residual_transformer(
    gpu: &Gpu,
    model: &Model,
    layout: &LoraLayout,
    scale: f32,
    a0b0: &[f32],
    mut host: HostWeights,
) -> Result<Transformer> {
    subtract_principal(&mut host, layout, scale, a0b0)?;
    let sites: Vec<_> = layout.entries.iter().map(|e| (e.layer, e.linear)).collect();
    model.transformer.with_linear_weights(gpu, &host, &sites)
}

/// What a training run starts from ([`prepare_training`]).
pub(crate) struct TrainingStart {
    /// The frozen weights it trains on: `model.transformer`, or the residual (PiSSA / OLoRA).
    pub(crate) base: Transformer,
    /// The initial A and B (None: the graph's Kaiming init from the seed).
    pub(crate) params: Option<Vec<f32>>,
    /// A0, B0 for PiSSA / OLoRA: what saving converts with.
    pub(crate) principal: Option<Vec<f32>>,
}

/// The base, initial values and A0, B0 of a run with `lora` on `model`.
pub(crate) fn prepare_training(
    gpu: &Gpu,
    model: &Model,
    lora: &LoraConfig,
    seed: u64,
) -> Result<TrainingStart> {
    let plain = |params| TrainingStart {
        base: model.transformer.clone(),
        params,
        principal: None,
    };
    match lora.init {
        LoraInit::Kaiming => Ok(plain(None)),
        LoraInit::Gaussian => {
            let layout = LoraLayout::new(&model.config, lora)?;
            Ok(plain(Some(initial_params(lora.init, &layout, seed)?)))
        }
        _ => {
            let (base, a0b0) = residual_model(gpu, model, lora, seed)?;
            Ok(TrainingStart {
                base,
                params: Some(a0b0.clone()),
                principal: Some(a0b0),
            })
        }
    }
}

/// The config of a converted adapter (PEFT's conversion): rank 2r, lora_alpha doubled (×√2 with
/// rsLoRA: the same alpha / √r), `init_lora_weights = true`; the scale is unchanged.
pub fn converted_config(lora: &LoraConfig) -> LoraConfig {
    LoraConfig {
        r: 2 * lora.r,
        alpha: if lora.use_rslora {
            lora.alpha * std::f32::consts::SQRT_2
        } else {
            2.0 * lora.alpha
        },
        init: LoraInit::Kaiming,
        ..lora.clone()
    }
}

/// The adapter a PiSSA / OLoRA run saves: ΔW = B·A − B0·A0 as a rank-2r LoRA adapter
/// ([`converted_config`]) with A' = [A; A0] (rows) and B' = [B, −B0] (columns), for the
/// original base. `params` and `a0b0` are in `layout`'s flat buffer.
pub fn convert(
    lora: &LoraConfig,
    layout: &LoraLayout,
    model: &impl AdaptableModel,
    params: &[f32],
    a0b0: &[f32],
) -> Result<(LoraConfig, LoraLayout, Vec<f32>)> {
    expect_len("convert", layout, params)?;
    expect_len("convert", layout, a0b0)?;
    let cfg = converted_config(lora);
    let wide = LoraLayout::new(model, &cfg)?;
    let r = layout.r;
    let mut flat = vec![0.0f32; wide.len];
    for (e, w) in layout.entries.iter().zip(&wide.entries) {
        let a_len = r * e.d_in;
        flat[w.a_offset..w.a_offset + a_len].copy_from_slice(&params[e.a_offset..][..a_len]);
        flat[w.a_offset + a_len..w.a_offset + 2 * a_len]
            .copy_from_slice(&a0b0[e.a_offset..][..a_len]);
        for o in 0..e.d_out {
            let row = &mut flat[w.b_offset + o * 2 * r..][..2 * r];
            for k in 0..r {
                row[k] = params[e.b_offset + o * r + k];
                row[r + k] = -a0b0[e.b_offset + o * r + k];
            }
        }
    }
    Ok((cfg, wide, flat))
}

/// Undo [`convert`]: from a converted adapter (`wide`'s flat buffer) the trained A, B and the
/// initial A0, B0, each in `layout`'s (rank r) flat buffer.
pub fn split(layout: &LoraLayout, wide: &LoraLayout, flat: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    expect_len("split", wide, flat)?;
    let r = layout.r;
    let matches = wide.r == 2 * r
        && wide.entries.len() == layout.entries.len()
        && wide
            .entries
            .iter()
            .zip(&layout.entries)
            .all(|(w, e)| (&w.path, w.d_in, w.d_out) == (&e.path, e.d_in, e.d_out));
    if !matches {
        return Err(Error::shape(
            "lora::init::split",
            format!(
                "a converted adapter of rank {} over {} modules does not hold a rank-{r} \
                 adapter over these {} modules",
                wide.r,
                wide.entries.len(),
                layout.entries.len()
            ),
        ));
    }
    let mut params = vec![0.0f32; layout.len];
    let mut a0b0 = vec![0.0f32; layout.len];
    for (e, w) in layout.entries.iter().zip(&wide.entries) {
        let a_len = r * e.d_in;
        params[e.a_offset..][..a_len].copy_from_slice(&flat[w.a_offset..][..a_len]);
        a0b0[e.a_offset..][..a_len].copy_from_slice(&flat[w.a_offset + a_len..][..a_len]);
        for o in 0..e.d_out {
            let row = &flat[w.b_offset + o * 2 * r..][..2 * r];
            for k in 0..r {
                params[e.b_offset + o * r + k] = row[k];
                a0b0[e.b_offset + o * r + k] = -row[r + k];
            }
        }
    }
    Ok((params, a0b0))
}

fn expect_len(op: &'static str, layout: &LoraLayout, flat: &[f32]) -> Result<()> {
    if flat.len() != layout.len {
        return Err(Error::shape(
            op,
            format!("{} values given for a layout of {}", flat.len(), layout.len),
        ));
    }
    Ok(())
}

fn host_weight<'h>(host: &'h HostWeights, e: &LoraEntry) -> Result<&'h Vec<f32>> {
    let name = format!("{}.weight", e.path);
    let w = host
        .get(&name)
        .ok_or_else(|| Error::shape("lora::init", format!("missing tensor {name}")))?;
    if w.len() != e.d_in * e.d_out {
        return Err(Error::shape(
            "lora::init",
            format!(
                "{name} has {} values, expected {} x {}",
                w.len(),
                e.d_in,
                e.d_out
            ),
        ));
    }
    Ok(w)
}

/// An adapted module's weight as `nn.Linear` holds it, (d_out, d_in), whatever the checkpoint's
/// layout (GPT-2's Conv1D stores it transposed: PEFT's `fan_in_fan_out`).
fn weight(host: &HostWeights, layout: &LoraLayout, e: &LoraEntry) -> Result<Mat<f32>> {
    let w = host_weight(host, e)?;
    let (d_in, d_out) = (e.d_in, e.d_out);
    Ok(if layout.fan_in_fan_out {
        Mat::from_fn(d_out, d_in, |o, i| w[i * d_out + o])
    } else {
        Mat::from_fn(d_out, d_in, |o, i| w[o * d_in + i])
    })
}

/// An entry's A0 (r, d_in) and B0 (d_out, r) from a flat buffer.
fn entry_mats(layout: &LoraLayout, e: &LoraEntry, flat: &[f32]) -> (Mat<f32>, Mat<f32>) {
    let r = layout.r;
    let a = Mat::from_fn(r, e.d_in, |k, i| flat[e.a_offset + k * e.d_in + i]);
    let b = Mat::from_fn(e.d_out, r, |o, k| flat[e.b_offset + o * r + k]);
    (a, b)
}

/// A0 (r, d_in) and B0 (d_out, r), row-major, of one weight `w` (d_out, d_in).
fn decompose(
    init: LoraInit,
    w: MatRef<'_, f32>,
    r: usize,
    scale: f32,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let (d_out, d_in) = w.shape();
    let (mut a, mut b) = (vec![0.0f32; r * d_in], vec![0.0f32; d_out * r]);
    match init {
        LoraInit::Olora => {
            let qr = w.qr();
            let q = qr.compute_thin_Q();
            let rr = qr.thin_R();
            for k in 0..r {
                for i in 0..d_in {
                    a[k * d_in + i] = rr[(k, i)];
                }
                for o in 0..d_out {
                    b[o * r + k] = q[(o, k)];
                }
            }
        }
        _ => {
            let (u, s, v) = match init {
                LoraInit::PissaNiter(n) => svd_lowrank(w, r, n, seed),
                _ => top_svd(w, r),
            };
            for k in 0..r {
                let root = (s[k] / scale).sqrt();
                for i in 0..d_in {
                    a[k * d_in + i] = root * v[(i, k)];
                }
                for o in 0..d_out {
                    b[o * r + k] = u[(o, k)] * root;
                }
            }
        }
    }
    (a, b)
}

/// The top-`r` singular triplets of `w` from its full (thin) SVD: U (m, r), S (r), V (n, r),
/// singular values descending.
fn top_svd(w: MatRef<'_, f32>, r: usize) -> (Mat<f32>, Vec<f32>, Mat<f32>) {
    let svd = w
        .thin_svd()
        .expect("faer's SVD converges on finite f32 matrices");
    let s = svd.S().column_vector();
    let mut order: Vec<usize> = (0..s.nrows()).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let order = &order[..r];
    let (u, v) = (svd.U(), svd.V());
    (
        Mat::from_fn(u.nrows(), r, |i, k| u[(i, order[k])]),
        order.iter().map(|&k| s[k]).collect(),
        Mat::from_fn(v.nrows(), r, |i, k| v[(i, order[k])]),
    )
}

/// `torch.svd_lowrank(w, q, niter)` (Halko et al. 2009, algorithm 5.1 with 4.4's power
/// iterations), with the Gaussian sketch drawn from `seed`: U (m, q), S (q), V (n, q).
fn svd_lowrank(
    w: MatRef<'_, f32>,
    q: usize,
    niter: usize,
    seed: u64,
) -> (Mat<f32>, Vec<f32>, Mat<f32>) {
    let (m, n) = w.shape();
    if m < n {
        let (u, s, v) = svd_lowrank(w.transpose(), q, niter, seed);
        return (v, s, u);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let sketch = Mat::from_fn(n, q, |_, _| normal(&mut rng) as f32);
    let basis = |x: Mat<f32>| x.qr().compute_thin_Q();
    let mut basis_q = basis(w * &sketch);
    for _ in 0..niter {
        basis_q = basis(w.transpose() * &basis_q);
        basis_q = basis(w * &basis_q);
    }
    let small = basis_q.transpose() * w; // (q, n)
    let (u, s, v) = top_svd(small.as_ref(), q);
    (&basis_q * &u, s, v)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(m: usize, n: usize, seed: u64) -> Mat<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Mat::from_fn(m, n, |_, _| normal(&mut rng) as f32)
    }

    fn max_abs(x: MatRef<'_, f32>) -> f32 {
        let mut m = 0.0f32;
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                m = m.max(x[(i, j)].abs());
            }
        }
        m
    }

    /// B·A of `decompose`'s output.
    fn product(a: &[f32], b: &[f32], r: usize, d_out: usize, d_in: usize) -> Mat<f32> {
        let a = Mat::from_fn(r, d_in, |k, i| a[k * d_in + i]);
        let b = Mat::from_fn(d_out, r, |o, k| b[o * r + k]);
        &b * &a
    }

    #[test]
    fn strings_round_trip() {
        for s in ["true", "gaussian", "pissa", "pissa_niter_4", "olora"] {
            assert_eq!(s.parse::<LoraInit>().unwrap().to_string(), s);
        }
        for bad in [
            "pissa_niter_0",
            "pissa_niter_",
            "pissa_niter_x",
            "loftq",
            "",
        ] {
            let e = bad.parse::<LoraInit>().unwrap_err().to_string();
            assert!(e.contains("pissa_niter_N"), "{bad}: {e}");
        }
    }

    #[test]
    fn pissa_is_the_best_rank_r_approximation() {
        // Spectrum with a clear gap after r, so the truncation is well defined.
        let (m, n, r, scale) = (40, 24, 3, 2.0f32);
        let base = random(m, n, 1);
        let boost = random(m, r, 2) * random(r, n, 3);
        let w = &base + &boost * faer::Scale(4.0f32);
        let (a, b) = decompose(LoraInit::Pissa, w.as_ref(), r, scale, 0);
        let p = product(&a, &b, r, m, n) * faer::Scale(scale);
        // Eckart–Young: ||W − s·B0·A0||₂ = σ_{r+1}.
        let svd = w.thin_svd().unwrap();
        let s = svd.S().column_vector();
        let rest = (&w - &p).thin_svd().unwrap();
        let top = rest.S().column_vector()[0];
        assert!((top - s[r]).abs() <= 1e-4 * s[0], "{top} vs σ_r+1 {}", s[r]);
        // The randomized SVD converges to the same product.
        let (a2, b2) = decompose(LoraInit::PissaNiter(8), w.as_ref(), r, scale, 5);
        let p2 = product(&a2, &b2, r, m, n) * faer::Scale(scale);
        assert!(max_abs((&p - &p2).as_ref()) <= 1e-4 * max_abs(p.as_ref()));
        // Both orientations of the sketch path (m < n transposes).
        let wt = w.transpose().to_owned();
        let (a3, b3) = decompose(LoraInit::PissaNiter(8), wt.as_ref(), r, scale, 5);
        let p3 = product(&a3, &b3, r, n, m) * faer::Scale(scale);
        assert!(max_abs((p.transpose() - &p3).as_ref()) <= 1e-4 * max_abs(p.as_ref()));
    }

    #[test]
    fn olora_is_q_and_r() {
        let (m, n, r) = (20, 30, 4);
        let w = random(m, n, 7);
        let (a, b) = decompose(LoraInit::Olora, w.as_ref(), r, 2.0, 0);
        let bm = Mat::from_fn(m, r, |o, k| b[o * r + k]);
        // Q's columns are orthonormal, A0 = Q_rᵀ W, and R is upper triangular.
        let gram = bm.transpose() * &bm;
        let id = Mat::<f32>::identity(r, r);
        assert!(max_abs((&gram - &id).as_ref()) < 1e-5);
        let qtw = bm.transpose() * &w;
        let am = Mat::from_fn(r, n, |k, i| a[k * n + i]);
        assert!(max_abs((&qtw - &am).as_ref()) < 1e-4);
        for k in 0..r {
            for i in 0..k {
                assert!(a[k * n + i].abs() < 1e-5);
            }
        }
    }
}
