//! `atelier hub` with the instant backend (`backend::instant`): every server is ready the moment
//! it is asked for and nothing runs behind it, as the instant spawner JupyterHub 6.1.1 is
//! measured with. Used by `bench/hub` (spawn overhead, the culler's page with thousands of
//! running servers) and by the resilience tests. It takes every flag of `atelier hub` (its
//! `--backend` is ignored) and `--instant-target URL`, the address all servers "run" at.

use std::sync::Arc;

use atelier::backend::instant::InstantBackend;
use atelier::hub::serve::{HubArgs, run_hub_with};
use clap::Parser;

#[derive(Parser)]
#[command(about = "atelier hub with the instant backend (benchmarks and tests only)")]
struct Cli {
    #[command(flatten)]
    hub: HubArgs,
    /// Where every server "runs" (nothing needs to answer there).
    #[arg(long, default_value = "http://127.0.0.1:9")]
    instant_target: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let backend = Arc::new(InstantBackend::new(cli.instant_target));
    run_hub_with(cli.hub, Some(backend)).await
}
