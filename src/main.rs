use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Atelier: Virtual Research Environments on Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "atelier", version, about)]
struct Cli {
    /// Log as JSON lines (the default in a cluster); plain text otherwise.
    #[arg(long, global = true, env = "ATELIER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run hub, proxy and the local backend on one machine (SQLite, dev login).
    Up(atelier::hub::serve::UpArgs),
    /// Run the hub (web UI and JupyterHub-compatible REST API).
    Hub(Box<atelier::hub::serve::HubArgs>),
    /// Run the HTTP and WebSocket proxy (routes and authorization from the hub's database).
    Proxy(atelier::proxy::ProxyArgs),
    /// Run the Kubernetes operator.
    Operator(atelier::operator::OperatorArgs),
    /// Write the CustomResourceDefinitions as YAML.
    Crdgen {
        /// Directory to write one file per CRD into; prints all of them to stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init();
    } else {
        fmt().with_env_filter(filter).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out: None } => {
            for (_, yaml) in atelier::crdgen::render() {
                print!("{yaml}");
            }
            Ok(())
        }
        Command::Crdgen { out: Some(dir) } => {
            for path in atelier::crdgen::write_all(&dir)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Operator(args) => {
            init_tracing(cli.log_json);
            atelier::operator::run(args).await
        }
        Command::Proxy(args) => {
            init_tracing(cli.log_json);
            atelier::proxy::run(args).await
        }
        Command::Up(args) => {
            init_tracing(cli.log_json);
            atelier::hub::serve::run_up(args).await
        }
        Command::Hub(args) => {
            init_tracing(cli.log_json);
            atelier::hub::serve::run_hub(*args).await
        }
    }
}
