//! `loadgen`: the load generator and fake upstream behind `bench/run.sh`.
//!
//! - `upstream`  a fake OpenAI-compatible server streaming timestamped chunks
//! - `relay`     chats through Colloquy over WebSocket (scenario 1)
//! - `direct`    the same clients against an OpenAI-compatible base URL: the fake upstream
//!   (baseline, scenario 2) or a peer proxy such as LiteLLM (scenario 3)
//! - `register`  creates an account (the seeded reader's)
//! - `reads`     `conversations(first: 20)` at the maximum and at fixed rates (scenario 4)
//! - `idle`      many idle subscriptions, then one event to all (scenario 5)
//! - `logins`    the read load with and without logins (scenario 6)
//! - `report`    writes BENCHMARKS.md from the results file
//!
//! Every scenario appends JSON records to `--out` (JSON Lines) and prints a summary to stderr.

mod frames;
mod gql;
mod idle;
mod reads;
mod report;
mod stats;
mod streams;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::frames::Shape;
use crate::streams::Common;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and fake upstream for Colloquy's benchmarks"
)]
struct Cli {
    /// Worker threads of the runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ShapeArgs {
    /// Chunks per answer.
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// Milliseconds between chunks (0: as fast as the path allows).
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Milliseconds from the request to the first chunk: a fast hosted model's time to first
    /// token. It must exceed the `sendMessage` round trip, or the relay's "added time to first
    /// token" would measure the client's own subscribe round trips instead of the relay.
    #[arg(long, default_value_t = 200)]
    first_ms: u64,
}

impl ShapeArgs {
    fn shape(&self) -> Shape {
        Shape {
            chunks: self.chunks,
            interval: Duration::from_millis(self.interval_ms),
            first: Duration::from_millis(self.first_ms),
        }
    }
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Concurrent clients; several levels run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "10,100,200,500")]
    concurrency: Vec<usize>,
    /// Chats each client runs one after the other.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client starts are spread evenly over this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    ramp_ms: u64,
    /// `paced` or `max`: only a label for the report.
    #[arg(long, default_value = "paced")]
    mode: String,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Results file (JSON Lines) to append to.
    #[arg(long)]
    out: PathBuf,
}

impl LoadArgs {
    fn common(&self, source: &str, pid: Option<u32>) -> Common {
        Common {
            source: source.to_owned(),
            mode: self.mode.clone(),
            concurrency: 0,
            rounds: self.rounds,
            ramp: Duration::from_millis(self.ramp_ms),
            shape: self.shape.shape(),
            pid,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the fake OpenAI-compatible upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// Chats relayed by Colloquy: sendMessage, then messageStream over WebSocket.
    Relay {
        /// Colloquy's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The server's pid, to sample its RSS and CPU.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Catalog id of the model served by the fake upstream.
        #[arg(long, default_value = "bench/fake")]
        model: String,
        /// Chats per account (accounts are registered before the measurement).
        #[arg(long, default_value_t = 50)]
        chats_per_user: usize,
        /// Prefix of the accounts' emails.
        #[arg(long, default_value = "relay")]
        run_id: String,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The same clients against an OpenAI-compatible base URL (Server-Sent Events).
    Direct {
        /// e.g. http://127.0.0.1:9100/v1
        #[arg(long)]
        base_url: String,
        #[arg(long, default_value = "sk-bench")]
        api_key: String,
        #[arg(long, default_value = "bench")]
        model: String,
        /// Label of the results: `upstream` for the baseline, `litellm` for the peer.
        #[arg(long, default_value = "upstream")]
        source: String,
        /// A process to sample (the peer proxy).
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Register an account (password: the benchmarks' fixed one).
    Register {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long)]
        email: String,
    },
    /// `conversations(first: 20)` at the maximum rate, then at fixed shares of it.
    Reads {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The seeded workspace's owner.
        #[arg(long, default_value = "reader@bench.test")]
        email: String,
        /// Clients of the closed-loop (maximum rate) phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fixed rates, in percent of the measured maximum.
        #[arg(long, value_delimiter = ',', default_value = "25,50,70,90")]
        percents: Vec<u32>,
        /// The server's pid, to sample its RSS and CPU.
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Idle subscriptions: server memory per subscription, then one event delivered to all.
    Idle {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long)]
        server_pid: u32,
        #[arg(long, default_value = "idle@bench.test")]
        email: String,
        #[arg(long, default_value = "bench/fake")]
        model: String,
        #[arg(long, default_value_t = 10_000)]
        subscriptions: usize,
        /// Source addresses 127.0.0.2 … 127.0.0.(1 + N).
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fixed-rate reads alone, then with clients logging in back to back.
    Logins {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        #[arg(long, default_value = "reader@bench.test")]
        reader_email: String,
        #[arg(long, default_value = "login@bench.test")]
        login_email: String,
        /// Reads per second; without it, `--percent` of the maximum found in `--out`.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 50)]
        percent: u32,
        /// Clients logging in back to back.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write BENCHMARKS.md from a results file.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value = "")]
        commit: String,
        #[arg(long, default_value = "")]
        command: String,
        #[arg(long, default_value = "")]
        date: String,
        #[arg(long, default_value = "")]
        duration: String,
        /// The peer's source label.
        #[arg(long, default_value = "litellm")]
        peer: String,
        /// A line for the Notes section (repeatable).
        #[arg(long)]
        note: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cli.threads {
        runtime.worker_threads(n.max(1));
    }
    runtime.build()?.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Upstream { listen, shape } => upstream::serve(listen, shape.shape()).await,
        Command::Relay {
            server,
            server_pid,
            model,
            chats_per_user,
            run_id,
            load,
        } => {
            let setup = streams::RelaySetup {
                server,
                model,
                chats_per_user,
                run_id,
            };
            streams::relay(
                &setup,
                &load.concurrency,
                load.common("colloquy", server_pid),
                &load.out,
            )
            .await
        }
        Command::Direct {
            base_url,
            api_key,
            model,
            source,
            pid,
            load,
        } => {
            let target = streams::DirectTarget {
                base_url,
                api_key,
                model,
            };
            streams::direct(
                &target,
                &load.concurrency,
                load.common(&source, pid),
                &load.out,
            )
            .await
        }
        Command::Register { server, email } => {
            gql::Http::new(&server)?.login_or_register(&email).await?;
            Ok(())
        }
        Command::Reads {
            server,
            email,
            concurrency,
            duration,
            percents,
            server_pid,
            out,
        } => {
            let args = reads::ReadArgs {
                server,
                email,
                concurrency,
                duration: Duration::from_secs(duration),
                percents,
                server_pid,
            };
            reads::reads(&args, &out).await
        }
        Command::Idle {
            server,
            server_pid,
            email,
            model,
            subscriptions,
            sources,
            connect_concurrency,
            out,
        } => {
            let args = idle::IdleArgs {
                server,
                server_pid,
                email,
                model,
                subscriptions,
                sources,
                connect_concurrency,
            };
            idle::idle(&args, &out).await
        }
        Command::Logins {
            server,
            reader_email,
            login_email,
            rate,
            percent,
            clients,
            duration,
            out,
        } => {
            let rate = match rate {
                Some(r) => r,
                None => reads::max_rate_from(&out)? * f64::from(percent) / 100.0,
            };
            let args = reads::LoginArgs {
                server,
                reader_email,
                login_email,
                rate,
                clients,
                duration: Duration::from_secs(duration),
            };
            reads::logins(&args, &out).await
        }
        Command::Report {
            results,
            output,
            commit,
            command,
            date,
            duration,
            peer,
            note,
        } => {
            let meta = report::Meta {
                commit,
                command,
                date,
                duration,
                peer,
                notes: note,
            };
            let text = report::render(&results, &meta)?;
            std::fs::write(&output, text)?;
            eprintln!("report: wrote {}", output.display());
            Ok(())
        }
    }
}
