//! Streaming scenarios: chats relayed by Colloquy (`relay`), and the same clients reading an
//! OpenAI-compatible endpoint directly (`direct`: the fake upstream itself for the baseline,
//! or a peer proxy such as LiteLLM in front of it).
//!
//! Each of N clients starts at a point spread evenly over the ramp, then runs `rounds` chats
//! one after the other, so that once the ramp is over all N are streaming at once. Every frame
//! received is stamped with the client's clock and matched, through its marker
//! (`frames`), to the moment the upstream sent it. From those pairs:
//!
//! - **added TTFT** (per chat): receive time of the first frame − send time of chunk 0;
//! - **added latency** (per frame): receive time − send time;
//! - **added gap** (per consecutive pair of frames of a chat): receive gap − send gap, counted
//!   as 0 when negative (the second frame caught up);
//! - **lost / duplicated**: chunk indices never seen / seen more than once (relay also checks
//!   that `seq` runs 1, 2, 3 … with no gap or repeat);
//! - **frames/s**: all frames received ÷ the time from the first chunk the upstream sent to
//!   the last frame received (request set-up before the first chunk is left out).
//!
//! With `--server-pid` (or `--peer-pid`), that process's peak RSS and CPU (user + system
//! seconds ÷ wall seconds) over the same window are reported too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::frames::{self, Shape};
use crate::gql::{Http, Ws};
use crate::stats::{self, MachineSampler, MachineUsage, ProcUsage, Summary};

/// What one client saw during one chat.
#[derive(Debug, Default)]
struct ChatTrace {
    /// (receive time, chunk index, send time), µs since the epoch, in receive order.
    frames: Vec<(u64, usize, u64)>,
    /// Relay only: a `seq` that skipped ahead, or came again.
    seq_gaps: u64,
    seq_dups: u64,
    /// Relay only: the `sendMessage` round trip.
    mutation_us: Option<u64>,
    error: Option<String>,
}

/// The figures of one run, as written to the results file.
#[derive(Debug, Serialize)]
pub struct StreamRecord {
    pub kind: &'static str,
    /// `colloquy`, `upstream` (the baseline) or the peer's name.
    pub source: String,
    /// `paced` (the shape's interval) or `max` (no interval: as fast as the path allows).
    pub mode: String,
    pub concurrency: usize,
    pub rounds: usize,
    pub chunks: usize,
    pub interval_ms: u64,
    pub chats: usize,
    pub failed_chats: usize,
    pub first_error: Option<String>,
    pub expected_frames: u64,
    pub frames: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub seq_gaps: u64,
    pub seq_dups: u64,
    pub wall_s: f64,
    pub frames_per_s: f64,
    pub ttft: Summary,
    pub frame_latency: Summary,
    pub gap: Summary,
    pub mutation: Option<Summary>,
    pub process: Option<ProcUsage>,
    pub machine: MachineUsage,
}

struct Aggregate {
    chunks: usize,
    chats: usize,
    failed: usize,
    first_error: Option<String>,
    frames: u64,
    lost: u64,
    dup: u64,
    seq_gaps: u64,
    seq_dups: u64,
    first_sent_us: u64,
    last_us: u64,
    ttft: hdrhistogram::Histogram<u64>,
    latency: hdrhistogram::Histogram<u64>,
    gap: hdrhistogram::Histogram<u64>,
    mutation: hdrhistogram::Histogram<u64>,
}

impl Aggregate {
    fn new(chunks: usize) -> Aggregate {
        Aggregate {
            chunks,
            chats: 0,
            failed: 0,
            first_error: None,
            frames: 0,
            lost: 0,
            dup: 0,
            seq_gaps: 0,
            seq_dups: 0,
            first_sent_us: u64::MAX,
            last_us: 0,
            ttft: stats::histogram(),
            latency: stats::histogram(),
            gap: stats::histogram(),
            mutation: stats::histogram(),
        }
    }

    fn add(&mut self, trace: ChatTrace) {
        self.chats += 1;
        if let Some(err) = trace.error {
            self.failed += 1;
            self.first_error.get_or_insert(err);
        }
        if let Some(m) = trace.mutation_us {
            let _ = self.mutation.record(m);
        }
        self.seq_gaps += trace.seq_gaps;
        self.seq_dups += trace.seq_dups;
        let mut seen = vec![false; self.chunks];
        for &(recv, index, sent) in &trace.frames {
            self.frames += 1;
            self.last_us = self.last_us.max(recv);
            self.first_sent_us = self.first_sent_us.min(sent);
            let _ = self.latency.record(recv.saturating_sub(sent));
            match seen.get_mut(index) {
                Some(s) if !*s => *s = true,
                _ => self.dup += 1,
            }
        }
        self.lost += seen.iter().filter(|s| !**s).count() as u64;
        if let Some(&(recv, 0, sent)) = trace.frames.first() {
            let _ = self.ttft.record(recv.saturating_sub(sent));
        }
        for pair in trace.frames.windows(2) {
            let (r0, _, s0) = pair[0];
            let (r1, _, s1) = pair[1];
            let added = (r1 as i64 - r0 as i64) - (s1 as i64 - s0 as i64);
            let _ = self.gap.record(added.max(0) as u64);
        }
    }

    fn record(
        self,
        common: Common,
        process: Option<ProcUsage>,
        machine: MachineUsage,
    ) -> StreamRecord {
        let wall_s = (self.last_us.saturating_sub(self.first_sent_us)) as f64 / 1e6;
        StreamRecord {
            kind: "stream",
            source: common.source,
            mode: common.mode,
            concurrency: common.concurrency,
            rounds: common.rounds,
            chunks: common.shape.chunks,
            interval_ms: common.shape.interval.as_millis() as u64,
            chats: self.chats,
            failed_chats: self.failed,
            first_error: self.first_error,
            expected_frames: (self.chats * self.chunks) as u64,
            frames: self.frames,
            lost: self.lost,
            duplicated: self.dup,
            seq_gaps: self.seq_gaps,
            seq_dups: self.seq_dups,
            wall_s,
            frames_per_s: self.frames as f64 / wall_s.max(1e-9),
            ttft: Summary::of(&self.ttft),
            frame_latency: Summary::of(&self.latency),
            gap: Summary::of(&self.gap),
            mutation: (!self.mutation.is_empty()).then(|| Summary::of(&self.mutation)),
            process,
            machine,
        }
    }
}

/// What both scenarios share.
#[derive(Debug, Clone)]
pub struct Common {
    pub source: String,
    pub mode: String,
    pub concurrency: usize,
    pub rounds: usize,
    pub ramp: Duration,
    pub shape: Shape,
    /// The process whose RSS and CPU are sampled.
    pub pid: Option<u32>,
}

impl Common {
    /// When client `i` starts, after the go signal.
    fn offset(&self, i: usize) -> Duration {
        self.ramp.mul_f64(i as f64 / self.concurrency.max(1) as f64)
    }
}

fn print_summary(r: &StreamRecord) {
    let ms = |us: u64| us as f64 / 1000.0;
    eprintln!(
        "{} {} x{}: {} chats ({} failed), {}/{} frames, lost {}, dup {}, {:.0} frames/s, ttft p50 {:.2} p99 {:.2} max {:.2} ms, frame p99 {:.2} ms, gap p99 {:.2} ms{}",
        r.source,
        r.mode,
        r.concurrency,
        r.chats,
        r.failed_chats,
        r.frames,
        r.expected_frames,
        r.lost,
        r.duplicated,
        r.frames_per_s,
        ms(r.ttft.p50_us),
        ms(r.ttft.p99_us),
        ms(r.ttft.max_us),
        ms(r.frame_latency.p99_us),
        ms(r.gap.p99_us),
        r.process
            .map(|p| format!(
                ", process peak RSS {} MiB, CPU {:.0} %",
                p.rss_peak_kib / 1024,
                p.cpu_pct
            ))
            .unwrap_or_default()
    );
    eprintln!(
        "  machine busy {:.0} % of all cores, load generator CPU {:.0} %",
        r.machine.busy_pct, r.machine.loadgen_cpu_pct
    );
    if let Some(err) = &r.first_error {
        eprintln!("  first error: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Relay: through Colloquy over WebSocket.

const SEND: &str = "mutation($c: ID!, $t: String!) { sendMessage(input: { conversationId: $c, content: $t }) { assistantMessage { id } } }";
const STREAM: &str = "subscription($id: ID!) { messageStream(messageId: $id) { __typename ... on MessageDelta { seq text } ... on MessageFinished { message { status } } } }";

/// Accounts and conversations prepared before the clock starts.
pub struct RelaySetup {
    pub server: String,
    pub model: String,
    pub chats_per_user: usize,
    /// Prefix of the accounts' emails (unique per run).
    pub run_id: String,
}

/// Runs the relay scenario at each concurrency and appends one record per level.
pub async fn relay(
    setup: &RelaySetup,
    levels: &[usize],
    common: Common,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let http = Http::new(&setup.server)?;
    let most = levels.iter().copied().max().unwrap_or(0);
    let users = most.div_ceil(setup.chats_per_user.max(1)).max(1);
    eprintln!("relay: registering {users} accounts");
    let mut accounts = Vec::new();
    for u in 0..users {
        let email = format!("{}-{u}@bench.test", setup.run_id);
        accounts.push(http.register(&email).await?);
    }
    // One chat before any measurement: the server's first generation pays one-time costs
    // (building the tokenizer's tables, opening pooled connections).
    {
        let account = &accounts[0];
        let conversation = http
            .create_conversation(&account.token, &account.personal_workspace, &setup.model)
            .await?;
        let mut ws = Ws::connect(&setup.server, &account.token, None).await?;
        let trace = relay_chat(&mut ws, &conversation, 0, &common.shape).await;
        if let Some(err) = trace.error {
            bail!("the warm-up chat failed: {err}");
        }
        ws.close().await;
    }
    // One chat before any measurement: the server's first generation pays one-time costs
    // (building the tokenizer's tables, opening pooled connections).
    {
        let account = &accounts[0];
        let conversation = http
            .create_conversation(&account.token, &account.personal_workspace, &setup.model)
            .await?;
        let mut ws = Ws::connect(&setup.server, &account.token, None).await?;
        let trace = relay_chat(&mut ws, &conversation, 0, &common.shape).await;
        if let Some(err) = trace.error {
            bail!("the warm-up chat failed: {err}");
        }
        ws.close().await;
    }
    for &n in levels {
        let common = Common {
            concurrency: n,
            ..common.clone()
        };
        // One conversation per client, created before the measurement.
        let gate = Arc::new(Semaphore::new(32));
        let mut creating = Vec::new();
        for i in 0..n {
            let account = accounts[i % users].clone();
            let (http, model, gate) = (http.clone(), setup.model.clone(), gate.clone());
            creating.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let id = http
                    .create_conversation(&account.token, &account.personal_workspace, &model)
                    .await?;
                Ok::<_, anyhow::Error>((account.token, id))
            }));
        }
        let mut chats = Vec::new();
        for c in creating {
            chats.push(c.await??);
        }
        // Sockets opened (and acknowledged) before the measurement too.
        let (go_tx, go_rx) = watch::channel(None::<Instant>);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(n.max(1));
        let mut clients = Vec::new();
        for (i, (token, conversation)) in chats.into_iter().enumerate() {
            let (server, common, gate) = (setup.server.clone(), common.clone(), gate.clone());
            let (mut go, ready) = (go_rx.clone(), ready_tx.clone());
            clients.push(tokio::spawn(async move {
                let ws = {
                    let _permit = gate.acquire().await?;
                    Ws::connect(&server, &token, None).await
                };
                let mut ws = match ws {
                    Ok(ws) => {
                        let _ = ready.send(Ok(())).await;
                        ws
                    }
                    Err(err) => {
                        let _ = ready.send(Err(anyhow::anyhow!("{err:#}"))).await;
                        return Err(err);
                    }
                };
                let start = *go.wait_for(Option::is_some).await?;
                let start = start.context("no start time")?;
                tokio::time::sleep_until((start + common.offset(i)).into()).await;
                let mut traces = Vec::new();
                for round in 0..common.rounds {
                    traces.push(relay_chat(&mut ws, &conversation, round, &common.shape).await);
                }
                ws.close().await;
                Ok::<_, anyhow::Error>(traces)
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(err)) => bail!("cannot open a client's WebSocket: {err}"),
                None => bail!("a client ended before connecting"),
            }
        }
        let sampler = stats::sampler(common.pid)?;
        let machine = MachineSampler::start()?;
        go_tx.send(Some(Instant::now()))?;
        let mut aggregate = Aggregate::new(common.shape.chunks);
        for client in clients {
            match client.await? {
                Ok(traces) => traces.into_iter().for_each(|t| aggregate.add(t)),
                Err(err) => aggregate.add(ChatTrace {
                    error: Some(format!("{err:#}")),
                    ..ChatTrace::default()
                }),
            }
        }
        let process = stats::finish(sampler).await?;
        let machine = machine.finish()?;
        let record = aggregate.record(common, process, machine);
        print_summary(&record);
        stats::append_result(out, &serde_json::to_value(&record)?)?;
    }
    Ok(())
}

/// One chat: `sendMessage`, then `messageStream` of the answer until `MessageFinished`.
async fn relay_chat(ws: &mut Ws, conversation: &str, round: usize, shape: &Shape) -> ChatTrace {
    let mut trace = ChatTrace::default();
    if let Err(err) = relay_chat_inner(ws, conversation, round, shape, &mut trace).await {
        trace.error = Some(format!("{err:#}"));
    }
    trace
}

async fn relay_chat_inner(
    ws: &mut Ws,
    conversation: &str,
    round: usize,
    shape: &Shape,
    trace: &mut ChatTrace,
) -> anyhow::Result<()> {
    let sent = Instant::now();
    let data = ws
        .execute(
            &format!("m{round}"),
            SEND,
            json!({ "c": conversation, "t": shape.prompt() }),
        )
        .await?;
    trace.mutation_us = Some(sent.elapsed().as_micros() as u64);
    let message = data
        .pointer("/sendMessage/assistantMessage/id")
        .and_then(Value::as_str)
        .context("sendMessage gave no assistant message")?
        .to_owned();
    let id = format!("s{round}");
    ws.subscribe(&id, STREAM, json!({ "id": message })).await?;
    let mut last_seq = 0i64;
    loop {
        let event = ws.next().await?;
        if event["id"] != id.as_str() {
            continue;
        }
        match event["type"].as_str() {
            Some("next") => {}
            Some("complete") => bail!("the stream completed before MessageFinished"),
            Some("error") => bail!("messageStream refused: {}", event["payload"]),
            other => bail!("unexpected message type {other:?}"),
        }
        let recv = frames::now_us();
        if let Some(errors) = event.pointer("/payload/errors") {
            bail!("messageStream failed: {errors}");
        }
        let item = &event["payload"]["data"]["messageStream"];
        match item["__typename"].as_str() {
            Some("MessageDelta") => {
                let seq = item["seq"].as_i64().unwrap_or(-1);
                if seq <= last_seq {
                    trace.seq_dups += 1;
                } else {
                    trace.seq_gaps += (seq - last_seq - 1) as u64;
                    last_seq = seq;
                }
                let text = item["text"].as_str().unwrap_or_default();
                for (index, sent) in frames::parse(text) {
                    trace.frames.push((recv, index, sent));
                }
            }
            Some("MessageFinished") => {
                let status = item.pointer("/message/status").and_then(Value::as_str);
                if status != Some("COMPLETE") {
                    bail!("the message ended {status:?}");
                }
                return Ok(());
            }
            other => bail!("unexpected event {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Direct: an OpenAI-compatible endpoint read over Server-Sent Events.

/// Where `direct` reads from.
pub struct DirectTarget {
    /// e.g. `http://127.0.0.1:9100/v1`
    pub base_url: String,
    pub api_key: String,
    pub model: String,
}

pub async fn direct(
    target: &DirectTarget,
    levels: &[usize],
    common: Common,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(600))
        .build()?;
    let url = format!("{}/chat/completions", target.base_url.trim_end_matches('/'));
    for &n in levels {
        let common = Common {
            concurrency: n,
            ..common.clone()
        };
        let sampler = stats::sampler(common.pid)?;
        let machine = MachineSampler::start()?;
        let start = tokio::time::Instant::now();
        let mut clients = Vec::new();
        for i in 0..n {
            let (client, url, common) = (client.clone(), url.clone(), common.clone());
            let body = json!({
                "model": target.model,
                "messages": [{ "role": "user", "content": common.shape.prompt() }],
                "stream": true,
                "stream_options": { "include_usage": true },
            });
            let key = target.api_key.clone();
            clients.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + common.offset(i)).await;
                let mut traces = Vec::new();
                for _ in 0..common.rounds {
                    let mut trace = ChatTrace::default();
                    if let Err(err) = direct_chat(&client, &url, &key, &body, &mut trace).await {
                        trace.error = Some(format!("{err:#}"));
                    }
                    traces.push(trace);
                }
                traces
            }));
        }
        let mut aggregate = Aggregate::new(common.shape.chunks);
        for client in clients {
            client.await?.into_iter().for_each(|t| aggregate.add(t));
        }
        let process = stats::finish(sampler).await?;
        let machine = machine.finish()?;
        let record = aggregate.record(common, process, machine);
        print_summary(&record);
        stats::append_result(out, &serde_json::to_value(&record)?)?;
    }
    Ok(())
}

async fn direct_chat(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    trace: &mut ChatTrace,
) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .await
        .context("the streaming request failed")?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut finished = false;
    while let Some(piece) = body.next().await {
        let piece = piece.context("reading the stream failed")?;
        let recv = frames::now_us();
        buffer.extend_from_slice(&piece);
        // Events end with a blank line; the last, incomplete one stays in the buffer.
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end.1).collect();
            let event = String::from_utf8_lossy(&event[..end.0]);
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    finished = true;
                    continue;
                }
                let chunk: Value =
                    serde_json::from_str(data).with_context(|| format!("bad SSE data: {data}"))?;
                if let Some(error) = chunk.get("error") {
                    bail!("the stream failed: {error}");
                }
                if let Some(text) = chunk
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                {
                    for (index, sent) in frames::parse(text) {
                        trace.frames.push((recv, index, sent));
                    }
                }
            }
        }
    }
    if !finished {
        bail!("the stream ended without [DONE]");
    }
    Ok(())
}

/// (end of the event's text, end including the blank line) of the first complete event.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 9)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 11)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
    }

    #[test]
    fn lost_and_duplicated_frames_are_counted() {
        let mut a = Aggregate::new(3);
        a.add(ChatTrace {
            frames: vec![(10, 0, 5), (20, 0, 5), (35, 2, 25)],
            ..ChatTrace::default()
        });
        assert_eq!((a.frames, a.lost, a.dup), (3, 1, 1));
        // TTFT 5 µs; gaps: (20-10)-(5-5)=10, (35-20)-(25-5)=-5 → 0.
        assert_eq!(a.ttft.max(), 5);
        assert_eq!(a.gap.max(), 10);
    }
}
