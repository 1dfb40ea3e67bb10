//! The crate's error type. Every message says what was wrong and what to do about it.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `lora_wgpu`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter (or none matching the user's choice) was found.
    #[error("no usable GPU adapter found{detail}. Install a Vulkan, Metal or DX12 driver; on a headless Linux machine without a GPU, `apt-get install -y mesa-vulkan-drivers` provides the lavapipe software driver. `lora-wgpu devices` lists what wgpu can see.")]
    NoAdapter {
        /// Extra context (which backend or name filter was applied), starting with ": ".
        detail: String,
    },

    /// Adapters exist, but none matches the backend or device the user asked for.
    #[error("no compute-capable adapter matches {wanted} (found: {found}). Choose one of those with --device INDEX or part of its name (WGPU_ADAPTER_NAME), or another --backend (WGPU_BACKEND); `lora-wgpu devices` lists them.")]
    AdapterNotFound {
        /// What was asked for.
        wanted: String,
        /// The adapters that exist, as "index: name (backend)".
        found: String,
    },

    /// Requesting the device from the adapter failed.
    #[error("could not open the GPU device on adapter '{adapter}': {source}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// The wgpu error.
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A kernel's WGSL failed to compile or validate.
    #[error("kernel `{kernel}` failed to build: {message}\n--- WGSL ---\n{source_text}")]
    Shader {
        /// Kernel name (file::entry point).
        kernel: String,
        /// wgpu / naga diagnostics.
        message: String,
        /// The WGSL source with line numbers.
        source_text: String,
    },

    /// The GPU ran out of memory while allocating a buffer.
    #[error("GPU out of memory allocating {what} ({bytes} bytes). Try a smaller --batch-size or --block-size (--grad-accum keeps the effective batch), a lower --rank, or a GPU with more memory.")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Size requested.
        bytes: u64,
    },

    /// A buffer would exceed the adapter's limits.
    #[error("the GPU buffer `{what}` needs {bytes} bytes but the adapter allows at most {limit} per {kind}. Try a smaller --batch-size or --block-size (--grad-accum keeps the effective batch), or a GPU with larger limits (`lora-wgpu devices` lists them).")]
    BufferTooLarge {
        /// What was being allocated.
        what: String,
        /// Size requested.
        bytes: u64,
        /// The adapter limit.
        limit: u64,
        /// "buffer" or "storage binding".
        kind: &'static str,
    },

    /// wgpu reported a validation or internal error.
    #[error("GPU error in {context}: {message}")]
    Gpu {
        /// What we were doing.
        context: String,
        /// wgpu's description.
        message: String,
    },

    /// The device was lost (driver reset, GPU removed, ...).
    #[error("the GPU device was lost ({reason}). Restart the program; a training run can continue with --resume from its last checkpoint.")]
    DeviceLost {
        /// wgpu's description of the reason.
        reason: String,
    },

    /// Training stopped after `max_bad_steps` non-finite steps in a row.
    #[error("training diverged: {steps} non-finite step(s) in a row (last: step {last}); the loss or gradients became NaN/Inf. Lower --lr, set --max-grad-norm, or check the data. The last checkpoint is intact: --resume continues from it")]
    Diverged {
        /// Non-finite steps in a row.
        steps: u64,
        /// The last of them.
        last: u64,
    },

    /// Operands of a kernel have incompatible shapes or lengths.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The kernel or operation.
        op: &'static str,
        /// What was expected and what was found.
        detail: String,
    },

    /// A hyperparameter or argument is outside its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidArgument {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: String,
    },

    /// A file exists but its contents are not what was expected.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        detail: String,
    },

    /// A checkpoint lacks a tensor, has one too many, or has one of the wrong shape or dtype.
    #[error("{path}: {detail}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Which tensor and what is wrong.
        detail: String,
    },

    /// A run's output directory cannot be used as asked (it is a file, holds another run, or
    /// cannot be created or written).
    #[error("{detail}")]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong, naming the directory, and what to do.
        detail: String,
        /// The OS error behind it, if any.
        #[source]
        source: Option<std::io::Error>,
    },

    /// A problem reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for an [`Error::Shape`].
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// Shorthand for an [`Error::InvalidArgument`].
    pub(crate) fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}
