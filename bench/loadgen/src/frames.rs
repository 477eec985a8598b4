//! The chunk text the fake upstream sends, and the stream shape a prompt may ask for.
//!
//! Every chunk's content is `[<index>@<sent>] `: its index from 0 and the moment the
//! upstream handed it to the socket, in microseconds since the Unix epoch. Whatever path a
//! chunk takes (straight from the upstream, through Colloquy, through LiteLLM), a client on
//! the same machine reads the send time back from the text it receives and computes the
//! added latency of that very frame as `receive time - send time`; the index tells lost,
//! repeated and reordered frames apart. Several chunks merged into one delta still parse.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (the clock both ends of a measurement read).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One chunk's content.
pub fn encode(index: usize, sent_us: u64) -> String {
    format!("[{index}@{sent_us}] ")
}

/// Every `(index, sent_us)` marker in `text`, in order.
pub fn parse(text: &str) -> Vec<(usize, u64)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        if let Some((index, sent)) = rest[..close].split_once('@')
            && let (Ok(index), Ok(sent)) = (index.parse(), sent.parse())
        {
            found.push((index, sent));
            rest = &rest[close + 1..];
        }
    }
    found
}

/// How the upstream paces one stream. A prompt carries it as
/// `bench:chunks=64,interval_ms=20,first_ms=200`; the upstream's command-line values fill in
/// whatever a prompt does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub chunks: usize,
    /// Between consecutive chunks.
    pub interval: Duration,
    /// From the request to the first chunk (the model "thinking").
    pub first: Duration,
}

impl Shape {
    /// The prompt asking for this shape.
    pub fn prompt(&self) -> String {
        format!(
            "bench:chunks={},interval_ms={},first_ms={}",
            self.chunks,
            self.interval.as_millis(),
            self.first.as_millis()
        )
    }

    /// `self` with whatever `prompt` overrides.
    pub fn overridden_by(mut self, prompt: &str) -> Shape {
        let Some(start) = prompt.find("bench:") else {
            return self;
        };
        let spec = prompt[start + "bench:".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        for pair in spec.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "chunks" => self.chunks = n as usize,
                "interval_ms" => self.interval = Duration::from_millis(n),
                "first_ms" => self.first = Duration::from_millis(n),
                _ => {}
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_even_when_merged() {
        let text = format!("{}{}", encode(0, 17), encode(1, 1_732_400_000_123_456));
        assert_eq!(parse(&text), vec![(0, 17), (1, 1_732_400_000_123_456)]);
        assert_eq!(parse("Echo: [not a marker] [3@9]"), vec![(3, 9)]);
    }

    #[test]
    fn prompts_override_the_defaults() {
        let default = Shape {
            chunks: 64,
            interval: Duration::from_millis(20),
            first: Duration::from_millis(20),
        };
        let asked = Shape {
            chunks: 1000,
            interval: Duration::ZERO,
            first: Duration::from_millis(5),
        };
        assert_eq!(default.overridden_by(&asked.prompt()), asked);
        assert_eq!(default.overridden_by("hello"), default);
        assert_eq!(default.overridden_by("bench:chunks=3").chunks, 3);
    }
}
