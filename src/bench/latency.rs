//! Figure 7, what users feel (issue #18): the delay from publishing a change to its copy being
//! written in the emulator, at sustained publish rates, against the target "window + 30 s"; and
//! the knee, the first rate at which that delay grows, for one worker and for two.
//!
//! The publish time is taken just before each 20 ms batch of events is published (its confirms
//! are awaited after); the write time is the copy's `createdDateTime` in the emulator, which runs
//! in this process, on the same clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graph_emulator::Settings;
use jiff::Timestamp;

use super::load::{company_with, event_body, participants};
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;

/// The sizes of one run.
struct Shape {
    window_seconds: u64,
    mailboxes: usize,
    seconds: usize,
    rates: Vec<usize>,
}

fn shape(quick: bool) -> Shape {
    // "RATES;SECONDS;MAILBOXES[;WINDOW_SECONDS]", e.g. "1000;120;2000" for one sustained rate
    // (the example), rates separated by commas.
    if let Ok(v) = std::env::var("OUTLOOK_SYNC_BENCH_LATENCY")
        && let Some(s) = parse_shape(&v)
    {
        return s;
    }
    if quick {
        Shape {
            window_seconds: 2,
            mailboxes: 200,
            seconds: 15,
            rates: vec![100, 500, 1_000, 2_000, 4_000],
        }
    } else {
        Shape {
            window_seconds: 5,
            mailboxes: 2_000,
            seconds: 60,
            rates: vec![250, 500, 1_000, 2_000, 4_000],
        }
    }
}

fn parse_shape(v: &str) -> Option<Shape> {
    let mut parts = v.split(';').map(str::trim);
    let rates = parts
        .next()?
        .split(',')
        .map(|r| r.trim().parse().ok().filter(|r| *r > 0))
        .collect::<Option<Vec<usize>>>()?;
    let seconds = parts.next()?.parse().ok().filter(|s| *s > 0)?;
    let mailboxes = parts.next()?.parse().ok().filter(|m| *m > 0)?;
    let window_seconds = match parts.next() {
        Some(w) => w.parse().ok().filter(|w| *w > 0)?,
        None => 5,
    };
    Some(Shape {
        window_seconds,
        mailboxes,
        seconds,
        rates,
    })
}

/// p99 more than this many times the lowest rate's: the delay has started to grow.
const KNEE_GROWTH: f64 = 1.5;

/// One rate step: what was asked, what the publisher reached, and the delays.
#[derive(Debug, Clone, Copy)]
struct Step {
    rate: usize,
    reached: f64,
    copies: usize,
    missing: usize,
    p50: f64,
    p99: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Publishes `rate` creates per second for `seconds` (each a new schedule with one participant,
/// so one copy), waits for the pipeline to go idle, and reads each copy's write time.
async fn step(
    sb: &Sandbox,
    tag: &str,
    rate: usize,
    seconds: usize,
    mailboxes: usize,
) -> Result<Step, BenchError> {
    let n = rate * seconds;
    let mut published: HashMap<String, Timestamp> = HashMap::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        tick.tick().await;
        // Paced by the clock: a late batch carries what is due by now.
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(n);
        if due <= sent {
            continue;
        }
        let items: Vec<(String, &str, Vec<u8>)> = (sent..due)
            .map(|i| {
                let schedule = format!("{tag}-s{i}");
                let body = event_body("acme", &schedule, 1, &participants(i, mailboxes, 1));
                (format!("{tag}-m{i}"), "schedule.created", body)
            })
            .collect();
        let at = Timestamp::now();
        sb.publish_bulk(&items).await?;
        for i in sent..due {
            published.insert(format!("{tag}-s{i} r1"), at);
        }
        sent = due;
    }
    let reached = n as f64 / start.elapsed().as_secs_f64();
    let timeout = Duration::from_secs(600);
    if !sb.wait_idle(timeout).await? {
        return Err(BenchError::Other(format!(
            "{tag}: the pipeline did not go idle within {timeout:?}"
        )));
    }
    let mut delays = Vec::with_capacity(n);
    for m in 0..mailboxes {
        for ev in sb
            .emulator
            .emulator
            .calendar(&format!("user{m}@acme.onmicrosoft.com"))
        {
            let Some(at) = ev["subject"].as_str().and_then(|s| published.get(s)) else {
                continue;
            };
            let Some(written) = ev["createdDateTime"]
                .as_str()
                .and_then(|c| c.parse::<Timestamp>().ok())
            else {
                continue;
            };
            delays.push(written.duration_since(*at).as_secs_f64());
        }
    }
    delays.sort_by(f64::total_cmp);
    Ok(Step {
        rate,
        reached,
        copies: delays.len(),
        missing: n.saturating_sub(delays.len()),
        p50: percentile(&delays, 0.50),
        p99: percentile(&delays, 0.99),
    })
}

/// The first step whose p99 exceeds `KNEE_GROWTH` × the lowest rate's.
fn knee(steps: &[Step]) -> Option<Step> {
    let base = steps.first()?.p99;
    steps[1..]
        .iter()
        .find(|s| s.p99 > KNEE_GROWTH * base || s.missing > 0)
        .copied()
}

/// Every rate step with `workers` workers on one sandbox (the calendars accumulate; each step's
/// copies are told apart by their subject).
async fn steps_with(workers: usize, s: &Shape) -> Result<Vec<Step>, BenchError> {
    let settings = Settings {
        latency: Duration::from_millis(50),
        ..Settings::default()
    };
    let sb = Sandbox::start("bench-latency", s.window_seconds, settings).await?;
    company_with(&sb, "acme", s.mailboxes).await?;
    let mut ws = Vec::new();
    for _ in 0..workers {
        ws.push(sb.worker().await?);
    }
    let mut steps = Vec::new();
    for &rate in &s.rates {
        let got = step(
            &sb,
            &format!("w{workers}r{rate}"),
            rate,
            s.seconds,
            s.mailboxes,
        )
        .await;
        match got {
            Ok(st) => steps.push(st),
            Err(e) => {
                for w in ws {
                    w.stop(Duration::from_secs(5)).await;
                }
                sb.cleanup().await;
                return Err(e);
            }
        }
    }
    for w in ws {
        w.stop(Duration::from_secs(5)).await;
    }
    sb.cleanup().await;
    Ok(steps)
}

/// p50/p99 per rate step against window + 30 s, and the knee, for one worker and for two.
pub(super) async fn measure(
    quick: bool,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), BenchError> {
    let s = shape(quick);
    let target = s.window_seconds as f64 + 30.0;
    let mut summary = Vec::new();
    for workers in [1, 2] {
        let steps = steps_with(workers, &s).await?;
        let who = if workers == 1 {
            "1 worker"
        } else {
            "2 workers"
        };
        for st in &steps {
            figures.push(figure(
                "What users feel: p99 delay publish → copy written / (window + 30 s)",
                format!(
                    "{who}, {} changes/s ({:.0} reached) for {} s over {} mailboxes: p50 {:.2} s, p99 {:.2} s; {} copies, {} missing",
                    st.rate, st.reached, s.seconds, s.mailboxes, st.p50, st.p99, st.copies, st.missing
                ),
                st.p99 / target,
                "≤ 1.00",
                st.p99 <= target && st.missing == 0,
            ));
        }
        summary.push(format!(
            "{who}: {}",
            steps
                .iter()
                .map(|st| format!("{}/s p50 {:.2} s p99 {:.2} s", st.rate, st.p50, st.p99))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if steps.len() < 2 {
            // One rate (OUTLOOK_SYNC_BENCH_LATENCY): no knee to find.
            continue;
        }
        let base = steps[0];
        let last = steps[steps.len() - 1];
        let k = knee(&steps);
        let (measured, ratio) = match k {
            Some(k) => (
                format!(
                    "{who}: {} changes/s (p99 {:.2} s against {:.2} s at {}/s)",
                    k.rate, k.p99, base.p99, base.rate
                ),
                k.p99 / base.p99,
            ),
            None => (
                format!(
                    "{who}: none up to {} changes/s (p99 {:.2} s there against {:.2} s at {}/s)",
                    last.rate, last.p99, base.p99, base.rate
                ),
                last.p99 / base.p99,
            ),
        };
        figures.push(figure(
            "What users feel: the knee, the first rate whose p99 > 1.5 × the lowest rate's (ratio: its p99 / the lowest rate's)",
            measured,
            ratio,
            "knee above 1,000 changes/s",
            k.map_or(last.rate >= 1_000, |k| k.rate > 1_000),
        ));
    }
    notes.push(format!(
        "what users feel: window {} s (target window + 30 s = {target:.0} s), {} s at each rate, {} mailboxes, one participant per change (one copy), the emulator enforcing Graph's limits (4 in flight per mailbox) with 50 ms per request; publish time taken before each 20 ms batch is published, write time the copy's createdDateTime in the emulator; {}",
        s.window_seconds,
        s.seconds,
        s.mailboxes,
        summary.join("; ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(rate: usize, p99: f64) -> Step {
        Step {
            rate,
            reached: rate as f64,
            copies: 1,
            missing: 0,
            p50: p99,
            p99,
        }
    }

    #[test]
    fn the_knee_is_the_first_rate_whose_p99_grows_by_half() {
        let steps = [st(100, 2.0), st(250, 2.9), st(500, 3.1), st(1_000, 9.0)];
        assert_eq!(knee(&steps).map(|s| s.rate), Some(500));
        assert!(knee(&steps[..2]).is_none());
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
    }

    #[test]
    fn a_run_of_one_shape_is_read_from_the_environment_form_or_refused_whole() {
        let s = parse_shape("1000;120;2000").expect("the issue's shape");
        assert_eq!(
            (s.rates, s.seconds, s.mailboxes, s.window_seconds),
            (vec![1_000], 120, 2_000, 5)
        );
        let s = parse_shape("250, 500;30;100;2").expect("two rates and a window");
        assert_eq!((s.rates, s.window_seconds), (vec![250, 500], 2));
        for bad in [
            "",
            "1000",
            "1000;0;10",
            "x;10;10",
            "1000;10;10;0",
            "1000;10",
        ] {
            assert!(parse_shape(bad).is_none(), "{bad:?}");
        }
    }
}
