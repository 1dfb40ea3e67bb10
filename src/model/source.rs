//! Where a model comes from, and a loaded model: shape, weights on the GPU, tokenizer.
//!
//! `--model` accepts a local Hugging Face directory, `tiny` (the built-in demo model),
//! `random:<shape>` (random weights in a preset shape, for benchmarks), or a Hugging Face hub id
//! (`gpt2`, `openai-community/gpt2`). A hub id never falls back to random weights.

use std::fmt;
use std::path::{Path, PathBuf};

use super::weights::{self, HostWeights};
use super::{Gpt2, Gpt2Config, WeightStorage};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tokenizer::Tokenizer;

/// Seed of the built-in `tiny` model's random weights (fixed, so `tiny` is always the same
/// model and its adapters stay valid).
pub const TINY_SEED: u64 = 0x7149;

/// Seed of `random:<shape>` weights.
pub const RANDOM_SEED: u64 = 1234;

/// Files a model directory needs.
const MODEL_FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer.json).
    Dir(PathBuf),
    /// The built-in demo model: GPT-2's tokenizer, 4 layers of 128 channels, random weights.
    Tiny,
    /// Random weights in a preset shape (`gpt2`, `gpt2-medium`, ...), for benchmarks.
    Random(String),
    /// A Hugging Face hub id such as `openai-community/gpt2`.
    Hub(String),
}

impl ModelSource {
    /// Interpret a `--model` value. An existing directory always wins, so `./gpt2` or a local
    /// `gpt2` folder is read from disk; a value that looks like a path but does not exist is an
    /// error rather than a hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::invalid(
                "model",
                "\"\"",
                "pass a model directory, tiny, random:<shape> or a Hugging Face hub id",
            ));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        if spec == "tiny" {
            return Ok(ModelSource::Tiny);
        }
        if let Some(shape) = spec.strip_prefix("random:") {
            Gpt2Config::named(shape)?;
            return Ok(ModelSource::Random(shape.to_string()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.contains('\\')
            || spec.matches('/').count() > 1
            || path.exists();
        if looks_like_path {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found (expected a folder with config.json and \
                     model.safetensors)",
                ),
            });
        }
        let valid_id = spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid_id {
            return Err(Error::invalid(
                "model",
                spec,
                "not a directory, tiny, random:<shape>, or a Hugging Face hub id",
            ));
        }
        Ok(ModelSource::Hub(spec.to_string()))
    }

    /// The local directory holding the model's files, downloading a hub model first.
    /// `None` for built-in and random models.
    pub fn local_dir(&self) -> Result<Option<PathBuf>> {
        match self {
            ModelSource::Dir(d) => {
                for f in MODEL_FILES {
                    if !d.join(f).is_file() {
                        return Err(Error::Io {
                            path: d.join(f),
                            source: std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                format!(
                                    "the model directory has no {f} (a Hugging Face GPT-2 \
                                     directory holds config.json, model.safetensors and \
                                     tokenizer.json)"
                                ),
                            ),
                        });
                    }
                }
                Ok(Some(d.clone()))
            }
            ModelSource::Hub(id) => hub::download(id).map(Some),
            ModelSource::Tiny | ModelSource::Random(_) => Ok(None),
        }
    }

    /// The model's shape.
    pub fn config(&self) -> Result<Gpt2Config> {
        match self {
            ModelSource::Tiny => Gpt2Config::named("tiny"),
            ModelSource::Random(shape) => Gpt2Config::named(shape),
            _ => {
                let dir = self.local_dir()?.expect("a directory-backed model");
                Gpt2Config::from_file(&dir.join("config.json"))
            }
        }
    }

    /// The frozen weights on the host (memory-mapped and converted for a checkpoint).
    pub fn host_weights(&self, config: &Gpt2Config) -> Result<HostWeights> {
        Ok(match self {
            ModelSource::Tiny => weights::random(config, TINY_SEED),
            ModelSource::Random(_) => weights::random(config, RANDOM_SEED),
            _ => {
                let dir = self.local_dir()?.expect("a directory-backed model");
                weights::load(&dir.join("model.safetensors"), config)?
            }
        })
    }

    /// The model's tokenizer: its directory's tokenizer.json, else GPT-2's (bundled).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self.local_dir()? {
            Some(dir) => Tokenizer::for_model_dir(&dir),
            None => Tokenizer::gpt2(),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Dir(d) => write!(f, "{}", d.display()),
            ModelSource::Tiny => write!(f, "tiny (built-in demo model, random weights)"),
            ModelSource::Random(s) => write!(f, "random:{s} (random weights, not pretrained)"),
            ModelSource::Hub(id) => write!(f, "{id} (Hugging Face hub)"),
        }
    }
}

/// A model ready to use: its shape, frozen weights on the GPU, and tokenizer.
#[derive(Debug)]
pub struct Model {
    /// Where it came from.
    pub source: ModelSource,
    /// Its shape.
    pub config: Gpt2Config,
    /// The frozen weights on the GPU.
    pub gpt2: Gpt2,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl Model {
    /// Load a model from a `--model` value (see [`ModelSource::parse`]) onto `gpu`.
    ///
    /// ```no_run
    /// # fn main() -> lora_wgpu::Result<()> {
    /// let gpu = lora_wgpu::Gpu::new(&lora_wgpu::GpuOptions::from_env())?;
    /// let model = lora_wgpu::model::Model::load(&gpu, "tiny")?;
    /// assert_eq!(model.config.n_layer, 4);
    /// # Ok(()) }
    /// ```
    pub fn load(gpu: &Gpu, spec: &str) -> Result<Self> {
        Self::load_with(gpu, spec, WeightStorage::F32)
    }

    /// [`Model::load`] with the linear layers' frozen weights stored as `storage` says (f16
    /// halves their memory where the adapter offers `SHADER_F16`).
    pub fn load_with(gpu: &Gpu, spec: &str, storage: WeightStorage) -> Result<Self> {
        Self::from_source_with(gpu, ModelSource::parse(spec)?, storage)
    }

    /// Load a model from an already parsed source.
    pub fn from_source(gpu: &Gpu, source: ModelSource) -> Result<Self> {
        Self::from_source_with(gpu, source, WeightStorage::F32)
    }

    /// [`Model::from_source`] with the weights stored as `storage` says.
    pub fn from_source_with(
        gpu: &Gpu,
        source: ModelSource,
        storage: WeightStorage,
    ) -> Result<Self> {
        let config = source.config()?;
        config.validate()?;
        let tokenizer = source.tokenizer()?;
        let host = source.host_weights(&config)?;
        let gpt2 = Gpt2::upload_with(gpu, &config, &host, storage)?;
        Ok(Model {
            source,
            config,
            gpt2,
            tokenizer,
        })
    }

    /// The frozen weights on the host again (for merging), read from the same source.
    pub fn host_weights(&self) -> Result<HostWeights> {
        self.source.host_weights(&self.config)
    }
}

#[cfg(feature = "hub")]
mod hub {
    use super::*;

    /// Download (or find in the Hugging Face cache) a hub model's files; the snapshot folder.
    pub fn download(id: &str) -> Result<PathBuf> {
        let fail = |detail: String| Error::Format {
            path: PathBuf::from(id),
            detail: format!(
                "could not get Hugging Face hub model '{id}': {detail}. Without network access, \
                 download it elsewhere (e.g. `huggingface-cli download {id} --local-dir ./{name}`) \
                 and pass the folder: --model ./{name}",
                name = id.rsplit('/').next().unwrap_or(id)
            ),
        };
        let cache = hf_hub::Cache::from_env().model(id.to_string());
        let cached: Option<Vec<PathBuf>> = MODEL_FILES.iter().map(|f| cache.get(f)).collect();
        let files = match cached {
            Some(files) => files,
            None => {
                let api = hf_hub::api::sync::ApiBuilder::from_env()
                    .with_progress(true)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                let repo = api.model(id.to_string());
                let mut files = Vec::new();
                for f in MODEL_FILES {
                    files.push(repo.get(f).map_err(|e| fail(e.to_string()))?);
                }
                // Optional: GPT-2's bundled tokenizer is the fallback.
                let _ = repo.get("tokenizer.json");
                files
            }
        };
        Ok(files[0]
            .parent()
            .expect("a cached file has a folder")
            .to_path_buf())
    }
}

#[cfg(not(feature = "hub"))]
mod hub {
    use super::*;

    /// Built without the `hub` feature: say how to get the model instead.
    pub fn download(id: &str) -> Result<PathBuf> {
        Err(Error::Format {
            path: PathBuf::from(id),
            detail: format!(
                "this build has no Hugging Face hub support (the `hub` feature is off). \
                 Download '{id}' elsewhere and pass the folder with --model"
            ),
        })
    }
}
