//! Renders `BENCHMARKS.md` from the results file the scenarios appended to.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

pub struct Meta {
    pub commit: String,
    pub command: String,
    pub date: String,
    pub duration: String,
    pub peer: String,
    pub notes: Vec<String>,
}

fn ms(us: &Value) -> String {
    us.as_f64()
        .map(|v| format!("{:.2}", v / 1000.0))
        .unwrap_or_else(|| "–".to_owned())
}

fn num(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "–".to_owned())
}

/// A CPU share: of one core for a process, of all cores for the machine.
fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|c| format!("{c:.0} %"))
        .unwrap_or_else(|| "–".to_owned())
}

fn mib(kib: &Value) -> String {
    kib.as_f64()
        .map(|v| format!("{:.0} MiB", v / 1024.0))
        .unwrap_or_else(|| "–".to_owned())
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(prefix)
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
    })
}

fn machine() -> Vec<(&'static str, String)> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".to_owned());
    let memory = first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| {
            m.split_whitespace()
                .next()
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    vec![
        ("CPU", format!("{cpu}, {cores} cores (`nproc`)")),
        ("Memory", memory),
        ("Kernel", format!("Linux {kernel}")),
    ]
}

/// The stream records of one source, in the order they ran.
fn streams<'a>(records: &'a [Value], source: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "stream" && r["source"] == source)
        .collect()
}

fn find_stream<'a>(
    records: &'a [Value],
    source: &str,
    mode: &str,
    concurrency: u64,
) -> Option<&'a Value> {
    records.iter().find(|r| {
        r["kind"] == "stream"
            && r["source"] == source
            && r["mode"] == mode
            && r["concurrency"] == concurrency
    })
}

fn run_label(r: &Value) -> String {
    format!(
        "{} × {} ({} chunks{})",
        r["concurrency"],
        r["mode"].as_str().unwrap_or_default(),
        r["chunks"],
        match r["interval_ms"].as_u64() {
            Some(0) => ", no interval".to_owned(),
            Some(i) => format!(" @ {i} ms"),
            None => String::new(),
        }
    )
}

fn stream_tables(out: &mut String, runs: &[&Value], process_name: &str) {
    out.push_str("| run | figure (ms) | p50 | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|\n");
    for r in runs {
        let mut figures = vec![
            ("added time to first token", &r["ttft"]),
            ("added latency per frame", &r["frame_latency"]),
            ("added gap between frames", &r["gap"]),
        ];
        if !r["mutation"].is_null() {
            figures.push(("`sendMessage` round trip", &r["mutation"]));
        }
        for (name, s) in figures {
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} | {} |",
                run_label(r),
                ms(&s["p50_us"]),
                ms(&s["p90_us"]),
                ms(&s["p99_us"]),
                ms(&s["max_us"])
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| run | chats | failed | frames (expected) | lost | duplicated | seq gaps / repeats | wall s | frames/s | {process_name} peak RSS | {process_name} CPU | load generator CPU | machine busy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let p = &r["process"];
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            run_label(r),
            r["chats"],
            r["failed_chats"],
            r["frames"],
            r["expected_frames"],
            r["lost"],
            r["duplicated"],
            r["seq_gaps"],
            r["seq_dups"],
            num(&r["wall_s"], 2),
            num(&r["frames_per_s"], 0),
            mib(&p["rss_peak_kib"]),
            pct(&p["cpu_pct"]),
            pct(&r["machine"]["loadgen_cpu_pct"]),
            pct(&r["machine"]["busy_pct"]),
        );
    }
    let errors: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r["first_error"]
                .as_str()
                .map(|e| format!("- {}: first error: `{}`", run_label(r), e.replace('`', "'")))
        })
        .collect();
    if !errors.is_empty() {
        out.push('\n');
        out.push_str(&errors.join("\n"));
        out.push('\n');
    }
}

struct Target {
    name: &'static str,
    measured: String,
    met: Option<bool>,
}

fn targets(records: &[Value], peer: &str) -> Vec<Target> {
    let mut t = Vec::new();
    let us = |v: &Value| v.as_f64().unwrap_or(f64::NAN);

    let ttft = find_stream(records, "colloquy", "paced", 100);
    t.push(Target {
        name: "Added time to first token, p99, 100 concurrent chats ≤ 5 ms",
        measured: ttft.map_or("not run".to_owned(), |r| {
            format!("{} ms", ms(&r["ttft"]["p99_us"]))
        }),
        met: ttft.map(|r| us(&r["ttft"]["p99_us"]) <= 5000.0),
    });
    let gap = find_stream(records, "colloquy", "paced", 200);
    t.push(Target {
        name: "Added gap between tokens, p99, 200 streams ≤ 2 ms",
        measured: gap.map_or("not run".to_owned(), |r| {
            format!("{} ms", ms(&r["gap"]["p99_us"]))
        }),
        met: gap.map(|r| us(&r["gap"]["p99_us"]) <= 2000.0),
    });
    let ours = records
        .iter()
        .rfind(|r| r["kind"] == "stream" && r["source"] == "colloquy" && r["mode"] == "max");
    let theirs = records
        .iter()
        .rfind(|r| r["kind"] == "stream" && r["source"] == peer && r["mode"] == "max");
    let ratio = match (ours, theirs) {
        (Some(o), Some(p)) => Some(us(&o["frames_per_s"]) / us(&p["frames_per_s"])),
        _ => None,
    };
    t.push(Target {
        name: "Relayed frames per second ≥ 10 × LiteLLM's (saturated, same machine)",
        measured: match (ours, theirs, ratio) {
            (Some(o), Some(p), Some(r)) => format!(
                "{r:.1} × ({} vs {} frames/s)",
                num(&o["frames_per_s"], 0),
                num(&p["frames_per_s"], 0)
            ),
            (Some(o), None, _) => format!(
                "{} frames/s; LiteLLM not measured",
                num(&o["frames_per_s"], 0)
            ),
            _ => "not run".to_owned(),
        },
        met: ratio.map(|r| r >= 10.0),
    });
    let idle = records.iter().rfind(|r| r["kind"] == "idle");
    t.push(Target {
        name: "Memory per idle subscription ≤ 30 KB",
        measured: idle.map_or("not run".to_owned(), |r| {
            format!(
                "{:.1} KB ({} subscriptions)",
                us(&r["kib_per_subscription"]) * 1.024,
                r["opened"]
            )
        }),
        met: idle.map(|r| us(&r["kib_per_subscription"]) * 1.024 <= 30.0),
    });
    let reads70 = records
        .iter()
        .rfind(|r| r["kind"] == "reads" && r["mode"] == "rate" && r["percent"] == 70);
    t.push(Target {
        name: "Reads p99 at 70 % of the maximum rate ≤ 10 ms",
        measured: reads70.map_or("not run".to_owned(), |r| {
            format!(
                "{} ms at {}/s",
                ms(&r["latency"]["p99_us"]),
                num(&r["target_rps"], 0)
            )
        }),
        met: reads70.map(|r| us(&r["latency"]["p99_us"]) <= 10_000.0),
    });
    let phase = |name: &str| {
        records
            .iter()
            .rfind(|r| r["kind"] == "logins" && r["phase"] == name)
    };
    let (alone, with) = (phase("alone"), phase("with_logins"));
    let rise = match (alone, with) {
        (Some(a), Some(w)) => {
            Some(us(&w["read"]["latency"]["p99_us"]) / us(&a["read"]["latency"]["p99_us"]) - 1.0)
        }
        _ => None,
    };
    t.push(Target {
        name: "Read p99 up by ≤ 20 % during logins",
        measured: match (alone, with, rise) {
            (Some(a), Some(w), Some(rise)) => format!(
                "{:+.0} % ({} → {} ms, {} logins/s)",
                rise * 100.0,
                ms(&a["read"]["latency"]["p99_us"]),
                ms(&w["read"]["latency"]["p99_us"]),
                num(&w["logins_per_s"], 1)
            ),
            _ => "not run".to_owned(),
        },
        met: rise.map(|r| r <= 0.20),
    });
    t
}

pub fn render(results: &Path, meta: &Meta) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("cannot read {}", results.display()))?;
    let records: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("the results file holds a line that is not JSON")?;
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Written by `bench/run.sh` (see `bench/README.md` for what each scenario does and how \
         each figure is measured). Rerun it rather than editing this file.\n\n",
    );
    out.push_str("| | |\n|---|---|\n");
    for (k, v) in machine() {
        let _ = writeln!(out, "| {k} | {v} |");
    }
    let _ = writeln!(out, "| Commit | {} |", meta.commit);
    let _ = writeln!(out, "| Command | `{}` |", meta.command);
    let _ = writeln!(out, "| Date | {} |", meta.date);
    let _ = writeln!(out, "| Run time | {} |", meta.duration);
    out.push_str(
        "\nThe server, Postgres, Redis, the fake upstream, the load generator (and LiteLLM for the \
         peer scenario) all run on this one machine and share its cores, so every figure includes \
         that contention. All traffic is on loopback. Latencies are in milliseconds. A process's CPU \
         is in percent of one core (200 % = both cores of a 2-core machine); “machine busy” is \
         the share of all cores that were busy.\n",
    );

    out.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for t in targets(&records, &meta.peer) {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", t.name, t.measured);
    }

    let ours = streams(&records, "colloquy");
    if !ours.is_empty() {
        out.push_str(
            "\n## 1. Relay: chats through Colloquy\n\nEach client holds one WebSocket \
             (`graphql-transport-ws`), sends `sendMessage`, subscribes to `messageStream` as soon \
             as the mutation returns, and reads to `MessageFinished`; the server streams from the \
             fake upstream. \"Added\" is measured against the send time the upstream wrote into \
             each chunk. `paced` runs use the default shape: 64 chunks 20 ms apart, the first 200 ms \
             after the request (a fast hosted model's time to first token, longer than the \
             `sendMessage` round trip, so the client is subscribed when the first chunk comes). \
             `max` runs send chunks with no interval, so frames/s is what the path sustains. \
             Frames/s counts from the first chunk sent to the last frame received.\n\n",
        );
        stream_tables(&mut out, &ours, "server");
    }
    let base = streams(&records, "upstream");
    if !base.is_empty() {
        out.push_str(
            "\n## 2. Baseline: the same clients reading the fake upstream directly\n\nOpenAI-style \
             Server-Sent Events straight from the fake upstream: the floor that the relay's \
             \"added\" figures sit on (client parsing, scheduling on a shared machine).\n\n",
        );
        stream_tables(&mut out, &base, "upstream");
    }
    let peer = streams(&records, &meta.peer);
    out.push_str("\n## 3. Peer: LiteLLM relaying the same streams\n\n");
    if peer.is_empty() {
        out.push_str("Not run (see the notes below).\n");
    } else {
        out.push_str(
            "The same OpenAI-compatible client as the baseline, pointed at a LiteLLM proxy whose \
             model `bench` is the fake upstream. Process figures are LiteLLM's whole process tree \
             (the master and its workers).\n\n",
        );
        stream_tables(&mut out, &peer, "LiteLLM");
        out.push_str(
            "\nColloquy beside LiteLLM (ratio > 1 favours Colloquy: LiteLLM's latency ÷ ours, \
             our frames/s ÷ LiteLLM's):\n\n| run | frames/s | TTFT p50 | TTFT p99 | frame latency p99 | gap p99 |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for p in &peer {
            let (Some(mode), Some(c)) = (p["mode"].as_str(), p["concurrency"].as_u64()) else {
                continue;
            };
            let Some(o) = find_stream(&records, "colloquy", mode, c) else {
                continue;
            };
            let ratio = |a: f64, b: f64| {
                if b > 0.0 && a.is_finite() && a / b < 1.0 {
                    format!("{:.2} ×", a / b)
                } else if b > 0.0 && a.is_finite() {
                    format!("{:.1} ×", a / b)
                } else {
                    "–".to_owned()
                }
            };
            let f = |r: &Value, k: &str, q: &str| r[k][q].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                run_label(p),
                ratio(
                    o["frames_per_s"].as_f64().unwrap_or(f64::NAN),
                    p["frames_per_s"].as_f64().unwrap_or(0.0)
                ),
                ratio(f(p, "ttft", "p50_us"), f(o, "ttft", "p50_us")),
                ratio(f(p, "ttft", "p99_us"), f(o, "ttft", "p99_us")),
                ratio(
                    f(p, "frame_latency", "p99_us"),
                    f(o, "frame_latency", "p99_us")
                ),
                ratio(f(p, "gap", "p99_us"), f(o, "gap", "p99_us")),
            );
        }
    }

    let reads: Vec<&Value> = records.iter().filter(|r| r["kind"] == "reads").collect();
    if !reads.is_empty() {
        out.push_str(
            "\n## 4. Reads: `conversations(first: 20)` with previews\n\nOne workspace seeded with \
             10,000 conversations and 200,000 messages. `max`: closed loop, each client sends its \
             next request when the previous one is answered. Fixed rates: open loop, latency \
             measured from each request's scheduled time (no coordinated omission).\n\n\
             | load | target /s | achieved /s | p50 | p90 | p99 | max | errors | server CPU | machine busy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in reads {
            let load = match r["mode"].as_str() {
                Some("max") => format!("maximum ({} clients)", r["concurrency"]),
                _ => format!("{} % of maximum", r["percent"]),
            };
            let l = &r["latency"];
            let _ = writeln!(
                out,
                "| {load} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                num(&r["target_rps"], 0),
                num(&r["achieved_rps"], 0),
                ms(&l["p50_us"]),
                ms(&l["p90_us"]),
                ms(&l["p99_us"]),
                ms(&l["max_us"]),
                r["errors"],
                pct(&r["process"]["cpu_pct"]),
                pct(&r["machine"]["busy_pct"]),
            );
        }
    }

    if let Some(r) = records.iter().rfind(|r| r["kind"] == "idle") {
        out.push_str(
            "\n## 5. Idle subscriptions\n\nWebSocket connections, each with one \
             `conversationEvents` subscription on the same conversation, opened from several \
             127.0.0.x source addresses. Memory: the server's RSS after all were open minus before, \
             per subscription. Delivery: one `sendMessage` into the conversation; time from \
             sending it to each subscriber's first event (`MessageCreated`), and the added latency \
             of each subscriber's first delta.\n\n",
        );
        let _ = writeln!(
            out,
            "| subscriptions | opened (failed) | open time | server RSS before → after | per subscription |\n|---:|---:|---:|---:|---:|\n| {} | {} ({}) | {} s | {} → {} | {:.1} KiB ({:.1} KB) |\n",
            r["subscriptions"],
            r["opened"],
            r["open_errors"],
            num(&r["open_s"], 1),
            mib(&r["rss_before_kib"]),
            mib(&r["rss_after_kib"]),
            r["kib_per_subscription"].as_f64().unwrap_or(f64::NAN),
            r["kib_per_subscription"].as_f64().unwrap_or(f64::NAN) * 1.024,
        );
        out.push_str("| delivery (ms) | received by | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
        for (name, key, count) in [
            (
                "first event after `sendMessage`",
                "first_event",
                "delivered",
            ),
            (
                "added latency of the first delta",
                "first_delta",
                "deltas_delivered",
            ),
        ] {
            let s = &r[key];
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                r[count],
                ms(&s["p50_us"]),
                ms(&s["p90_us"]),
                ms(&s["p99_us"]),
                ms(&s["max_us"])
            );
        }
        if let Some(e) = r["first_miss"].as_str() {
            let _ = writeln!(
                out,
                "\n{} subscribers got no delta; the first of them: `{}`",
                r["missed"],
                e.replace('`', "'")
            );
        }
        if let Some(e) = r["first_open_error"].as_str() {
            let _ = writeln!(
                out,
                "\nFirst error opening a subscription: `{}`",
                e.replace('`', "'")
            );
        }
    }

    let logins: Vec<&Value> = records.iter().filter(|r| r["kind"] == "logins").collect();
    if !logins.is_empty() {
        out.push_str(
            "\n## 6. Logins during a read load\n\nThe fixed-rate read load alone, then again while \
             clients log in back to back (argon2id verification each).\n\n\
             | phase | read rate /s | read p50 | p90 | p99 | max | read errors | login clients | logins/s | login p50 | login p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in logins {
            let l = &r["read"]["latency"];
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["phase"].as_str().unwrap_or_default().replace('_', " "),
                num(&r["read_rps"], 0),
                ms(&l["p50_us"]),
                ms(&l["p90_us"]),
                ms(&l["p99_us"]),
                ms(&l["max_us"]),
                r["read"]["errors"],
                r["login_clients"],
                num(&r["logins_per_s"], 1),
                ms(&r["login_latency"]["p50_us"]),
                ms(&r["login_latency"]["p99_us"]),
            );
        }
    }

    if !meta.notes.is_empty() {
        out.push_str("\n## Notes\n\n");
        for n in &meta.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    Ok(out)
}
