//! `atelier operator`: reconciles Workspaces into Pods, Services, PVCs, NetworkPolicies and Secrets.

pub mod config;
pub mod workspace;

/// Command-line arguments of `atelier operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {}

/// Runs the operator until SIGTERM.
pub async fn run(_args: OperatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("being written")
}
