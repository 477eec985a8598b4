//! The `colloquy` binary: `serve` (the default), `migrate`, `schema`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use colloquy::config::Config;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: a relay allocates and frees small buffers for
/// every delta on every connection, and glibc's malloc spent ~10 % of the server's CPU on them
/// and kept more memory per idle connection (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "colloquy",
    version,
    about = "A GraphQL API server for AI chat products"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create and migrate the database if needed, then serve (the default).
    Serve,
    /// Create the database if needed and run pending migrations, then exit.
    Migrate,
    /// Print the GraphQL schema (SDL).
    Schema {
        /// Write it to this file instead of printing it.
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "schema.graphql")]
        write: Option<std::path::PathBuf>,
    },
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Some(Command::Schema { write }) = &cli.command {
        let sdl = colloquy::graphql::sdl();
        return match write {
            None => {
                print!("{sdl}");
                ExitCode::SUCCESS
            }
            Some(path) => match std::fs::write(path, sdl) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            },
        };
    }
    init_tracing();
    match run(cli.command.unwrap_or(Command::Serve)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match command {
        Command::Migrate => colloquy::db::prepare(&config.database.url).await,
        Command::Serve => {
            let addr = config.server.bind_addr;
            let state = colloquy::app::start(config).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (BIND_ADDR): {e}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(
                "Colloquy listening on http://{bound} (GraphQL at /graphql, GraphiQL at /graphiql)"
            );
            colloquy::app::serve(listener, state, colloquy::app::shutdown_signal()).await
        }
        Command::Schema { .. } => Ok(()),
    }
}
