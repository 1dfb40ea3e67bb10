//! Where a model comes from, and a loaded model: shape, weights on the GPU, tokenizer.
//!
//! `--model` accepts a local Hugging Face directory, a GGUF file (`model.gguf`, llama.cpp's
//! format: [`super::gguf`]), `tiny` (the built-in demo model), `random:<shape>` (random weights
//! in a preset shape, for benchmarks), or a Hugging Face hub id (`gpt2`,
//! `openai-community/gpt2`). A hub id never falls back to random weights.

use std::fmt;
use std::path::{Path, PathBuf};

use super::gguf::{is_gguf_path, GgufModel};
use super::{gpt2, llama, HostWeights, ModelConfig, QuantWeights, Transformer, WeightStorage};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::qmatmul;
use crate::tokenizer::{special_tokens, SpecialTokens, Tokenizer};

/// Seed of the built-in `tiny` model's random weights (fixed, so `tiny` is always the same
/// model and its adapters stay valid).
pub const TINY_SEED: u64 = 0x7149;

/// Seed of `random:<shape>` weights.
pub const RANDOM_SEED: u64 = 1234;

/// The file naming a sharded checkpoint's shards.
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local Hugging Face model directory (config.json, model.safetensors or its shards,
    /// tokenizer.json).
    Dir(PathBuf),
    /// The built-in demo model: GPT-2's tokenizer, 4 layers of 128 channels, random weights.
    Tiny,
    /// Random weights in a preset shape (`gpt2`, `smollm2-135m`, ...), for benchmarks.
    Random(String),
    /// A Hugging Face hub id such as `openai-community/gpt2`.
    Hub(String),
    /// A GGUF model file (llama.cpp's format): shape, tokenizer and weights in one file.
    Gguf(PathBuf),
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
        if is_gguf_path(path) {
            if path.is_file() {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "GGUF file not found"),
            });
        }
        if spec == "tiny" {
            return Ok(ModelSource::Tiny);
        }
        if let Some(shape) = spec.strip_prefix("random:") {
            ModelConfig::named(shape)?;
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
                let missing = |f: &str| Error::Io {
                    path: d.join(f),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "the model directory has no {f} (a Hugging Face model directory \
                             holds config.json, model.safetensors or {SHARD_INDEX} with its \
                             shards, and tokenizer.json)"
                        ),
                    ),
                };
                if !d.join("config.json").is_file() {
                    return Err(missing("config.json"));
                }
                if !d.join("model.safetensors").is_file() && !d.join(SHARD_INDEX).is_file() {
                    return Err(missing("model.safetensors"));
                }
                Ok(Some(d.clone()))
            }
            ModelSource::Hub(id) => hub::download(id).map(Some),
            ModelSource::Tiny | ModelSource::Random(_) | ModelSource::Gguf(_) => Ok(None),
        }
    }

    /// The model's shape.
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            ModelSource::Tiny => ModelConfig::named("tiny"),
            ModelSource::Random(shape) => ModelConfig::named(shape),
            ModelSource::Gguf(path) => Ok(GgufModel::open(path)?.config),
            _ => {
                let dir = self.local_dir()?.expect("a directory-backed model");
                ModelConfig::from_file(&dir.join("config.json"))
            }
        }
    }

    /// The frozen weights on the host (memory-mapped and converted for a checkpoint).
    pub fn host_weights(&self, config: &ModelConfig) -> Result<HostWeights> {
        let random = |seed| match config {
            ModelConfig::Gpt2(c) => gpt2::weights::random(c, seed),
            ModelConfig::Llama(c) => llama::weights::random(c, seed),
        };
        match self {
            ModelSource::Tiny => Ok(random(TINY_SEED)),
            ModelSource::Random(_) => Ok(random(RANDOM_SEED)),
            ModelSource::Gguf(path) => GgufModel::open(path)?.host_weights(),
            _ => {
                let dir = self.local_dir()?.expect("a directory-backed model");
                load_weights(&dir, config)
            }
        }
    }

    /// The model's tokenizer: its directory's tokenizer.json (GPT-2's bundled one for a GPT-2
    /// directory without one; a Llama-family directory must have its own); a GGUF file's
    /// [`GgufModel::tokenizer`].
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        self.tokenizer_for(&self.config()?)
    }

    /// [`ModelSource::tokenizer`] for a model whose config is already read.
    pub(crate) fn tokenizer_for(&self, config: &ModelConfig) -> Result<Tokenizer> {
        if let ModelSource::Gguf(path) = self {
            return GgufModel::open(path)?.tokenizer();
        }
        match self.local_dir()? {
            Some(dir) => {
                let file = dir.join("tokenizer.json");
                if file.is_file() || matches!(config, ModelConfig::Gpt2(_)) {
                    Tokenizer::for_model_dir(&dir)
                } else {
                    Err(Error::Io {
                        path: file,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the model directory has no tokenizer.json; copy the one the \
                             model ships with (its Hugging Face repository has it) into it",
                        ),
                    })
                }
            }
            None => Tokenizer::gpt2(),
        }
    }
}

impl ModelSource {
    /// The model's special tokens: from its directory's config files or its GGUF metadata,
    /// else from its config (GPT-2's `<|endoftext|>` is both its beginning and end). Ids outside the model's
    /// vocabulary (a tokenizer that is not the model's own) are left out.
    pub fn special_tokens(&self, config: &ModelConfig, tok: &Tokenizer) -> Result<SpecialTokens> {
        let mut special = self.declared_special_tokens(config, tok)?;
        let vocab = config.vocab_size() as u32;
        special.eos.retain(|&t| t < vocab);
        special.bos = special.bos.filter(|&t| t < vocab);
        special.pad = special.pad.filter(|&t| t < vocab);
        Ok(special)
    }

    fn declared_special_tokens(
        &self,
        config: &ModelConfig,
        tok: &Tokenizer,
    ) -> Result<SpecialTokens> {
        if let ModelSource::Gguf(path) = self {
            return GgufModel::open(path)?.special_tokens();
        }
        if let Some(dir) = self.local_dir()? {
            let mut special = special_tokens(&dir, tok)?;
            if special.eos.is_empty() && matches!(config, ModelConfig::Gpt2(_)) {
                special.eos = tok.token_to_id("<|endoftext|>").into_iter().collect();
                special.bos = special.bos.or(special.eos.first().copied());
            }
            return Ok(special);
        }
        Ok(config.special_tokens())
    }
}

/// A model directory's weights, checked against `config`.
pub fn load_weights(dir: &Path, config: &ModelConfig) -> Result<HostWeights> {
    match config {
        ModelConfig::Gpt2(c) => gpt2::weights::load(&dir.join("model.safetensors"), c),
        ModelConfig::Llama(c) => llama::weights::load(dir, c),
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Dir(d) => write!(f, "{}", d.display()),
            ModelSource::Tiny => write!(f, "tiny (built-in demo model, random weights)"),
            ModelSource::Random(s) => write!(f, "random:{s} (random weights, not pretrained)"),
            ModelSource::Hub(id) => write!(f, "{id} (Hugging Face hub)"),
            ModelSource::Gguf(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A model ready to use: its shape, frozen weights on the GPU, and tokenizer.
#[derive(Debug)]
pub struct Model {
    /// Where it came from.
    pub source: ModelSource,
    /// Its shape.
    pub config: ModelConfig,
    /// The frozen weights on the GPU.
    pub transformer: Transformer,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its beginning, end and padding tokens (generation stops at any end token).
    pub special: SpecialTokens,
}

impl Model {
    /// Load a model from a `--model` value (see [`ModelSource::parse`]) onto `gpu`.
    ///
    /// ```no_run
    /// # fn main() -> lora_wgpu::Result<()> {
    /// let gpu = lora_wgpu::Gpu::new(&lora_wgpu::GpuOptions::from_env())?;
    /// let model = lora_wgpu::model::Model::load(&gpu, "tiny")?;
    /// assert_eq!(model.config.hidden_size(), 128);
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

    /// [`Model::from_source`] with the weights stored as `storage` says. A GGUF file's linear
    /// weights of a type the GPU kernels read ([`qmatmul::FORMATS`]) are uploaded in their
    /// blocks as they are, whatever `storage` says; its other tensors are dequantized first.
    pub fn from_source_with(
        gpu: &Gpu,
        source: ModelSource,
        storage: WeightStorage,
    ) -> Result<Self> {
        let config = source.config()?;
        config.validate()?;
        let tokenizer = source.tokenizer_for(&config)?;
        // A GGUF file's linear weights in a format the kernels read stay in their blocks.
        let (host, quant) = match &source {
            ModelSource::Gguf(path) => GgufModel::open(path)?.weights(qmatmul::supported)?,
            _ => (source.host_weights(&config)?, QuantWeights::new()),
        };
        let transformer = Transformer::upload_quant(gpu, &config, &host, &quant, storage)?;
        let special = source.special_tokens(&config, &tokenizer)?;
        Ok(Model {
            source,
            config,
            transformer,
            tokenizer,
            special,
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
        if let (Some(config), Some(_)) = (cache.get("config.json"), cache.get("model.safetensors"))
        {
            return Ok(config
                .parent()
                .expect("a cached file has a folder")
                .to_path_buf());
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let repo = api.model(id.to_string());
        let config = repo.get("config.json").map_err(|e| fail(e.to_string()))?;
        // One file, or an index and its shards (models over ~2 GB ship sharded).
        if repo.get("model.safetensors").is_err() {
            let index = repo.get(SHARD_INDEX).map_err(|e| fail(e.to_string()))?;
            let text = std::fs::read_to_string(&index).map_err(|e| fail(e.to_string()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
            let shards: std::collections::BTreeSet<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for shard in shards {
                repo.get(&shard).map_err(|e| fail(e.to_string()))?;
            }
        }
        // Optional files: GPT-2's bundled tokenizer is its fallback; the others say the
        // special tokens and the chat template.
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ] {
            let _ = repo.get(f);
        }
        Ok(config
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
