//! `lora-wgpu`: the command-line front end. It parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lora_wgpu::gpu::{list_adapters, GpuOptions};

/// LoRA fine-tuning of GPT-2 on any GPU through wgpu.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options that choose the adapter, shared by every command.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Backend(s) to use: vulkan, metal, dx12, gl (comma-separated). Default: all.
    #[arg(long, env = "WGPU_BACKEND")]
    backend: Option<String>,
    /// Adapter index (from `lora-wgpu devices`) or a case-insensitive part of its name.
    #[arg(long, env = "WGPU_ADAPTER_NAME")]
    device: Option<String>,
}

impl DeviceArgs {
    fn options(&self) -> Result<GpuOptions> {
        let mut o = GpuOptions::from_env();
        o.backends = match &self.backend {
            Some(b) => Some(GpuOptions::parse_backends(b)?),
            None => None,
        };
        o.adapter = self.device.clone();
        Ok(o)
    }
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds and mark the one that would be used.
    Devices {
        #[command(flatten)]
        device: DeviceArgs,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Devices { device } => devices(&device),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let i = chosen?;
    let used = &all[i].info;
    println!("* = used (driver: {} {})", used.driver, used.driver_info);
    Ok(())
}
