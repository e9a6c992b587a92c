//! Time and CPU spent per stage: the process's CPU seconds from `/proc/self/stat` and a clock
//! that records one [`StageTiming`] per finished stage.

use std::time::Instant;

use super::StageTiming;

/// CPU seconds (user + system) of this process so far: `/proc/self/stat` fields 14 and 15, in
/// clock ticks of 1/100 s (the kernel's `USER_HZ` on every mainstream Linux).
fn cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is parenthesised and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Times stages.
pub(super) struct Clock {
    /// One entry per finished stage.
    pub(super) timings: Vec<StageTiming>,
    start: (Instant, Option<f64>),
    /// Stages 1–2 run on their own ([`super::prepare_data`]).
    pub(super) standalone: bool,
}

impl Clock {
    /// A clock started now.
    pub(super) fn new() -> Self {
        Self {
            timings: Vec::new(),
            start: (Instant::now(), cpu_seconds()),
            standalone: false,
        }
    }
    /// Records the stage `name` as ending now; the next one starts now.
    pub(super) fn lap(&mut self, name: &str, reused: bool) {
        let now = (Instant::now(), cpu_seconds());
        self.timings.push(StageTiming {
            name: name.to_string(),
            wall_s: (now.0 - self.start.0).as_secs_f64(),
            cpu_s: match (now.1, self.start.1) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            reused,
        });
        self.start = now;
    }
}
