//! One small launcher per WGSL kernel. Each checks its operands' shapes, mirrors its shader's
//! `Params` struct, and returns [`Dispatch`](crate::gpu::Dispatch)es that are built once and
//! replayed by a [`Recording`](crate::gpu::Recording) or [`Gpu::run`](crate::gpu::Gpu::run).
//!
//! Signatures follow llm.c: outputs first, then inputs, then the shape.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod lora;
pub mod matmul;
pub mod merge;
pub mod peak;
pub mod reduce;

use crate::error::{Error, Result};
use crate::gpu::Tensor;

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
    //! Every shader parses and validates with naga; every kernel's binding table matches what
    //! its entry point really uses; every Rust `Params` has its WGSL struct's size.

    use crate::gpu::{Access, Kernel, ShaderFile};

    fn module(file: ShaderFile) -> (naga::Module, naga::valid::ModuleInfo) {
        let src = file.source();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", file.name(), e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", file.name(), e.emit_to_string(&src)));
        (module, info)
    }

    fn params_size(file: ShaderFile) -> usize {
        use std::mem::size_of;
        match file {
            ShaderFile::Matmul
            | ShaderFile::MatmulF16
            | ShaderFile::MatmulCoop8
            | ShaderFile::MatmulCoop16
            | ShaderFile::MatmulCoop8F16
            | ShaderFile::MatmulCoop16F16
            | ShaderFile::MatmulImageSubgroup => size_of::<super::matmul::Params>(),
            ShaderFile::Lora => size_of::<super::lora::Params>(),
            ShaderFile::Dropout => size_of::<super::dropout::Params>(),
            ShaderFile::Adamw => size_of::<super::adamw::Params>(),
            ShaderFile::Reduce => size_of::<super::reduce::Params>(),
            ShaderFile::Merge => size_of::<super::merge::Params>(),
            ShaderFile::Peak => size_of::<super::peak::Params>(),
            ShaderFile::Embedding => size_of::<super::embedding::Params>(),
            ShaderFile::Layernorm => size_of::<super::layernorm::Params>(),
            ShaderFile::Elementwise => size_of::<super::elementwise::Params>(),
            ShaderFile::Attention => size_of::<super::attention::Params>(),
            ShaderFile::CrossEntropy => size_of::<super::cross_entropy::Params>(),
            ShaderFile::Decode | ShaderFile::DecodeF16 => size_of::<super::decode::Params>(),
        }
    }

    #[test]
    fn shaders_validate_and_params_match() {
        for file in ShaderFile::ALL {
            let (module, _) = module(file);
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let (handle, _) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some("Params"))
                .unwrap_or_else(|| panic!("{} has no struct Params", file.name()));
            let wgsl = layouter[handle].size as usize;
            assert_eq!(wgsl, params_size(file), "{}: Params size", file.name());
            assert_eq!(
                wgsl % 16,
                0,
                "{}: uniform size must be a multiple of 16",
                file.name()
            );
        }
    }

    #[test]
    fn binding_tables_match_entry_points() {
        for kernel in Kernel::ALL {
            let (module, info) = module(kernel.file());
            let ep = module
                .entry_points
                .iter()
                .position(|e| e.name == kernel.entry())
                .unwrap_or_else(|| panic!("{} not found", kernel.name()));
            let uses = info.get_entry_point(ep);
            let mut used = Vec::new();
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
                    _ => {}
                }
            }
            let mut table = kernel.bindings().to_vec();
            table.sort_by_key(|b| b.0);
            used.sort_by_key(|b| b.0);
            assert_eq!(
                used,
                table,
                "{}: storage bindings used vs declared",
                kernel.name()
            );
        }
    }
}
