//! What the figures read besides time: the CPU each process used (`/proc`), a process's peak
//! RSS, and how each mailbox was written to (the emulator's request log).

use std::time::Duration;

/// CPU time (user + system) used so far by the local RabbitMQ (`beam.smp`), Redis
/// (`redis-server`) and this process, read from `/proc`. Lets the ingest figure say where each
/// side's CPU went; zero where a process is not found (e.g. not on Linux).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSample {
    pub(super) rabbitmq: Duration,
    pub(super) redis: Duration,
    pub(super) this: Duration,
}

impl CpuSample {
    pub(super) fn now() -> Self {
        let mut s = CpuSample {
            this: proc_cpu("self").unwrap_or_default(),
            ..Default::default()
        };
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                match comm.trim() {
                    "beam.smp" => s.rabbitmq += proc_cpu(pid).unwrap_or_default(),
                    "redis-server" => s.redis += proc_cpu(pid).unwrap_or_default(),
                    _ => {}
                }
            }
        }
        s
    }

    /// The CPU each side used since `earlier`.
    pub(super) fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            rabbitmq: self.rabbitmq.saturating_sub(earlier.rabbitmq),
            redis: self.redis.saturating_sub(earlier.redis),
            this: self.this.saturating_sub(earlier.this),
        }
    }

    /// Microseconds of CPU per event spent by each side between `self` and `later`.
    pub(super) fn per_event(&self, later: &CpuSample, n: usize) -> String {
        let used = later.since(self);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        format!(
            "RabbitMQ {:.1} µs, Redis {:.1} µs, consumer {:.1} µs",
            us(used.rabbitmq),
            us(used.redis),
            us(used.this)
        )
    }
}

/// `utime + stime` of a process (`/proc/{pid}/stat`), assuming the usual 100 ticks per second.
pub(super) fn proc_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

pub(super) fn rss_peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How one mailbox was written to, from the emulator's request log.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct MailboxUse {
    /// First write's start to last write's end.
    pub(super) span: Duration,
    /// Time with at least one write in flight.
    pub(super) busy: Duration,
    /// The writes' durations, summed (over `busy`: the mean in flight while busy).
    pub(super) item_time: Duration,
    pub(super) writes: usize,
}

/// Per-mailbox use of Graph, from the emulator's request log (each entry is logged when its
/// request ends, with how long it took).
pub(super) fn mailbox_use(log: &[graph_emulator::LoggedRequest]) -> Vec<(String, MailboxUse)> {
    use std::time::SystemTime;
    let mut by_mailbox: std::collections::BTreeMap<String, Vec<(SystemTime, SystemTime)>> =
        std::collections::BTreeMap::new();
    for r in log.iter().filter(|r| r.batch_item && r.method != "GET") {
        let Some(m) = &r.mailbox else { continue };
        by_mailbox
            .entry(m.clone())
            .or_default()
            .push((r.time - r.duration, r.time));
    }
    by_mailbox
        .into_iter()
        .map(|(m, mut spans)| {
            spans.sort();
            let mut u = MailboxUse {
                writes: spans.len(),
                ..MailboxUse::default()
            };
            let first = spans[0].0;
            let mut open: Option<(SystemTime, SystemTime)> = None;
            for (a, b) in spans {
                u.item_time += b.duration_since(a).unwrap_or_default();
                open = match open {
                    Some((oa, ob)) if a <= ob => Some((oa, ob.max(b))),
                    Some((oa, ob)) => {
                        u.busy += ob.duration_since(oa).unwrap_or_default();
                        Some((a, b))
                    }
                    None => Some((a, b)),
                };
            }
            // Sorted by start, the last merged interval ends with the last write.
            if let Some((oa, ob)) = open {
                u.busy += ob.duration_since(oa).unwrap_or_default();
                u.span = ob.duration_since(first).unwrap_or_default();
            }
            (m, u)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let before = proc_cpu("self").expect("this process's /proc/self/stat");
        // Busy until this process has used several clock ticks (10 ms each), or 10 s have gone.
        let start = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + Duration::from_millis(50)
            && start.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = proc_cpu("self").expect("this process's /proc/self/stat");
        }
        assert!(
            after >= before + Duration::from_millis(50),
            "{before:?} then {after:?} after {:?} of busy work",
            start.elapsed()
        );
        let used = CpuSample {
            this: after,
            ..CpuSample::default()
        }
        .since(&CpuSample {
            this: before,
            ..CpuSample::default()
        });
        assert_eq!(used.this, after - before);
        assert_eq!(proc_cpu("not-a-pid"), None);
    }

    #[test]
    fn mailbox_use_splits_a_span_into_busy_and_idle_time() {
        use graph_emulator::LoggedRequest;
        let t0 = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ms = Duration::from_millis;
        // Logged at their end: two overlapping writes (0–50, 10–60 ms), a gap, one more
        // (100–150 ms); a read and another mailbox's write are not counted.
        let entry = |mailbox: &str, method: &str, end: u64, took: u64| LoggedRequest {
            method: method.into(),
            path: "/v1.0/users/x/events".into(),
            status: 201,
            mailbox: Some(mailbox.into()),
            time: t0 + ms(end),
            batch_item: true,
            client_id: None,
            duration: ms(took),
            request_id: String::new(),
        };
        let log = vec![
            entry("a@x", "POST", 50, 50),
            entry("a@x", "POST", 60, 50),
            entry("a@x", "GET", 90, 20),
            entry("a@x", "PATCH", 150, 50),
            entry("b@x", "POST", 500, 50),
        ];
        let uses = mailbox_use(&log);
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0].0, "a@x");
        let a = uses[0].1;
        assert_eq!(a.span, ms(150));
        assert_eq!(a.busy, ms(110));
        assert_eq!(a.item_time, ms(150));
        assert_eq!(a.writes, 3);
        assert_eq!(uses[1].1.span, ms(50));
    }
}
