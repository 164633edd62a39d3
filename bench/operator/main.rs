//! `cargo run --release --example operator-bench -- --workspaces 10000 --operator <atelier>
//! [--namespace-mode per-user --users 1000] [--json]`
//!
//! Runs an `atelier operator` binary against an in-memory API server ([`fake`]) holding a
//! NodePool, a WorkspaceProfile and N Workspaces, and measures the cold start, a no-op change
//! of every Workspace and a status change of every pod ([`harness`]). bench/operator/run.sh
//! runs it for the baseline and the current operator side by side.

#[path = "fake.rs"]
mod fake;
#[path = "harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks `atelier operator` against an in-memory API server")]
struct Args {
    /// Workspaces to seed.
    #[arg(long, default_value_t = 10_000)]
    workspaces: usize,
    /// The `atelier` binary to run as the operator.
    #[arg(long)]
    operator: PathBuf,
    /// `shared` (one namespace) or `per-user` (a namespace per user).
    #[arg(long, default_value = "shared", value_parser = ["shared", "per-user"])]
    namespace_mode: String,
    /// Users the Workspaces are spread over.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// A phase has settled after this many seconds without requests or reconciliations.
    #[arg(long, default_value_t = 3.0)]
    quiet: f64,
    /// Changes the fake API server's log keeps for resuming watches (fewer: more `410
    /// Expired` and relists).
    #[arg(long, default_value_t = fake::LOG_CAPACITY)]
    watch_log: usize,
    /// Pin the operator with `taskset -c <CPUS>`.
    #[arg(long)]
    cpus: Option<String>,
    /// Print every request the fake API server receives.
    #[arg(long)]
    log_requests: bool,
    /// `RUST_LOG` of the operator.
    #[arg(long, default_value = "warn")]
    rust_log: String,
    /// Where the kubeconfig and the operator's log go (default: a directory under /tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("atelier-operator-bench-{}", std::process::id()))
    });
    let opts = harness::Options {
        workspaces: args.workspaces,
        users: args.users.max(1),
        per_user: args.namespace_mode == "per-user",
        operator: args.operator.clone(),
        phase_timeout: Duration::from_secs(args.timeout),
        quiet: Duration::from_secs_f64(args.quiet),
        watch_log: args.watch_log,
        cpus: args.cpus.clone(),
        log_requests: args.log_requests,
        rust_log: args.rust_log.clone(),
        work_dir: work_dir.clone(),
    };
    eprintln!(
        "operator-bench: {} Workspaces ({}), operator log in {}",
        opts.workspaces,
        args.namespace_mode,
        work_dir.join("operator.log").display()
    );
    let report = harness::run(&opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", harness::table(&report));
    }
    Ok(())
}
