//! LoRA configuration, PEFT's target matching, the flat parameter layout, and PEFT adapter I/O.

pub mod gguf;
pub mod init;
mod params;
pub mod peft;

use std::path::{Path, PathBuf};

pub use init::LoraInit;
pub use params::{ModuleParams, ParamTable};

use crate::error::{Error, Result};
use crate::gpu::VIEW_ALIGN;
use crate::kernels::lora::MAX_RANK;

/// A LoRA adapter's hyperparameters, named as in PEFT's `LoraConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub r: usize,
    /// lora_alpha; the update is scaled by alpha / r (alpha / √r with rsLoRA).
    pub alpha: f32,
    /// Dropout on the adapter's input, in [0, 1).
    pub dropout: f32,
    /// PEFT target names: a module matches when its path equals a name or ends with "." + name;
    /// "all-linear" targets every linear layer of the blocks.
    pub target_modules: Vec<String>,
    /// Only these block indices (None: all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// Scale by alpha / √r instead of alpha / r.
    pub use_rslora: bool,
    /// DoRA (PEFT's `use_dora`): each adapted layer's output is rescaled per output feature by
    /// a trainable magnitude over the norm of W + scale · B A (see [`crate::kernels::dora`]).
    pub use_dora: bool,
    /// How A and B start (PEFT's `init_lora_weights`; [`LoraInit`]).
    pub init: LoraInit,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["c_attn".into(), "c_proj".into()],
            layers_to_transform: None,
            use_rslora: false,
            use_dora: false,
            init: LoraInit::Kaiming,
        }
    }
}

/// What LoRA needs to know of a model: how many blocks it has and the linear layers of a block.
/// A model family's config implements it ([`Gpt2Config`](crate::model::Gpt2Config) for
/// GPT-2), so the layout, PEFT I/O and the parameter table take any family.
pub trait AdaptableModel {
    /// Blocks (transformer layers).
    fn num_layers(&self) -> usize;
    /// The linear layers of a block, in the order the block applies them, each with its
    /// (in, out) features.
    fn linear_layers(&self) -> Vec<(Linear, usize, usize)>;
    /// Parameters of the base model.
    fn base_parameters(&self) -> usize;
    /// The checkpoint's name of linear layer `linear` of block `layer`, without `.weight`
    /// (`h.3.attn.c_attn`, `model.layers.3.self_attn.q_proj`): what PEFT's targets match and
    /// what the merge looks up in the host weights.
    fn module_path(&self, layer: usize, linear: Linear) -> String;
    /// What PEFT puts before a module path in an adapter's tensor names
    /// (`base_model.model.transformer.` for GPT-2, `base_model.model.` for Llama-family models).
    fn peft_prefix(&self) -> &'static str;
    /// Whether the checkpoint stores linear weights `[in, out]` (GPT-2's Conv1D: PEFT's
    /// `fan_in_fan_out = true`) rather than `[out, in]` (`nn.Linear`).
    fn fan_in_fan_out(&self) -> bool;
    /// Whether linear layer `linear` has a bias.
    fn linear_bias(&self, linear: Linear) -> bool;
}

/// The linear layers of a block, by the name their checkpoint gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Linear {
    /// GPT-2's attn.c_attn: C -> 3C (q, k, v fused)
    CAttn,
    /// GPT-2's attn.c_proj: C -> C
    AttnCProj,
    /// GPT-2's mlp.c_fc: C -> 4C
    CFc,
    /// GPT-2's mlp.c_proj: 4C -> C
    MlpCProj,
    /// Llama's self_attn.q_proj: C -> heads · head_dim
    QProj,
    /// Llama's self_attn.k_proj: C -> kv heads · head_dim
    KProj,
    /// Llama's self_attn.v_proj: C -> kv heads · head_dim
    VProj,
    /// Llama's self_attn.o_proj: heads · head_dim -> C
    OProj,
    /// Llama's mlp.gate_proj: C -> intermediate
    GateProj,
    /// Llama's mlp.up_proj: C -> intermediate
    UpProj,
    /// Llama's mlp.down_proj: intermediate -> C
    DownProj,
}

impl Linear {
    /// The module's path inside its block, as the checkpoint names it (`attn.c_attn`,
    /// `self_attn.q_proj`, ...).
    pub fn suffix(self) -> &'static str {
        match self {
            Linear::CAttn => "attn.c_attn",
            Linear::AttnCProj => "attn.c_proj",
            Linear::CFc => "mlp.c_fc",
            Linear::MlpCProj => "mlp.c_proj",
            Linear::QProj => "self_attn.q_proj",
            Linear::KProj => "self_attn.k_proj",
            Linear::VProj => "self_attn.v_proj",
            Linear::OProj => "self_attn.o_proj",
            Linear::GateProj => "mlp.gate_proj",
            Linear::UpProj => "mlp.up_proj",
            Linear::DownProj => "mlp.down_proj",
        }
    }
}

/// PEFT's rule: `target` matches `path` when equal or when `path` ends with "." + target.
pub fn target_matches(target: &str, path: &str) -> bool {
    target == "all-linear" || path == target || path.ends_with(&format!(".{target}"))
}

impl LoraConfig {
    /// alpha / r, or alpha / √r with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    /// Check the hyperparameters against the model.
    pub fn validate(&self, model: &impl AdaptableModel) -> Result<()> {
        self.init.validate(self, model)?;
        if self.use_dora && self.init.mutates_base() {
            return Err(Error::invalid(
                "init",
                self.init,
                "is not supported with DoRA: use the default init (true) or gaussian with --dora",
            ));
        }
        let min_dim = model
            .linear_layers()
            .iter()
            .map(|&(_, d_in, d_out)| d_in.min(d_out))
            .min()
            .unwrap_or(0);
        if self.r == 0 || self.r > MAX_RANK || self.r > min_dim {
            return Err(Error::invalid(
                "rank",
                self.r,
                format!(
                    "must be in 1..={} for this model (r <= min(d_in, d_out) = {min_dim} over its \
                     linear layers, and the LoRA kernels allow at most {MAX_RANK})",
                    MAX_RANK.min(min_dim)
                ),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(Error::invalid("alpha", self.alpha, "must be > 0"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("dropout", self.dropout, "must be in [0, 1)"));
        }
        if let Some(layers) = &self.layers_to_transform {
            let n_layer = model.num_layers();
            if let Some(&bad) = layers.iter().find(|&&l| l >= n_layer) {
                return Err(Error::invalid(
                    "layers_to_transform",
                    bad,
                    format!("the model has layers 0..{n_layer}"),
                ));
            }
        }
        Ok(())
    }
}

/// One adapted module and where its A and B live in the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraEntry {
    /// Block index.
    pub layer: usize,
    /// Which linear layer.
    pub linear: Linear,
    /// Input features (A is (r, d_in)).
    pub d_in: usize,
    /// Output features (B is (d_out, r)).
    pub d_out: usize,
    /// Element offset of A (in the A group, before [`LoraLayout::b_start`]).
    pub a_offset: usize,
    /// Element offset of B (in the B group, from [`LoraLayout::b_start`] on).
    pub b_offset: usize,
    /// Element offset of DoRA's magnitude vector (d_out,), when the adapter uses DoRA.
    pub m_offset: Option<usize>,
    /// The module's path in the checkpoint ([`AdaptableModel::module_path`]), e.g.
    /// `h.3.attn.c_attn` or `model.layers.3.self_attn.q_proj`.
    pub path: String,
}

/// Where every adapted module's parameters sit in one flat buffer, group-major: every A
/// (modules in model order), then every B (same order), each piece starting at a [`VIEW_ALIGN`]
/// boundary. Grads and AdamW moments share this layout, so an optimizer setting per group
/// (LoRA+'s learning rate of B) is one split point, [`LoraLayout::b_start`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoraLayout {
    /// Rank.
    pub r: usize,
    /// Adapted modules in model order.
    pub entries: Vec<LoraEntry>,
    /// First element of the B group: every element from here on is in PEFT's LoRA+ group B
    /// (`create_loraplus_optimizer`'s `groupB`): the B matrices and any 1-D parameters after
    /// them. Everything before it is group A. A multiple of [`VIEW_ALIGN`] / 4.
    pub b_start: usize,
    /// Elements in the flat buffer, padding included.
    pub len: usize,
    /// What PEFT puts before a module path in the adapter's tensor names
    /// ([`AdaptableModel::peft_prefix`]).
    pub peft_prefix: &'static str,
    /// PEFT's `fan_in_fan_out` for this model ([`AdaptableModel::fan_in_fan_out`]).
    pub fan_in_fan_out: bool,
}

impl LoraLayout {
    /// Resolve `lora.target_modules` against the model's module names (PEFT's matching).
    /// A config that matches nothing is an error listing the names that exist.
    pub fn new(model: &impl AdaptableModel, lora: &LoraConfig) -> Result<Self> {
        lora.validate(model)?;
        let linears = model.linear_layers();
        let align = (VIEW_ALIGN / 4) as usize;
        let mut entries = Vec::new();
        for layer in 0..model.num_layers() {
            if let Some(ls) = &lora.layers_to_transform {
                if !ls.contains(&layer) {
                    continue;
                }
            }
            for &(linear, d_in, d_out) in &linears {
                let path = model.module_path(layer, linear);
                if !lora.target_modules.iter().any(|t| target_matches(t, &path)) {
                    continue;
                }
                // Offsets are assigned below, group by group.
                entries.push(LoraEntry {
                    layer,
                    linear,
                    d_in,
                    d_out,
                    a_offset: 0,
                    b_offset: 0,
                    m_offset: None,
                    path,
                });
            }
        }
        if entries.is_empty() {
            return Err(Error::invalid(
                "target_modules",
                format!("{:?}", lora.target_modules),
                format!(
                    "matches no module; the model's linear layers are {} (a target names a \
                     path or its last parts, e.g. {}), or use all-linear",
                    linears
                        .iter()
                        .map(|(l, ..)| model.module_path(0, *l).replacen(".0.", ".N.", 1))
                        .collect::<Vec<_>>()
                        .join(", "),
                    linears
                        .iter()
                        .filter_map(|(l, ..)| l.suffix().rsplit('.').next())
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ));
        }
        // Group-major: all A, then all B (LoRA+'s groups A and B), then DoRA's 1-D magnitudes,
        // which PEFT's LoRA+ also puts in group B (decayed like the rest).
        let r = lora.r;
        let mut len = 0usize;
        let mut take = |n: usize| {
            let at = len;
            len += n.div_ceil(align) * align;
            at
        };
        for e in &mut entries {
            e.a_offset = take(r * e.d_in);
        }
        let b_start = take(0);
        for e in &mut entries {
            e.b_offset = take(e.d_out * r);
        }
        if lora.use_dora {
            for e in &mut entries {
                e.m_offset = Some(take(e.d_out));
            }
        }
        Ok(LoraLayout {
            r,
            entries,
            b_start,
            len,
            peft_prefix: model.peft_prefix(),
            fan_in_fan_out: model.fan_in_fan_out(),
        })
    }

    /// Trainable parameters (padding excluded).
    pub fn num_parameters(&self) -> usize {
        self.entries
            .iter()
            .map(|e| self.r * (e.d_in + e.d_out) + e.m_offset.map_or(0, |_| e.d_out))
            .sum()
    }

    /// Initial values as PEFT sets them: A Kaiming-uniform (a = √5, so U(±1/√d_in)), B zero.
    /// DoRA's magnitudes are left zero: they are the weight's norms, which the training graph
    /// computes on the GPU ([`crate::kernels::dora::DoraNorm`]).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let mut flat = vec![0.0f32; self.len];
        for e in &self.entries {
            let bound = 1.0 / (e.d_in as f32).sqrt();
            for v in &mut flat[e.a_offset..e.a_offset + self.r * e.d_in] {
                *v = rng.random_range(-bound..bound);
            }
        }
        flat
    }
}

/// Parse an adapter argument, `DIR` or `DIR:SCALE` (the CLI's `--adapter`), into the PEFT adapter
/// directory and its scale (1 without one).
///
/// The string is split at its last `:`. When the part after it is a number, that is the scale.
/// When it is not, the whole string is the directory if it names an existing one (a directory
/// name may contain `:`) or starts with a drive letter (`C:\runs\a`, `C:runs`); otherwise it
/// is an error saying the scale is not a number. The directory must not be empty and the scale
/// must be finite.
///
/// ```
/// use lora_wgpu::lora::parse_adapter_spec;
///
/// assert_eq!(parse_adapter_spec("runs/a:0.5").unwrap(), ("runs/a".into(), 0.5));
/// assert_eq!(parse_adapter_spec("runs/a").unwrap(), ("runs/a".into(), 1.0));
/// assert!(parse_adapter_spec("runs/a:abc").is_err());
/// ```
pub fn parse_adapter_spec(arg: &str) -> Result<(PathBuf, f32)> {
    let (dir, scale) = match arg.rsplit_once(':') {
        None => (arg, 1.0),
        Some((dir, s)) => match s.parse::<f32>() {
            Ok(v) => (dir, v),
            Err(_) if is_drive_letter(dir) || Path::new(arg).is_dir() => (arg, 1.0),
            Err(_) => {
                return Err(Error::invalid(
                    "adapter",
                    arg,
                    format!(
                        "the scale `{s}` is not a number (and no directory {arg} exists); \
                         expected DIR or DIR:SCALE with SCALE a number like 0.5"
                    ),
                ))
            }
        },
    };
    if dir.is_empty() {
        return Err(Error::invalid(
            "adapter",
            arg,
            "expected DIR or DIR:SCALE (a PEFT adapter directory, optionally with a scale)",
        ));
    }
    if !scale.is_finite() {
        return Err(Error::invalid("adapter scale", scale, "must be finite"));
    }
    Ok((PathBuf::from(dir), scale))
}

/// Whether `prefix` (what precedes a path's only `:`) is a Windows drive letter.
fn is_drive_letter(prefix: &str) -> bool {
    prefix.len() == 1 && prefix.bytes().all(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs() {
        let p = |s| parse_adapter_spec(s).unwrap();
        assert_eq!(p("runs/a"), ("runs/a".into(), 1.0));
        assert_eq!(p("runs/a:0.5"), ("runs/a".into(), 0.5));
        assert_eq!(p("runs/a:-1"), ("runs/a".into(), -1.0));
        assert_eq!(p("C:\\runs\\a"), ("C:\\runs\\a".into(), 1.0));
        assert_eq!(p("C:\\runs\\a:2"), ("C:\\runs\\a".into(), 2.0));
        assert_eq!(p("C:runs"), ("C:runs".into(), 1.0));
        assert!(parse_adapter_spec("").is_err());
        assert!(parse_adapter_spec(":0.5").is_err());
        assert!(parse_adapter_spec("a:inf").is_err());
        let e = parse_adapter_spec("out:abc").unwrap_err().to_string();
        assert!(
            e.contains("`abc` is not a number") && e.contains("DIR:SCALE"),
            "{e}"
        );
        assert!(parse_adapter_spec("C:\\runs\\a:abc").is_err());
        // An existing directory whose name has a ':' in it.
        let dir = std::env::temp_dir().join(format!("lora-wgpu-a:b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = dir.to_str().unwrap();
        assert_eq!(p(s), (dir.clone(), 1.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
