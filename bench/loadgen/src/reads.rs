//! Read scenarios: the first page of `conversations` (20, with previews) on the seeded
//! workspace, and the same read load while other clients log in.
//!
//! - **Maximum rate** (closed loop): C clients each send the next request as soon as the
//!   previous one is answered, for D seconds; the rate is answers ÷ D and the latency is each
//!   request's round trip.
//! - **Fixed rates** (open loop): requests are scheduled every 1/R s whatever happens to the
//!   earlier ones, and each latency is measured from its *scheduled* time, so a stall counts
//!   for every request it delays (no coordinated omission).
//! - **Logins**: the fixed-rate read load alone, then again with L clients logging in back to
//!   back; logins/s and the read percentiles of both phases.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::gql::Http;
use crate::stats::{self, MachineSampler, MachineUsage, ProcUsage, Summary};

const PAGE: &str = "query BenchConversations($ws: ID!) { conversations(workspaceId: $ws, first: 20) { edges { cursor node { id title model pinned preview messageCount lastMessageAt } } pageInfo { hasNextPage endCursor } } }";

/// One read; an answer that is not a full page counts as an error.
async fn read_page(http: &Http, token: &str, workspace: &str) -> anyhow::Result<()> {
    let data = http
        .exec(Some(token), PAGE, json!({ "ws": workspace }))
        .await?;
    let edges = data
        .pointer("/conversations/edges")
        .and_then(Value::as_array)
        .context("no edges")?;
    if edges.len() != 20 || edges[0].pointer("/node/preview").is_none_or(Value::is_null) {
        bail!(
            "expected 20 conversations with previews, got {}",
            edges.len()
        );
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct ReadRecord {
    pub kind: &'static str,
    /// `max` or `rate`.
    pub mode: &'static str,
    /// For `rate`: the share of the measured maximum asked for, in percent.
    pub percent: Option<u32>,
    pub concurrency: Option<usize>,
    pub target_rps: Option<f64>,
    pub achieved_rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub duration_s: f64,
    pub latency: Summary,
    /// The server's RSS and CPU during the phase, when its pid was given.
    pub process: Option<ProcUsage>,
    pub machine: Option<MachineUsage>,
}

struct Reader {
    http: Http,
    token: String,
    workspace: String,
}

impl Reader {
    async fn new(server: &str, email: &str) -> anyhow::Result<Reader> {
        let http = Http::new(server)?;
        let account = http.login(email).await?;
        let reader = Reader {
            http,
            token: account.token,
            workspace: account.personal_workspace,
        };
        read_page(&reader.http, &reader.token, &reader.workspace)
            .await
            .context("the seeded workspace does not answer a full page (was it seeded?)")?;
        Ok(reader)
    }
}

/// Outcome of a load phase.
struct Phase {
    latency: hdrhistogram::Histogram<u64>,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn closed_loop(
    reader: &Arc<Reader>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let reader = reader.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = stats::histogram();
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < end {
                let sent = Instant::now();
                match read_page(&reader.http, &reader.token, &reader.workspace).await {
                    Ok(()) => {
                        let _ = h.record(sent.elapsed().as_micros() as u64);
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert(format!("{err:#}"));
                    }
                }
            }
            (h, errors, first_error)
        }));
    }
    let mut phase = Phase {
        latency: stats::histogram(),
        requests: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (h, errors, first_error) = task.await?;
        phase.latency.add(&h)?;
        phase.errors += errors;
        phase.first_error = phase.first_error.or(first_error);
    }
    phase.elapsed = start.elapsed();
    phase.requests = phase.latency.len() + phase.errors;
    Ok(phase)
}

/// Sends `rate` requests per second for `duration`, each on its own task.
async fn open_loop(reader: &Arc<Reader>, rate: f64, duration: Duration) -> anyhow::Result<Phase> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    for i in 0..total {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled).await;
        let (reader, tx) = (reader.clone(), tx.clone());
        tokio::spawn(async move {
            let result = read_page(&reader.http, &reader.token, &reader.workspace).await;
            // From the scheduled time: a late send counts against the server's latency.
            let latency = scheduled.elapsed().as_micros() as u64;
            let _ = tx.send(result.map(|()| latency).map_err(|e| format!("{e:#}")));
        });
    }
    drop(tx);
    let mut phase = Phase {
        latency: stats::histogram(),
        requests: total,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let drain = async {
        while let Some(result) = rx.recv().await {
            match result {
                Ok(us) => {
                    let _ = phase.latency.record(us);
                }
                Err(err) => {
                    phase.errors += 1;
                    phase.first_error.get_or_insert(err);
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .is_err()
    {
        bail!("requests were still unanswered a minute after the load ended");
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

#[allow(clippy::too_many_arguments)]
fn record(
    mode: &'static str,
    percent: Option<u32>,
    concurrency: Option<usize>,
    target: Option<f64>,
    phase: Phase,
    duration: Duration,
    process: Option<ProcUsage>,
    machine: Option<MachineUsage>,
) -> ReadRecord {
    let ok = phase.latency.len();
    let r = ReadRecord {
        kind: "reads",
        mode,
        percent,
        concurrency,
        target_rps: target,
        achieved_rps: ok as f64 / duration.as_secs_f64(),
        requests: phase.requests,
        errors: phase.errors,
        first_error: phase.first_error,
        duration_s: phase.elapsed.as_secs_f64(),
        latency: Summary::of(&phase.latency),
        process,
        machine,
    };
    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "reads {mode} {}: {:.0}/s, {} errors, p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms",
        target
            .map(|t| format!("at {t:.0}/s"))
            .unwrap_or_else(|| format!("x{}", concurrency.unwrap_or(0))),
        r.achieved_rps,
        r.errors,
        ms(r.latency.p50_us),
        ms(r.latency.p90_us),
        ms(r.latency.p99_us),
        ms(r.latency.max_us)
    );
    if let Some(e) = &r.first_error {
        eprintln!("  first error: {e}");
    }
    r
}

pub struct ReadArgs {
    pub server: String,
    pub email: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub percents: Vec<u32>,
    pub server_pid: Option<u32>,
}

pub async fn reads(args: &ReadArgs, out: &Path) -> anyhow::Result<()> {
    let reader = Arc::new(Reader::new(&args.server, &args.email).await?);
    // Warm the connections and the server's caches.
    closed_loop(&reader, args.concurrency, Duration::from_secs(2)).await?;
    let sampler = stats::sampler(args.server_pid)?;
    let machine = MachineSampler::start()?;
    let phase = closed_loop(&reader, args.concurrency, args.duration).await?;
    let process = stats::finish(sampler).await?;
    let machine = Some(machine.finish()?);
    let max = record(
        "max",
        None,
        Some(args.concurrency),
        None,
        phase,
        args.duration,
        process,
        machine,
    );
    let max_rps = max.achieved_rps;
    stats::append_result(out, &serde_json::to_value(&max)?)?;
    for &percent in &args.percents {
        let rate = max_rps * f64::from(percent) / 100.0;
        let sampler = stats::sampler(args.server_pid)?;
        let machine = MachineSampler::start()?;
        let phase = open_loop(&reader, rate, args.duration).await?;
        let process = stats::finish(sampler).await?;
        let machine = Some(machine.finish()?);
        let r = record(
            "rate",
            Some(percent),
            None,
            Some(rate),
            phase,
            args.duration,
            process,
            machine,
        );
        stats::append_result(out, &serde_json::to_value(&r)?)?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct LoginRecord {
    pub kind: &'static str,
    /// `alone` or `with_logins`.
    pub phase: &'static str,
    pub read_rps: f64,
    pub read: ReadRecord,
    pub login_clients: usize,
    pub logins: u64,
    pub login_errors: u64,
    pub logins_per_s: f64,
    pub login_latency: Option<Summary>,
}

pub struct LoginArgs {
    pub server: String,
    pub reader_email: String,
    pub login_email: String,
    pub rate: f64,
    pub clients: usize,
    pub duration: Duration,
}

pub async fn logins(args: &LoginArgs, out: &Path) -> anyhow::Result<()> {
    let reader = Arc::new(Reader::new(&args.server, &args.reader_email).await?);
    let http = Http::new(&args.server)?;
    http.login_or_register(&args.login_email).await?;
    closed_loop(&reader, 4, Duration::from_secs(2)).await?;

    for with_logins in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut loggers = Vec::new();
        let login_start = Instant::now();
        for _ in 0..if with_logins { args.clients } else { 0 } {
            let (http, email) = (http.clone(), args.login_email.clone());
            let (stop, count, failed) = (stop.clone(), count.clone(), failed.clone());
            loggers.push(tokio::spawn(async move {
                let mut h = stats::histogram();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match http.login(&email).await {
                        Ok(_) => {
                            let _ = h.record(sent.elapsed().as_micros() as u64);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                h
            }));
        }
        let machine = MachineSampler::start()?;
        let phase = open_loop(&reader, args.rate, args.duration).await?;
        let machine = Some(machine.finish()?);
        stop.store(true, Ordering::Relaxed);
        let login_elapsed = login_start.elapsed();
        let mut login_h = stats::histogram();
        for l in loggers {
            login_h.add(&l.await?)?;
        }
        let name = if with_logins { "with_logins" } else { "alone" };
        let read = record(
            "rate",
            None,
            None,
            Some(args.rate),
            phase,
            args.duration,
            None,
            machine,
        );
        let logins = count.load(Ordering::Relaxed);
        let r = LoginRecord {
            kind: "logins",
            phase: name,
            read_rps: args.rate,
            read,
            login_clients: if with_logins { args.clients } else { 0 },
            logins,
            login_errors: failed.load(Ordering::Relaxed),
            logins_per_s: logins as f64 / login_elapsed.as_secs_f64(),
            login_latency: with_logins.then(|| Summary::of(&login_h)),
        };
        eprintln!(
            "logins {name}: {:.1} logins/s ({} failed), read p99 {:.2} ms",
            r.logins_per_s,
            r.login_errors,
            r.read.latency.p99_us as f64 / 1000.0
        );
        stats::append_result(out, &serde_json::to_value(&r)?)?;
    }
    Ok(())
}

/// The maximum read rate measured by an earlier `reads` run in `results`.
pub fn max_rate_from(results: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("cannot read {}", results.display()))?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "reads" && v["mode"] == "max")
        .filter_map(|v| v["achieved_rps"].as_f64())
        .next_back()
        .context("no maximum read rate in the results (run `reads` first)")
}
