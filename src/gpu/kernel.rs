//! What a kernel says about itself: its WGSL module, entry point, bindings and uniform size.
//!
//! The definitions themselves live beside their launchers (`kernels::<op>`); this module only
//! gives them a type, so the pipeline cache can build and key pipelines without knowing any
//! kernel by name.

/// How a kernel accesses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>` (for a storage texture: `read`).
    Read,
    /// `var<storage, read_write>` (for a storage texture: `write`).
    ReadWrite,
}

/// Texel format of every storage texture a kernel binds (packed operands, 4 floats a texel).
pub const TEXTURE_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba32Float;

/// Where a shader module's WGSL comes from.
#[derive(Clone, Copy)]
pub enum Source {
    /// A file's text as it is (`include_str!`).
    Text(&'static str),
    /// Built from files at first use: shared snippets prepended, or a build of a file with
    /// f16 storage, cooperative matrices or subgroups.
    Built(fn() -> String),
}

/// One WGSL module. Its `name` keys the shader-module cache, so two definitions with the same
/// name must have the same source.
#[derive(Clone, Copy)]
pub struct ShaderDef {
    /// The file in `shaders/`, and the build when it is not the file as it is
    /// (`matmul.wgsl (f16 B)`); used in messages.
    pub name: &'static str,
    /// The WGSL text.
    pub source: Source,
    /// The module's kernels keep every access in bounds by construction (indices are clamped or
    /// guarded, and launchers check buffer lengths), so naga's per-access bounds checks are left
    /// out. On lavapipe they cost about 20% of matmul time.
    pub trusted: bool,
}

impl ShaderDef {
    /// The module `name`, read from `text` as is, with bounds checks.
    pub const fn text(name: &'static str, text: &'static str) -> Self {
        ShaderDef {
            name,
            source: Source::Text(text),
            trusted: false,
        }
    }

    /// The module `name`, built by `build`, with bounds checks.
    pub const fn built(name: &'static str, build: fn() -> String) -> Self {
        ShaderDef {
            name,
            source: Source::Built(build),
            trusted: false,
        }
    }

    /// This module without naga's bounds checks (see [`ShaderDef::trusted`]).
    pub const fn trusted(self) -> Self {
        ShaderDef {
            trusted: true,
            ..self
        }
    }

    /// The complete WGSL text.
    pub fn source(&self) -> String {
        match self.source {
            Source::Text(t) => t.to_string(),
            Source::Built(f) => f(),
        }
    }
}

impl std::fmt::Debug for ShaderDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// One compute kernel: a module's entry point, its bindings and the size of its uniform
/// `Params` (always binding 0). The pipeline cache keys on the module name, the entry point and
/// the override constants.
#[derive(Clone, Copy)]
pub struct KernelDef {
    /// The module holding the entry point.
    pub shader: &'static ShaderDef,
    /// WGSL entry point name.
    pub entry: &'static str,
    /// Storage-buffer bindings `(binding, access)` in the order launchers pass tensors.
    pub bindings: &'static [(u32, Access)],
    /// Storage-texture bindings `(binding, access)` ([`TEXTURE_FORMAT`], 2D; `Read` is
    /// read-only, `ReadWrite` write-only), in the order launchers pass texture views.
    pub textures: &'static [(u32, Access)],
    /// The binding that holds f16 elements (an f16 build's weight), if any; every other binding
    /// holds 32-bit ones.
    pub f16_binding: Option<u32>,
    /// The binding that holds a quantized weight ([`Dtype::Quant`](super::Dtype::Quant)), if
    /// any.
    pub quant_binding: Option<u32>,
    /// Size in bytes of the Rust mirror of the WGSL `Params` struct.
    pub params_size: usize,
}

impl KernelDef {
    /// Entry point `entry` of `shader`, binding `bindings`, with a uniform of `params_size`
    /// bytes; no textures, no f16 binding.
    pub const fn new(
        shader: &'static ShaderDef,
        entry: &'static str,
        bindings: &'static [(u32, Access)],
        params_size: usize,
    ) -> Self {
        KernelDef {
            shader,
            entry,
            bindings,
            textures: &[],
            f16_binding: None,
            quant_binding: None,
            params_size,
        }
    }

    /// This kernel, also binding the storage textures `textures`.
    pub const fn textures(self, textures: &'static [(u32, Access)]) -> Self {
        KernelDef { textures, ..self }
    }

    /// This kernel, reading `binding` as f16.
    pub const fn f16(self, binding: u32) -> Self {
        KernelDef {
            f16_binding: Some(binding),
            ..self
        }
    }

    /// This kernel, reading `binding` as a quantized weight.
    pub const fn quant(self, binding: u32) -> Self {
        KernelDef {
            quant_binding: Some(binding),
            ..self
        }
    }

    /// This kernel's entry point in another module (an f16 or cooperative-matrix build of the
    /// same file).
    pub const fn in_shader(self, shader: &'static ShaderDef) -> Self {
        KernelDef { shader, ..self }
    }

    /// `module::entry`, for messages.
    pub fn name(&self) -> String {
        format!("{}::{}", self.shader.name, self.entry)
    }
}

/// Kernels are the same when they are the same entry point of the same module.
impl PartialEq for KernelDef {
    fn eq(&self, other: &Self) -> bool {
        self.shader.name == other.shader.name && self.entry == other.entry
    }
}

impl Eq for KernelDef {}

impl std::fmt::Debug for KernelDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.shader.name, self.entry)
    }
}
