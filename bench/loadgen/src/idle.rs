//! Idle subscriptions: N WebSocket connections, each with one `conversationEvents`
//! subscription on the same conversation, opened from several loopback source addresses
//! (127.0.0.2, 127.0.0.3, …) so the ephemeral ports of one address do not run out.
//!
//! - **Memory per subscription**: the server's RSS once all N are open and the server's
//!   `colloquy_subscriptions_active` gauge has counted them, minus its RSS before the first
//!   one, divided by N (a connection and its subscription together).
//! - **Delivery to all**: one `sendMessage` into the conversation (a short fake-upstream
//!   answer). For each subscriber: the time from just before the mutation was sent to its
//!   first event (`MessageCreated`), and the added latency of its first `MessageDelta` (the
//!   receive time minus the send time the upstream wrote into the chunk).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::frames::{self, Shape};
use crate::gql::{Http, Ws};
use crate::stats::{self, Summary};

const EVENTS: &str = "subscription($c: ID!) { conversationEvents(conversationId: $c) { __typename ... on MessageDelta { seq text } } }";

pub struct IdleArgs {
    pub server: String,
    pub server_pid: u32,
    pub email: String,
    pub model: String,
    pub subscriptions: usize,
    pub sources: u8,
    pub connect_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct IdleRecord {
    pub kind: &'static str,
    pub subscriptions: usize,
    pub opened: usize,
    pub open_errors: usize,
    pub first_open_error: Option<String>,
    pub open_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_subscription: f64,
    pub delivered: usize,
    pub deltas_delivered: usize,
    /// Subscribers whose stream failed or ended before their first delta.
    pub missed: usize,
    pub first_miss: Option<String>,
    /// From sending the mutation to each subscriber's first event.
    pub first_event: Summary,
    /// Added latency of each subscriber's first delta.
    pub first_delta: Summary,
}

/// What one subscriber saw after the trigger: the first event's receive time (µs since the
/// epoch), the first delta's receive and send times, and why no delta came, if none did.
type Seen = (Option<u64>, Option<(u64, u64)>, Option<String>);

pub async fn idle(args: &IdleArgs, out: &Path) -> anyhow::Result<()> {
    let http = Http::new(&args.server)?;
    let account = http.login_or_register(&args.email).await?;
    let conversation = http
        .create_conversation(&account.token, &account.personal_workspace, &args.model)
        .await?;
    let metrics_url = format!("{}/metrics", args.server.trim_end_matches('/'));
    let base_subs = subscriptions_active(&metrics_url).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = stats::rss_kib(args.server_pid)?;

    let n = args.subscriptions;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (trigger_tx, trigger_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let open_start = Instant::now();
    let mut subscribers = Vec::with_capacity(n);
    for i in 0..n {
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % args.sources.max(1) as usize) as u8,
        ));
        let (server, token, conversation) = (
            args.server.clone(),
            account.token.clone(),
            conversation.clone(),
        );
        let (gate, opened, mut trigger) = (gate.clone(), opened_tx.clone(), trigger_rx.clone());
        subscribers.push(tokio::spawn(async move {
            let ws = async {
                let _permit = gate.acquire().await?;
                let mut ws = Ws::connect(&server, &token, Some(source)).await?;
                ws.subscribe("e", EVENTS, json!({ "c": conversation }))
                    .await?;
                Ok::<_, anyhow::Error>(ws)
            }
            .await;
            let mut ws = match ws {
                Ok(ws) => {
                    let _ = opened.send(Ok(())).await;
                    ws
                }
                Err(err) => {
                    let _ = opened.send(Err(format!("{err:#}"))).await;
                    return Ok::<Seen, anyhow::Error>((None, None, None));
                }
            };
            drop(opened);
            let (mut first_event, mut first_delta) = (None, None);
            let wait = async {
                loop {
                    let message = ws.next().await?;
                    let recv = frames::now_us();
                    if message["id"] != "e" || message["type"] != "next" {
                        bail!("unexpected message {message}");
                    }
                    if let Some(errors) = message.pointer("/payload/errors") {
                        bail!("the subscription failed: {errors}");
                    }
                    first_event.get_or_insert(recv);
                    let event = &message["payload"]["data"]["conversationEvents"];
                    if event["__typename"] == "MessageDelta" {
                        let text = event["text"].as_str().unwrap_or_default();
                        if let Some(&(_, sent)) = frames::parse(text).first() {
                            first_delta = Some((recv, sent));
                            return Ok(());
                        }
                    }
                }
            };
            let waited = tokio::time::timeout(Duration::from_secs(120), async {
                // The socket stays idle until the trigger; then the first delta ends the wait.
                let _ = trigger.wait_for(|t| *t).await;
                wait.await
            })
            .await;
            let missed = match waited {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(format!("{err:#}")),
                Err(_) => Some("no delta within 120 s".to_owned()),
            };
            ws.close().await;
            Ok((first_event, first_delta, missed))
        }));
    }
    drop(opened_tx);
    let (mut opened, mut open_errors, mut first_open_error) = (0usize, 0usize, None);
    while let Some(result) = opened_rx.recv().await {
        match result {
            Ok(()) => opened += 1,
            Err(err) => {
                open_errors += 1;
                first_open_error.get_or_insert(err);
            }
        }
        if (opened + open_errors) % 2000 == 0 {
            eprintln!("idle: {opened} open, {open_errors} failed");
        }
    }
    let open_s = open_start.elapsed().as_secs_f64();
    // The subscriptions start on the server after `subscribe` is read: wait until it counts them.
    let counted = async {
        loop {
            let active = subscriptions_active(&metrics_url).await?;
            if active >= base_subs + opened as u64 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), counted)
        .await
        .context("the server never counted every subscription")??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = stats::rss_kib(args.server_pid)?;
    eprintln!(
        "idle: {opened} subscriptions in {open_s:.1} s; server RSS {} → {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );

    // One event for everyone: a short answer in the conversation.
    let shape = Shape {
        chunks: 4,
        interval: Duration::from_millis(20),
        first: Duration::from_millis(20),
    };
    trigger_tx.send(true)?;
    let sent_us = frames::now_us();
    http.exec(
        Some(&account.token),
        "mutation($c: ID!, $t: String!) { sendMessage(input: { conversationId: $c, content: $t }) { assistantMessage { id } } }",
        json!({ "c": conversation, "t": shape.prompt() }),
    )
    .await
    .context("the trigger sendMessage failed")?;
    let (mut event_h, mut delta_h) = (stats::histogram(), stats::histogram());
    let (mut delivered, mut deltas, mut missed, mut first_miss) = (0usize, 0usize, 0usize, None);
    for s in subscribers {
        let (event, delta, miss) = s.await??;
        if let Some(reason) = miss {
            missed += 1;
            first_miss.get_or_insert(reason);
        }
        if let Some(at) = event {
            delivered += 1;
            let _ = event_h.record(at.saturating_sub(sent_us));
        }
        if let Some((recv, sent)) = delta {
            deltas += 1;
            let _ = delta_h.record(recv.saturating_sub(sent));
        }
    }
    let record = IdleRecord {
        kind: "idle",
        subscriptions: n,
        opened,
        open_errors,
        first_open_error,
        open_s,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        kib_per_subscription: (rss_after.saturating_sub(rss_before)) as f64 / opened.max(1) as f64,
        delivered,
        deltas_delivered: deltas,
        missed,
        first_miss,
        first_event: Summary::of(&event_h),
        first_delta: Summary::of(&delta_h),
    };
    eprintln!(
        "idle: {:.1} KiB per subscription; first event to {delivered}/{opened}: p50 {:.1} p99 {:.1} max {:.1} ms; first delta to {deltas}: p99 {:.1} ms",
        record.kib_per_subscription,
        record.first_event.p50_us as f64 / 1000.0,
        record.first_event.p99_us as f64 / 1000.0,
        record.first_event.max_us as f64 / 1000.0,
        record.first_delta.p99_us as f64 / 1000.0,
    );
    if let Some(e) = &record.first_miss {
        eprintln!("  {missed} subscribers missed the delta; first: {e}");
    }
    if let Some(e) = &record.first_open_error {
        eprintln!("  first open error: {e}");
    }
    stats::append_result(out, &serde_json::to_value(&record)?)?;
    Ok(())
}

/// The server's `colloquy_subscriptions_active` gauge.
async fn subscriptions_active(url: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("colloquy_subscriptions_active"))
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}
