//! How many parameters an adapter trains, per kind of linear layer: the `info` command's table
//! (PEFT's `print_trainable_parameters`, broken down by module).

use super::{AdaptableModel, Linear, LoraConfig, LoraLayout};
use crate::error::Result;

/// One row of a [`ParamTable`]: one kind of linear layer over all blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleParams {
    /// The layer.
    pub linear: Linear,
    /// Blocks in which it is adapted (out of [`ParamTable::n_layer`]).
    pub adapted: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// LoRA parameters over the adapted blocks: adapted · r · (d_in + d_out), plus adapted ·
    /// d_out DoRA magnitudes.
    pub trainable: usize,
    /// Frozen weights and biases of the adapted blocks: adapted · (d_in · d_out (+ d_out with
    /// a bias)).
    pub frozen: usize,
}

impl ModuleParams {
    /// Trainable parameters as a percentage of the frozen ones; `None` when not adapted.
    pub fn percent(&self) -> Option<f64> {
        (self.adapted > 0).then(|| 100.0 * self.trainable as f64 / self.frozen as f64)
    }

    /// How many times fewer parameters are trained than frozen; `None` when not adapted.
    pub fn reduction(&self) -> Option<f64> {
        (self.adapted > 0).then(|| self.frozen as f64 / self.trainable as f64)
    }
}

/// The trainable parameters of a LoRA configuration on a model, per module and in total.
///
/// ```
/// use lora_wgpu::lora::{LoraConfig, ParamTable};
/// use lora_wgpu::model::Gpt2Config;
///
/// # fn main() -> lora_wgpu::Result<()> {
/// let table = ParamTable::new(&Gpt2Config::named("gpt2")?, &LoraConfig::default())?;
/// assert_eq!(table.trainable, 811_008); // r = 8 on c_attn and both c_proj
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTable {
    /// One row per linear layer of a block, in the order the block applies them.
    pub rows: Vec<ModuleParams>,
    /// Blocks of the model.
    pub n_layer: usize,
    /// LoRA parameters in total.
    pub trainable: usize,
    /// The model's parameters plus the LoRA ones.
    pub all: usize,
}

impl ParamTable {
    /// Count the parameters `lora` adds to a model of shape `cfg` (checked as
    /// [`LoraLayout::new`] checks it).
    pub fn new(model: &impl AdaptableModel, lora: &LoraConfig) -> Result<Self> {
        let layout = LoraLayout::new(model, lora)?;
        let rows: Vec<ModuleParams> = model
            .linear_layers()
            .into_iter()
            .map(|(linear, d_in, d_out)| {
                let adapted = layout.entries.iter().filter(|e| e.linear == linear).count();
                ModuleParams {
                    linear,
                    adapted,
                    d_in,
                    d_out,
                    trainable: adapted
                        * (lora.r * (d_in + d_out) + usize::from(lora.use_dora) * d_out),
                    frozen: adapted
                        * (d_in * d_out + usize::from(model.linear_bias(linear)) * d_out),
                }
            })
            .collect();
        let trainable = rows.iter().map(|r| r.trainable).sum();
        Ok(ParamTable {
            rows,
            n_layer: model.num_layers(),
            trainable,
            all: model.base_parameters() + trainable,
        })
    }

    /// Trainable parameters as a percentage of all.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable as f64 / self.all as f64
    }

    /// Bytes of the adapter file (f32 values).
    pub fn adapter_bytes(&self) -> u64 {
        4 * self.trainable as u64
    }

    /// Bytes of the optimizer state while training: AdamW's m and v and the gradients.
    pub fn optimizer_bytes(&self) -> u64 {
        12 * self.trainable as u64
    }
}
