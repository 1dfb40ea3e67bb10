//! One small launcher per WGSL kernel. Each checks its operands' shapes, mirrors its shader's
//! `Params` struct, and returns [`Dispatch`](crate::gpu::Dispatch)es that are built once and
//! replayed by a [`Recording`](crate::gpu::Recording) or [`Gpu::run`](crate::gpu::Gpu::run).
//!
//! A kernel is one hop: `shaders/<op>.wgsl`, its launcher and its definitions here in
//! `kernels::<op>` (each a [`KernelDef`]: module, entry point, bindings, `Params` size; listed in
//! the module's `KERNELS` and in [`all`]), its CPU reference in `cpu::<op>`, and its tests,
//! named `<op>_...`, in `tests/` (`kernels.rs`, `gpt2_ops.rs`, `llama_ops.rs`, `matmul.rs`, `qmatmul.rs`,
//! and `generate.rs` for `decode`): `cargo test <op>` finds them. Which kernel of a family runs is the [`Gpu`](crate::gpu::Gpu)'s
//! [`Variants`], chosen once when it is made.
//!
//! Signatures follow llm.c: outputs first, then inputs, then the shape.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod dora;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod lora;
pub mod matmul;
pub mod merge;
pub mod peak;
pub mod philox;
pub mod qmatmul;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
pub mod variants;

pub use variants::Variants;

use crate::error::{Error, Result};
use crate::gpu::{KernelDef, Tensor};

/// The kernels of every file, by family: what the naga validation test walks.
pub const FAMILIES: [&[&KernelDef]; 18] = [
    matmul::KERNELS,
    lora::KERNELS,
    dropout::KERNELS,
    adamw::KERNELS,
    reduce::KERNELS,
    merge::KERNELS,
    peak::KERNELS,
    embedding::KERNELS,
    layernorm::KERNELS,
    elementwise::KERNELS,
    attention::KERNELS,
    cross_entropy::KERNELS,
    decode::KERNELS,
    rmsnorm::KERNELS,
    rope::KERNELS,
    swiglu::KERNELS,
    dora::KERNELS,
    qmatmul::KERNELS,
];

/// Every kernel this crate launches.
pub fn all() -> impl Iterator<Item = &'static KernelDef> {
    FAMILIES.into_iter().flatten().copied()
}

/// `philox.wgsl`, prepended to the modules that draw dropout masks.
const PHILOX: &str = include_str!("../../shaders/philox.wgsl");

/// `src` with `enable f16;` and each `(from, to)` replacement, where `from` occurs exactly
/// once (the files keep their f16-able reads behind one declaration and one accessor).
fn f16_build(src: String, replacements: &[(&str, &str)]) -> String {
    let mut out = format!("enable f16;\n{src}");
    for (from, to) in replacements {
        assert_eq!(out.matches(from).count(), 1, "f16 build: `{from}`");
        out = out.replacen(from, to, 1);
    }
    out
}

/// Check that `t` holds exactly `len` elements.
pub(crate) fn expect_len(op: &'static str, what: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(Error::shape(
            op,
            format!(
                "{what} ({}) has {} elements (shape {:?}), expected {len}",
                t.name(),
                t.len(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// `n.div_ceil(d)` as the u32 a dispatch needs.
pub(crate) fn groups(n: usize, d: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(d)).map_err(|_| {
        Error::shape(
            "dispatch",
            format!("{n} elements is too many for one dispatch"),
        )
    })
}

/// A size as the u32 a WGSL `Params` field holds.
pub(crate) fn u32_of(name: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(name, v, "must fit in 32 bits"))
}

#[cfg(test)]
mod tests {
    //! Every shader parses and validates with naga; every kernel's binding tables (buffers and
    //! storage textures) match what its entry point really uses; every kernel's `Params` size
    //! is its WGSL struct's.

    use std::collections::{HashMap, HashSet};

    use crate::gpu::{Access, ShaderDef};

    fn module(shader: &ShaderDef) -> (naga::Module, naga::valid::ModuleInfo) {
        let src = shader.source();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
        (module, info)
    }

    /// Each module of [`super::all`] parsed once, by name.
    fn modules() -> HashMap<&'static str, (naga::Module, naga::valid::ModuleInfo)> {
        let mut out = HashMap::new();
        for kernel in super::all() {
            out.entry(kernel.shader.name)
                .or_insert_with(|| module(kernel.shader));
        }
        out
    }

    #[test]
    fn kernel_names_are_unique() {
        let mut seen = HashSet::new();
        for kernel in super::all() {
            assert!(seen.insert(kernel.name()), "{} listed twice", kernel.name());
        }
    }

    #[test]
    fn shaders_validate_and_params_match() {
        let modules = modules();
        for kernel in super::all() {
            let (module, _) = &modules[kernel.shader.name];
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let (handle, _) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some("Params"))
                .unwrap_or_else(|| panic!("{} has no struct Params", kernel.shader.name));
            let wgsl = layouter[handle].size as usize;
            assert_eq!(wgsl, kernel.params_size, "{}: Params size", kernel.name());
            assert_eq!(
                wgsl % 16,
                0,
                "{}: uniform size must be a multiple of 16",
                kernel.name()
            );
        }
    }

    #[test]
    fn binding_tables_match_entry_points() {
        let modules = modules();
        for kernel in super::all() {
            let (module, info) = &modules[kernel.shader.name];
            let ep = module
                .entry_points
                .iter()
                .position(|e| e.name == kernel.entry)
                .unwrap_or_else(|| panic!("{} not found", kernel.name()));
            let uses = info.get_entry_point(ep);
            let mut used = Vec::new();
            let mut used_textures = Vec::new();
            for (h, var) in module.global_variables.iter() {
                let (Some(binding), false) = (&var.binding, uses[h].is_empty()) else {
                    continue;
                };
                match var.space {
                    naga::AddressSpace::Uniform => {
                        assert_eq!(binding.binding, 0, "{}", kernel.name())
                    }
                    naga::AddressSpace::Storage { access } => {
                        let want = if access.contains(naga::StorageAccess::STORE) {
                            Access::ReadWrite
                        } else {
                            Access::Read
                        };
                        used.push((binding.binding, want));
                    }
                    naga::AddressSpace::Handle => {
                        // Storage textures: `Read` is read-only, `ReadWrite` write-only.
                        let naga::TypeInner::Image {
                            class: naga::ImageClass::Storage { access, .. },
                            ..
                        } = module.types[var.ty].inner
                        else {
                            continue;
                        };
                        let want = if access.contains(naga::StorageAccess::STORE) {
                            Access::ReadWrite
                        } else {
                            Access::Read
                        };
                        used_textures.push((binding.binding, want));
                    }
                    _ => {}
                }
            }
            let mut table = kernel.bindings.to_vec();
            table.sort_by_key(|b| b.0);
            used.sort_by_key(|b| b.0);
            assert_eq!(
                used,
                table,
                "{}: storage bindings used vs declared",
                kernel.name()
            );
            let mut textures = kernel.textures.to_vec();
            textures.sort_by_key(|b| b.0);
            used_textures.sort_by_key(|b| b.0);
            assert_eq!(
                used_textures,
                textures,
                "{}: storage textures used vs declared",
                kernel.name()
            );
        }
    }
}
