//! `monovlm-edge`: ground referring expressions in 3D from a camera, on the vehicle.

use anyhow::Context;
use clap::{Parser, Subcommand};
use monovlm_runtime::{ortlib, protocol};

#[derive(Parser)]
#[command(version, about = "Where, in metres, is the object a person describes? (MonoVLM on ONNX Runtime)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load ONNX Runtime and report its version, the execution providers it was built with, and
    /// the model packages found under `models/`.
    Info {
        /// Directory holding model packages.
        #[arg(long, default_value = "models")]
        models: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn")),
        )
        .init();
    match Cli::parse().command {
        Command::Info { models } => info(&models),
    }
}

fn info(models: &std::path::Path) -> anyhow::Result<()> {
    let ort = ortlib::init().context("loading ONNX Runtime")?;
    println!("monovlm-edge {}", env!("CARGO_PKG_VERSION"));
    println!("answer protocol: v{}", protocol::PROTOCOL_VERSION);
    println!("ONNX Runtime: {}", ort.library.display());
    println!("  {}", ort.build_info);
    for (name, support) in ortlib::provider_support()? {
        println!("  provider {name:<9} {support}");
    }
    let packages: Vec<_> = std::fs::read_dir(models)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("onnx").is_dir() && p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    if packages.is_empty() {
        println!(
            "model packages under {}: none yet (the exporter writes them; grounding needs one)",
            models.display()
        );
    } else {
        for p in packages {
            println!("model package: {}", p.display());
        }
    }
    Ok(())
}
