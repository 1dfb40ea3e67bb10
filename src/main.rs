//! `lora-wgpu`: the command-line front end. It parses arguments, calls the library and prints.

mod cli;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Result};
use clap::Parser;
use cli::args::{Cli, Command, Demo, DeviceArgs, ExportFormat, LoraArgs, MergeFormat, TrainArgs};
use cli::output::{bytes, human, Progress};
use lora_wgpu::data::{self, DataOptions, Dataset};
use lora_wgpu::gpu::list_adapters;
use lora_wgpu::lora::{parse_adapter_spec, peft, AdaptableModel, ParamTable};
use lora_wgpu::model::{Generator, Model, ModelSource, SamplingConfig, ScaledAdapter};
use lora_wgpu::quant::GgmlType;
use lora_wgpu::train::{self, Checkpoint, Trainer};
use lora_wgpu::{merge, Gpu};

/// On a headless Linux machine (no `XDG_RUNTIME_DIR`) Mesa's Vulkan device-select layer, which
/// the loader runs for every Vulkan instance, looks for a Wayland compositor because wgpu enables
/// `VK_KHR_wayland_surface`, and libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set
/// in the environment.` each time. The layer only reorders the adapters (this crate ranks them
/// itself), so there it is switched off with its own variable, `NODEVICE_SELECT=1`, unless the
/// user set that or asked the layer for a device (`MESA_VK_DEVICE_SELECT`, `DRI_PRIME`). Runs
/// first thing in `main`, before any other thread exists.
fn quiet_headless_device_select() {
    let unset = |name| std::env::var_os(name).is_none_or(|v| v.is_empty());
    let asked = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT", "DRI_PRIME"];
    if cfg!(target_os = "linux") && unset("XDG_RUNTIME_DIR") && asked.into_iter().all(unset) {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> std::process::ExitCode {
    quiet_headless_device_select();
    let result = match Cli::parse().command {
        Command::Train(args) => train_cmd(&args),
        Command::Eval {
            model,
            adapter,
            data,
            block_size,
            batch_size,
            json,
            device,
        } => eval_cmd(
            &model,
            adapter.as_deref(),
            &data,
            block_size,
            batch_size,
            json,
            &device,
        ),
        Command::Info {
            model,
            adapter,
            lora,
        } => info_cmd(&model, adapter.as_deref(), &lora),
        Command::Generate {
            model,
            adapters,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            device,
        } => generate_cmd(
            &model,
            &adapters,
            &prompt,
            max_new_tokens,
            &SamplingConfig {
                temperature,
                top_k,
                top_p,
                seed,
            },
            &device,
        ),
        Command::Merge {
            model,
            adapters,
            out,
            overwrite,
            format,
            quantize,
        } => merge_cmd(&model, &adapters, &out, overwrite, format, quantize),
        Command::Export {
            adapter,
            model,
            format: ExportFormat::Gguf,
            out,
            overwrite,
        } => export_cmd(&adapter, &model, &out, overwrite),
        Command::Devices { device } => devices(&device),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (the library's messages often include
/// their source already), plus a hint when the root cause is a file system error.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    let io = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .last();
    if let Some(io) = io {
        use std::io::ErrorKind as K;
        let hint = match io.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                "the path is not writable: choose another location (e.g. another --out)"
            }
            K::NotADirectory => {
                "a parent of the path is a file, not a directory: choose another path"
            }
            K::StorageFull | K::QuotaExceeded => {
                "the disk is full: free some space or choose another --out; a training run can \
                 continue with --resume from its last complete checkpoint"
            }
            _ => "",
        };
        if !hint.is_empty() {
            text.push_str("\nhint: ");
            text.push_str(hint);
        }
    }
    text
}

fn train_cmd(a: &TrainArgs) -> Result<()> {
    let demo = a.is_demo();
    if a.model.is_none() != a.data.is_none() {
        bail!(
            "pass both --model and --data (or neither, for the built-in demo: the tiny model \
             on the bundled corpus)"
        );
    }
    let run_dir = a.run_dir();
    let out = run_dir.root();
    let existing = a.existing_run();
    run_dir.check(existing)?;
    let gpu = a.device.gpu()?;
    let model = a
        .device
        .load_model(&gpu, a.model.as_deref().unwrap_or("tiny"))?;
    let cfg_model = &model.config;
    let cfg = a.train_config(cfg_model)?;
    let block = cfg.block_size;

    // Data.
    let tok = &model.tokenizer;
    let (train_data, valid) = match &a.data {
        None => {
            let all = Dataset::from_text(data::BUNDLED_CORPUS, "bundled corpus", tok, block)?;
            let (t, v) = all.split_validation(a.val_split.unwrap_or(Demo::VAL_SPLIT), a.seed)?;
            (t, Some(v))
        }
        Some(path) => {
            // --mask-prompt / --no-mask-prompt force the mask; without them each format's
            // default applies (chat: assistant turns only; prompt/completion: everything).
            let template = data::chat::model_template(&model)?;
            let opts = DataOptions {
                chat_template: template.as_ref(),
                separator: separator(&model),
                mask_prompt: match (a.mask_prompt, a.no_mask_prompt) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            };
            let all = Dataset::from_path(path, tok, block, &opts)?;
            match (&a.valid, a.val_split) {
                (Some(v), _) => (all, Some(Dataset::from_path(v, tok, block, &opts)?)),
                (None, Some(f)) => {
                    let (t, v) = all.split_validation(f, a.seed)?;
                    (t, Some(v))
                }
                (None, None) => (all, None),
            }
        }
    };
    let s = train_data.stats();
    println!(
        "model    {} ({}, {} layers, {} channels, {} parameters)",
        model.source,
        cfg_model.architecture(),
        cfg_model.num_layers(),
        cfg_model.hidden_size(),
        human(cfg_model.num_parameters() as f64)
    );
    println!(
        "data     {}: {} blocks of {block} tokens ({} tokens){}",
        a.data
            .as_ref()
            .map_or(data::BUNDLED_CORPUS_NAME.to_string(), |p| p
                .display()
                .to_string()),
        s.blocks,
        s.tokens,
        valid
            .as_ref()
            .map(|v| format!(", validation {} blocks", v.len()))
            .unwrap_or_default()
    );
    if demo {
        println!(
            "demo     the built-in tiny model has random weights: its loss starts near \
             ln(50257) = 10.8 and falls as the adapter learns the corpus's token statistics. \
             For real use pass --model <GPT-2 dir> --data <text>."
        );
    }

    let sample_prompt = a.sample_prompt.clone().unwrap_or_else(|| {
        valid
            .as_ref()
            .and_then(|v| v.block(0))
            .and_then(|(ids, _)| tok.decode(&ids[..ids.len().min(8)]).ok())
            .unwrap_or_else(|| "The".into())
    });

    let progress = Progress::new(std::io::stderr().is_terminal());
    // Build the graph (where a too-large shape fails) before touching --out, so a failed start
    // leaves no directory behind and an --overwrite'd run is only deleted once training can run.
    let started = std::time::Instant::now();
    let trainer = Trainer::new(&gpu, &model, cfg.clone(), train_data)?;
    if cfg.lora.init.mutates_base() {
        println!(
            "init     {} of {} modules on the CPU in {:.2} s (adapters are saved converted: rank {}, for the original base)",
            cfg.lora.init,
            trainer.graph().layout().entries.len(),
            started.elapsed().as_secs_f64(),
            2 * cfg.lora.r
        );
    }
    run_dir.prepare(existing)?;
    let mut trainer = trainer.with_output(out);
    if let Some(v) = valid {
        trainer = trainer.with_validation(v);
    }
    if let Some(r) = &a.resume {
        let from = r.as_deref().unwrap_or(out);
        let step = trainer.resume(from)?;
        println!("resume   from step {step} ({})", from.display());
    }
    println!(
        "lora     r={} alpha={} dropout={}{} init={} targets={} -> {} trainable parameters ({:.3}% of the model)",
        cfg.lora.r,
        cfg.lora.alpha,
        cfg.lora.dropout,
        if cfg.lora.use_dora { " dora" } else { "" },
        cfg.lora.init,
        cfg.lora.target_modules.join(","),
        trainer.graph().layout().num_parameters(),
        100.0 * trainer.graph().layout().num_parameters() as f64
            / cfg_model.num_parameters() as f64
    );
    println!(
        "run      {} steps, batch {} x {} tokens x {} accumulation, lr {} ({:?}), output {}",
        trainer.total_steps(),
        cfg.batch_size,
        block,
        cfg.grad_accum,
        cfg.lr,
        cfg.schedule,
        out.display()
    );
    let mut trainer = trainer.on_event(|e| progress.event(e));
    let started = std::time::Instant::now();
    if let Err(e) = trainer.run() {
        progress.finish();
        // Whatever stopped the run (a full disk, a lost GPU, non-finite losses), the newest
        // complete checkpoint is intact: say where it is and how to continue.
        return Err(match Checkpoint::find(out) {
            Ok(checkpoint) => anyhow::anyhow!(
                "{e}\nhint: training stopped at step {}; the newest complete checkpoint is {}. \
                 Run the same command with --resume to continue from it.",
                trainer.step(),
                checkpoint.dir().display()
            ),
            Err(_) => e.into(),
        });
    }
    progress.finish();
    println!(
        "done     {} steps in {:.1} s; adapter in {} (best: {}), loss curve {}",
        trainer.step(),
        started.elapsed().as_secs_f64(),
        out.display(),
        run_dir.best().display(),
        run_dir.loss_curve().display()
    );
    drop(trainer);
    let adapter = peft::load(out, cfg_model)?;
    let ctx = model.config.max_positions().min(128);
    let mut generator = Generator::new(&gpu, &model.transformer, ctx)?;
    generator.set_eos_tokens(model.special.eos.clone())?;
    generator.set_adapters(&gpu, &[ScaledAdapter::of(&adapter, 1.0)])?;
    println!("sample   (greedy, 24 tokens, with the new adapter):");
    stream(
        &gpu,
        &model,
        &mut generator,
        &sample_prompt,
        24,
        &SamplingConfig::greedy(),
    )?;
    Ok(())
}

fn eval_cmd(
    model: &str,
    adapter: Option<&Path>,
    data_path: &Path,
    block_size: Option<usize>,
    batch_size: usize,
    json: bool,
    device: &DeviceArgs,
) -> Result<()> {
    let gpu = device.gpu()?;
    let model = device.load_model(&gpu, model)?;
    let n = block_size.unwrap_or(1024.min(model.config.max_positions()));
    let template = data::chat::model_template(&model)?;
    let opts = DataOptions {
        chat_template: template.as_ref(),
        separator: separator(&model),
        mask_prompt: Some(false),
    };
    let data = Dataset::from_path(data_path, &model.tokenizer, n, &opts)?;
    let loss = train::evaluate_model(&gpu, &model, adapter, &data, batch_size)?;
    let s = data.stats();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "loss": loss,
                "perplexity": loss.exp(),
                "windows": s.blocks,
                "tokens": s.tokens,
                "predicted": s.predicted,
                "block_size": n,
            })
        );
    } else {
        println!(
            "loss {loss:.4}  perplexity {:.3}  ({} windows of {n} tokens, {} predicted)",
            loss.exp(),
            s.blocks,
            s.predicted
        );
    }
    Ok(())
}

fn info_cmd(model: &str, adapter: Option<&Path>, lora: &LoraArgs) -> Result<()> {
    let source = ModelSource::parse(model)?;
    let cfg = source.config()?;
    let lora = match adapter {
        Some(dir) => peft::read_config(&dir.join("adapter_config.json"))?,
        None => lora.config(&cfg),
    };
    let table = ParamTable::new(&cfg, &lora)?;
    let heads = if cfg.num_kv_heads() == cfg.num_heads() {
        format!("{} heads", cfg.num_heads())
    } else {
        format!("{} heads ({} kv)", cfg.num_heads(), cfg.num_kv_heads())
    };
    println!(
        "model {source}: {}, {} layers, {} channels, {heads} of {}, {} positions, vocab {}",
        cfg.architecture(),
        cfg.num_layers(),
        cfg.hidden_size(),
        cfg.head_dim(),
        cfg.max_positions(),
        cfg.vocab_size()
    );
    if let ModelSource::Gguf(path) = &source {
        let types = lora_wgpu::model::gguf::GgufModel::open(path)?.type_counts();
        let types: Vec<String> = types
            .iter()
            .map(|(ty, n, bytes)| match *bytes as f64 / 1024.0 {
                kib if kib < 1024.0 => format!("{ty} {n} ({kib:.1} KiB)"),
                kib => format!("{ty} {n} ({:.1} MiB)", kib / 1024.0),
            })
            .collect();
        println!("GGUF tensors by type: {}", types.join(", "));
    }
    println!(
        "LoRA r={} alpha={} (scale {}) dropout={}{} targets={}{}",
        lora.r,
        lora.alpha,
        lora.scale(),
        lora.dropout,
        if lora.use_dora { " dora" } else { "" },
        lora.target_modules.join(","),
        lora.layers_to_transform
            .as_ref()
            .map(|l| format!(" layers={l:?}"))
            .unwrap_or_default()
    );
    println!();
    println!(
        "{:<18} {:>7} {:>12} {:>14} {:>14} {:>9} {:>10}",
        "module", "adapted", "shape", "trainable", "frozen", "percent", "reduction"
    );
    for row in &table.rows {
        let (pct, red) = match (row.percent(), row.reduction()) {
            (Some(p), Some(r)) => (format!("{p:.3}%"), format!("{r:.0}x")),
            _ => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:<18} {:>7} {:>12} {:>14} {:>14} {:>9} {:>10}",
            row.linear.suffix(),
            format!("{}/{}", row.adapted, table.n_layer),
            format!("{}x{}", row.d_in, row.d_out),
            row.trainable,
            row.frozen,
            pct,
            red
        );
    }
    println!();
    println!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        table.trainable,
        table.all,
        table.trainable_percent()
    );
    println!(
        "adapter file: {} (f32); optimizer state while training: {} (AdamW m, v and grads)",
        bytes(table.adapter_bytes()),
        bytes(table.optimizer_bytes())
    );
    Ok(())
}

fn generate_cmd(
    model: &str,
    adapters: &[String],
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    device: &DeviceArgs,
) -> Result<()> {
    sampling.validate()?;
    let adapters = adapters
        .iter()
        .map(|a| Ok(parse_adapter_spec(a)?))
        .collect::<Result<Vec<_>>>()?;
    let gpu = device.gpu()?;
    let model = device.load_model(&gpu, model)?;
    let loaded = adapters
        .iter()
        .map(|(dir, scale)| Ok((peft::load(dir, &model.config)?, *scale)))
        .collect::<Result<Vec<_>>>()?;
    let scaled: Vec<_> = loaded
        .iter()
        .map(|(l, s)| ScaledAdapter::of(l, *s))
        .collect();
    // Room for the prompt and what is asked for, not the model's whole context (a KV cache
    // of 128K positions would not fit).
    let wanted = model.tokenizer.encode_prompt(prompt)?.len().max(1) + max_new_tokens;
    let ctx = model.config.max_positions().min(wanted);
    let mut generator = Generator::new(&gpu, &model.transformer, ctx)?;
    generator.set_eos_tokens(model.special.eos.clone())?;
    generator.set_adapters(&gpu, &scaled)?;
    stream(
        &gpu,
        &model,
        &mut generator,
        prompt,
        max_new_tokens,
        sampling,
    )?;
    Ok(())
}

/// The token between documents of a dataset: the model's end-of-text token.
fn separator(model: &Model) -> u32 {
    model
        .special
        .eos
        .first()
        .copied()
        .unwrap_or(lora_wgpu::tokenizer::EOT)
}

/// Generate from `prompt`, printing the prompt and then the text as it is produced.
fn stream(
    gpu: &Gpu,
    model: &Model,
    generator: &mut Generator,
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
) -> Result<String> {
    use std::io::Write;
    let tok = &model.tokenizer;
    let ids = tok.encode_prompt(prompt)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut new_ids = Vec::new();
    let mut printed = 0;
    let mut error = None;
    let eos = generator.eos_tokens().to_vec();
    generator.generate(gpu, &ids, sampling, max_new_tokens, |t| {
        if eos.contains(&t) {
            return true;
        }
        new_ids.push(t);
        // Print whole characters only: a token can end inside a UTF-8 sequence.
        match tok.decode(&new_ids) {
            Ok(text) if !text.ends_with('\u{FFFD}') => {
                let _ = write!(out, "{}", &text[printed..]);
                let _ = out.flush();
                printed = text.len();
            }
            Ok(_) => {}
            Err(e) => error = Some(e),
        }
        error.is_none()
    })?;
    if let Some(e) = error {
        return Err(e.into());
    }
    let text = tok.decode(&new_ids)?;
    writeln!(out, "{}", &text[printed.min(text.len())..])?;
    Ok(text)
}

fn merge_cmd(
    model: &str,
    adapters: &[String],
    out: &Path,
    overwrite: bool,
    format: MergeFormat,
    quantize: Option<GgmlType>,
) -> Result<()> {
    let adapters = adapters
        .iter()
        .map(|s| Ok(parse_adapter_spec(s)?))
        .collect::<Result<Vec<_>>>()?;
    let source = ModelSource::parse(model)?;
    if format == MergeFormat::Gguf {
        let (summary, report) =
            merge::merge_model_gguf(&source, &adapters, out, quantize, overwrite)?;
        let mut by_type: Vec<(GgmlType, GgmlType, Vec<&str>)> = Vec::new();
        for (name, asked, got) in &report.fallbacks {
            match by_type.iter_mut().find(|(a, g, _)| (a, g) == (asked, got)) {
                Some((.., names)) => names.push(name),
                None => by_type.push((*asked, *got, vec![name])),
            }
        }
        for (asked, got, names) in by_type {
            println!(
                "{} tensor(s) written as {got}: rows not a multiple of {asked}'s block of {} ({})",
                names.len(),
                asked.block_len(),
                names.join(", ")
            );
        }
        if let Some(why) = &report.no_tokenizer {
            eprintln!("warning: written without tokenizer metadata: {why}");
        }
        println!(
            "merged {} adapter(s) into {} module(s) of {source}; wrote {} (GGUF, {})",
            summary.adapters,
            summary.modules,
            out.display(),
            quantize.map_or("f32".into(), |t| t.to_string())
        );
        return Ok(());
    }
    if quantize.is_some() {
        bail!("--quantize needs --format gguf (a Hugging Face directory is written as f32)");
    }
    let summary = merge::merge_model(&source, &adapters, out, overwrite)?;
    println!(
        "merged {} adapter(s) into {} module(s) of {source}; wrote {} (config.json, \
         model.safetensors, tokenizer.json)",
        summary.adapters,
        summary.modules,
        out.display()
    );
    Ok(())
}

fn export_cmd(adapter: &Path, model: &str, out: &Path, overwrite: bool) -> Result<()> {
    let config = ModelSource::parse(model)?.config()?;
    let s = lora_wgpu::lora::gguf::export_gguf(adapter, &config, out, overwrite)?;
    println!(
        "wrote {} (GGUF LoRA for {}: {} modules, r = {}, alpha = {})",
        out.display(),
        s.architecture,
        s.modules,
        s.r,
        s.alpha
    );
    Ok(())
}

fn devices(args: &DeviceArgs) -> Result<()> {
    let options = args.options()?;
    let (all, chosen) = list_adapters(&options);
    if all.is_empty() {
        // Same advice as the library's error.
        return Err(lora_wgpu::Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    println!(
        "{:<3} {:<2} {:<40} {:<8} {:<14} {:>12} {:>12} {:>8}  features",
        "#", "", "name", "backend", "type", "storage bind", "max buffer", "wg mem"
    );
    for a in &all {
        let mark = if chosen.as_ref().ok() == Some(&a.index) {
            "*"
        } else {
            ""
        };
        let mut feats = Vec::new();
        if !a.compute {
            feats.push("no-compute");
        }
        if a.features.contains(wgpu::Features::SHADER_F16) {
            feats.push("f16");
        }
        if a.features.contains(wgpu::Features::SUBGROUP) {
            feats.push("subgroup");
        }
        if a.features
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            feats.push("coopmat");
        }
        println!(
            "{:<3} {:<2} {:<40} {:<8} {:<14} {:>9} MiB {:>8} MiB {:>5} KiB  {}",
            a.index,
            mark,
            a.info.name,
            format!("{:?}", a.info.backend),
            format!("{:?}", a.info.device_type),
            a.limits.max_storage_buffer_binding_size >> 20,
            a.limits.max_buffer_size >> 20,
            a.limits.max_compute_workgroup_storage_size >> 10,
            feats.join(",")
        );
    }
    for a in all.iter().filter(|a| !a.cooperative_matrix.is_empty()) {
        let configs: Vec<String> = a
            .cooperative_matrix
            .iter()
            .map(|c| {
                format!(
                    "{}x{}x{} {:?}->{:?}",
                    c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
                )
            })
            .collect();
        println!("{}: cooperative matrix {}", a.index, configs.join(", "));
    }
    let i = chosen?;
    let used = &all[i].info;
    println!("* = used (driver: {} {})", used.driver, used.driver_info);
    Ok(())
}
