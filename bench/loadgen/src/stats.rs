//! Latency histograms, their summaries, the results file, and a sampler of another
//! process's memory and CPU read from `/proc`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A histogram of microseconds, 3 significant digits, growing as needed.
pub fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// Appends one JSON record to the results file (JSON Lines), read back by `report`.
pub fn append_result(path: &Path, record: &serde_json::Value) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{record}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Resident memory of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the process running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time `pid` has used so far, user plus system (`utime + stime` of `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses; fields are counted after its `)`.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based, proc(5)).
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc/<pid>/stat")
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

/// `pid` and every process descending from it (a proxy's worker processes, say).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// RSS and CPU time summed over `pid`'s process tree (processes that vanished count 0).
fn tree_usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    rss_kib(pid)?;
    let tree = process_tree(pid);
    let rss = tree.iter().filter_map(|p| rss_kib(*p).ok()).sum();
    let cpu = tree.iter().filter_map(|p| cpu_time(*p).ok()).sum();
    Ok((rss, cpu))
}

/// What a process used during a measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcUsage {
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    pub cpu_s: f64,
    pub wall_s: f64,
    /// CPU seconds per wall second, in percent (200 % = two cores busy).
    pub cpu_pct: f64,
}

/// Samples a process's RSS every 50 ms until finished; CPU is the difference of the
/// counters at the ends. Both are summed over the process and its descendants (for a
/// pre-forking proxy, shared pages are then counted once per worker).
pub struct ProcSampler {
    pid: u32,
    started: Instant,
    cpu_start: Duration,
    rss_start: u64,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl ProcSampler {
    pub fn start(pid: u32) -> anyhow::Result<ProcSampler> {
        let (rss_start, cpu_start) = tree_usage(pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = rss_start;
            while !flag.load(Ordering::Relaxed) {
                if let Ok((rss, _)) = tree_usage(pid) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Ok(ProcSampler {
            pid,
            started: Instant::now(),
            cpu_start,
            rss_start,
            stop,
            task,
        })
    }

    pub async fn finish(self) -> anyhow::Result<ProcUsage> {
        let wall = self.started.elapsed();
        let (rss_end, cpu_end) = tree_usage(self.pid)?;
        let cpu = cpu_end.saturating_sub(self.cpu_start);
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.task.await.unwrap_or(0).max(rss_end);
        Ok(ProcUsage {
            rss_start_kib: self.rss_start,
            rss_peak_kib: peak,
            rss_end_kib: rss_end,
            cpu_s: cpu.as_secs_f64(),
            wall_s: wall.as_secs_f64(),
            cpu_pct: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        })
    }
}

/// A sampler when a pid was given.
pub fn sampler(pid: Option<u32>) -> anyhow::Result<Option<ProcSampler>> {
    pid.map(ProcSampler::start).transpose()
}

pub async fn finish(sampler: Option<ProcSampler>) -> anyhow::Result<Option<ProcUsage>> {
    match sampler {
        Some(s) => Ok(Some(s.finish().await?)),
        None => Ok(None),
    }
}

/// How busy the whole machine and this load generator were during a measurement.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MachineUsage {
    /// Busy share of all cores (100 % = every core busy), from `/proc/stat`.
    pub busy_pct: f64,
    /// This process's CPU, in percent of one core.
    pub loadgen_cpu_pct: f64,
}

/// (busy, total) jiffies of all cores, from the first line of `/proc/stat`.
fn machine_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

pub struct MachineSampler {
    started: Instant,
    jiffies: (u64, u64),
    own_cpu: Duration,
}

impl MachineSampler {
    pub fn start() -> anyhow::Result<MachineSampler> {
        Ok(MachineSampler {
            started: Instant::now(),
            jiffies: machine_jiffies()?,
            own_cpu: cpu_time(std::process::id())?,
        })
    }

    pub fn finish(self) -> anyhow::Result<MachineUsage> {
        let (busy, total) = machine_jiffies()?;
        let (busy, total) = (busy - self.jiffies.0, total - self.jiffies.1);
        let own = cpu_time(std::process::id())?.saturating_sub(self.own_cpu);
        Ok(MachineUsage {
            busy_pct: 100.0 * busy as f64 / total.max(1) as f64,
            loadgen_cpu_pct: 100.0 * own.as_secs_f64()
                / self.started.elapsed().as_secs_f64().max(1e-9),
        })
    }
}
