//! Convergence, as a seeded property: random histories of schedule events go through the real
//! pipeline (RabbitMQ, Redis, workers, the Graph emulator) while Graph fails now and then and
//! workers are killed at random points; at the end every mailbox holds exactly the latest cyzen
//! state: no duplicate, no stale copy, no missing copy.
//!
//! One seed is one company (the unit of isolation) with three linked users and one unlinked
//! participant, and a history of 1–3 schedules: creates, updates that move, retitle and change
//! participants, deletes, schedules that predate the link (first seen as an update) or are only
//! ever deleted. Their deliveries are spread over four phases about a window apart and perturbed:
//! duplicated in the same phase, redelivered in a later one, held back until newer revisions have
//! landed, and replayed (as an operator's dead-letter replay, `x-replay: true`) after newer
//! revisions. Some seeds also get a burst of scripted 503s on one mailbox, long enough to exhaust
//! the retry budget, so some changes become dead letters; the test replays the dead-letter queue
//! with the operators' own tool (`Dlq::replay`, as `outlook-sync dlq replay --all`) until it
//! stays empty.
//!
//! Many seeds share one sandbox and run in the same windows (200 per chunk), so a CI run of 200
//! seeds takes well under a minute.
//!
//! - `CONVERGENCE_SEEDS=5000`: how many seeds (default 200), from `CONVERGENCE_FIRST_SEED`
//!   (default 1);
//! - `CONVERGENCE_SEED=1234`: only that seed (its history is a function of the seed alone; the
//!   faults and the kill points are not, they come from the run).
//!
//! - `CONVERGENCE_GRAPH_IGNORES_TRANSACTION_ID=1`: the emulator creates a second event for a
//!   repeated `transactionId` instead of returning the first (GRAPH.md §2.5 leaves Graph's
//!   behaviour and its dedupe window undocumented): what the pipeline would do if Graph did not
//!   deduplicate (see RELIABILITY.md: it duplicates today).
//!
//! The mailboxes' owners act too: while the history is delivered, they delete or edit (retitle
//! and move) copies in Outlook now and then, and repair passes (`repair::Repairer::pass`, as the
//! workers run them) read every mailbox's calendarView delta and have the flush restore what
//! drifted. The settling runs a repair pass over every mailbox before each check.
//!
//! A failing seed is printed with its history, what each mailbox should hold and what it holds.
//! With `--nocapture` a `RELIABILITY convergence …` line gives the totals (scripts/reliability.sh
//! collects it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use graph_emulator::{FaultKind, Faults, MailboxKind, ScriptedFault, Settings, TransactionIdMode};
use jiff::civil::Date;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use outlook_sync::amqp;
use outlook_sync::deadletter::REPLAY_HEADER;
use outlook_sync::deadletter::{Control, Dlq, Filter, ReplayRequest};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::event::WireEvent;
use outlook_sync::graph::client::GraphClient;
use outlook_sync::graph::mapping::{TAG_PROPERTY_ID, parse_tag};
use outlook_sync::metrics::Metrics;
use outlook_sync::repair::Repairer;
use outlook_sync::tenants::Plan;
use outlook_sync::worker::Worker;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::Mutex;

/// Seeds per sandbox: they share its windows, its workers and its emulator.
const CHUNK: usize = 200;
/// Phases (about one window apart) a history is delivered in.
const PHASES: usize = 4;
/// Linked users of every seed's company; `u-9` takes part in schedules but is not linked.
const LINKED: [(&str, &str); 3] = [("u-1", "a"), ("u-2", "b"), ("u-3", "c")];
const UNLINKED: &str = "u-9";
/// The retry budget of the workers under test: small, so scripted bursts make dead letters.
const MAX_ATTEMPTS: u32 = 4;
const DRAIN: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Histories

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Timing {
    /// RFC 3339 start and end, IANA zone.
    Timed(String, String, &'static str),
    /// First and last day, inclusive.
    AllDay(Date, Date),
}

/// One revision of a schedule as cyzen published it.
#[derive(Debug, Clone)]
struct Revision {
    rev: u64,
    kind: Kind,
    title: String,
    timing: Timing,
    owner: &'static str,
    others: Vec<&'static str>,
    wire: WireEvent,
}

impl Revision {
    fn participants(&self) -> BTreeSet<&'static str> {
        std::iter::once(self.owner)
            .chain(self.others.iter().copied())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// The first publish of a revision.
    Publish,
    /// Published twice in the same phase.
    Duplicate,
    /// Delivered again in a later phase (a publisher's retry, a broker's redelivery).
    Redelivered,
    /// An operator's replay of the revision (`x-replay: true`), after newer ones may have landed.
    Replayed,
}

#[derive(Debug, Clone)]
struct Delivery {
    phase: usize,
    schedule: usize,
    revision: usize,
    how: How,
    /// Held back from its natural phase (arrives after newer revisions).
    late: bool,
}

/// One seed: a company, its schedules' revisions, and how they are delivered.
#[derive(Debug, Clone)]
struct History {
    seed: u64,
    company: String,
    schedules: Vec<(String, Vec<Revision>)>,
    deliveries: Vec<Delivery>,
    /// A burst of 503s on this mailbox (scripted before the first phase).
    burst: Option<(String, u32)>,
    /// A long throttling of this mailbox: this many 429s, each with `Retry-After`, far more than
    /// the attempts allow: it must slow the mailbox, never dead-letter a change.
    throttled: Option<(String, u32)>,
    /// The users linked with their address in another case (`A@…` for `a@…`): one mailbox.
    mixed_case: Vec<&'static str>,
}

fn mailbox(company: &str, local: &str) -> String {
    format!("{local}@{company}.onmicrosoft.com")
}

const PEOPLE: [&str; 4] = ["u-1", "u-2", "u-3", UNLINKED];
const ZONES: [&str; 3] = ["Asia/Tokyo", "Asia/Tokyo", "America/New_York"];

fn random_state(rng: &mut StdRng) -> (Timing, &'static str, Vec<&'static str>) {
    let timing = if rng.random_bool(0.15) {
        let first = Date::constant(2026, 12, 1)
            .checked_add(jiff::Span::new().days(rng.random_range(0..28)))
            .expect("date");
        let last = first
            .checked_add(jiff::Span::new().days(rng.random_range(0..3)))
            .expect("date");
        Timing::AllDay(first, last)
    } else {
        let zone = *ZONES.choose(rng).expect("zones");
        let day = rng.random_range(1..=28);
        let (h, m) = (
            rng.random_range(7..19),
            [0, 15, 30, 45][rng.random_range(0..4)],
        );
        let len = 15 * rng.random_range(1..=12);
        let start = jiff::civil::date(2026, 12, day)
            .at(h, m, 0, 0)
            .in_tz(zone)
            .expect("zone");
        let end = start
            .checked_add(jiff::Span::new().minutes(len))
            .expect("end");
        let rfc3339 = |z: &jiff::ZonedDateTime| z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
        Timing::Timed(rfc3339(&start), rfc3339(&end), zone)
    };
    // The owner is usually linked; each other person joins with some probability.
    let owner = if rng.random_bool(0.85) {
        PEOPLE[rng.random_range(0..3)]
    } else {
        UNLINKED
    };
    let others: Vec<&'static str> = PEOPLE
        .iter()
        .copied()
        .filter(|p| *p != owner && rng.random_bool(0.45))
        .collect();
    (timing, owner, others)
}

fn wire(company: &str, schedule: &str, r: &Revision) -> WireEvent {
    let ev = match r.kind {
        Kind::Created => Ev::created(company, schedule),
        Kind::Updated => Ev::updated(company, schedule, r.rev),
        Kind::Deleted => return Ev::deleted(company, schedule, r.rev).wire(),
    };
    let ev = ev.title(&r.title).people(r.owner, &r.others);
    match &r.timing {
        Timing::Timed(s, e, z) => ev.at(s, e, z),
        Timing::AllDay(f, l) => ev.all_day(&f.to_string(), &l.to_string()),
    }
    .wire()
}

impl History {
    fn generate(seed: u64) -> History {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0de);
        let company = format!("cv-{seed}");
        let mut schedules = Vec::new();
        let mut deliveries = Vec::new();
        for s in 0..rng.random_range(1..=3) {
            // Ids that differ only in case are different schedules: Graph's tag filter matches
            // them both, and the flush must keep each copy to its own.
            let id = if s > 0 && rng.random_bool(0.3) {
                format!("S{s}")
            } else {
                format!("s{}", s + 1)
            };
            // Most schedules are created after the link; some predate it (first seen as an
            // update of a later revision); a few are only ever deleted.
            let shape = rng.random_range(0..100);
            let first_rev = if shape < 80 {
                1
            } else {
                rng.random_range(2..5)
            };
            let only_delete = shape >= 95;
            let n = if only_delete {
                1
            } else {
                rng.random_range(1..=5)
            };
            let deleted_at_end = !only_delete && n > 1 && rng.random_bool(0.3);
            let mut revs = Vec::new();
            for i in 0..n {
                let rev = first_rev + i as u64;
                let kind = if only_delete || (deleted_at_end && i == n - 1) {
                    Kind::Deleted
                } else if rev == 1 {
                    Kind::Created
                } else {
                    Kind::Updated
                };
                let (timing, owner, others) = random_state(&mut rng);
                let mut r = Revision {
                    rev,
                    kind,
                    title: format!("{company}/{id} r{rev} #{}", rng.random_range(100..1000)),
                    timing,
                    owner,
                    others,
                    wire: Ev::deleted("x", "x", 1).wire(),
                };
                r.wire = wire(&company, &id, &r);
                revs.push(r);
            }
            // Natural phases: non-decreasing with the revision.
            let mut phase = rng.random_range(0..PHASES);
            let last = n - 1;
            let sched = schedules.len();
            for i in 0..n {
                if i > 0 && rng.random_bool(0.5) {
                    phase = (phase + 1).min(PHASES - 1);
                }
                let hold = i < last && rng.random_bool(0.15);
                let at = if hold {
                    (phase + rng.random_range(1..=2)).min(PHASES - 1)
                } else {
                    phase
                };
                let late = at > phase;
                let d = |phase, how| Delivery {
                    phase,
                    schedule: sched,
                    revision: i,
                    how,
                    late,
                };
                deliveries.push(d(at, How::Publish));
                if rng.random_bool(0.15) {
                    deliveries.push(d(at, How::Duplicate));
                }
                if rng.random_bool(0.1) {
                    deliveries.push(d(rng.random_range(at..PHASES), How::Redelivered));
                }
                if rng.random_bool(0.08) {
                    deliveries.push(d(rng.random_range(at..PHASES), How::Replayed));
                }
            }
            schedules.push((id, revs));
        }
        let burst = rng.random_bool(0.15).then(|| {
            let (_, local) = LINKED[rng.random_range(0..LINKED.len())];
            (
                mailbox(&company, local),
                MAX_ATTEMPTS * rng.random_range(1..=2),
            )
        });
        let throttled = rng.random_bool(0.15).then(|| {
            let (_, local) = LINKED[rng.random_range(0..LINKED.len())];
            (
                mailbox(&company, local),
                MAX_ATTEMPTS * rng.random_range(2..=4),
            )
        });
        let mixed_case = LINKED
            .iter()
            .filter(|_| rng.random_bool(0.2))
            .map(|(user, _)| *user)
            .collect();
        History {
            seed,
            company,
            schedules,
            deliveries,
            burst,
            throttled,
            mixed_case,
        }
    }

    /// What each linked mailbox must hold at the end: schedule → (subject, start, end).
    fn expected(&self) -> BTreeMap<String, BTreeMap<String, Shown>> {
        let mut out: BTreeMap<String, BTreeMap<String, Shown>> = LINKED
            .iter()
            .map(|(_, local)| (mailbox(&self.company, local), BTreeMap::new()))
            .collect();
        for (id, revs) in &self.schedules {
            let latest = revs.iter().max_by_key(|r| r.rev).expect("a revision");
            if latest.kind == Kind::Deleted {
                continue;
            }
            let shown = Shown::of(latest);
            for p in latest.participants() {
                if let Some((_, local)) = LINKED.iter().find(|(u, _)| *u == p) {
                    out.get_mut(&mailbox(&self.company, local))
                        .expect("linked")
                        .insert(id.clone(), shown.clone());
                }
            }
        }
        out
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {} (company {}), linked: u-1→a, u-2→b, u-3→c; u-9 unlinked{}",
            self.seed,
            self.company,
            [
                self.burst
                    .as_ref()
                    .map(|(m, n)| format!("; {n} scripted 503s on {m}")),
                self.throttled
                    .as_ref()
                    .map(|(m, n)| format!("; {n} scripted 429s on {m}")),
                (!self.mixed_case.is_empty())
                    .then(|| format!("; linked in upper case: {:?}", self.mixed_case)),
            ]
            .into_iter()
            .flatten()
            .collect::<String>()
        );
        for (id, revs) in &self.schedules {
            for r in revs {
                let when = match &r.timing {
                    Timing::Timed(a, b, z) => format!("{a} → {b} {z}"),
                    Timing::AllDay(f, l) => format!("{f} → {l} all day"),
                };
                let _ = match r.kind {
                    Kind::Deleted => writeln!(s, "  {id} r{} deleted", r.rev),
                    k => writeln!(
                        s,
                        "  {id} r{} {k:?} {:?} {when} owner {} others {:?}",
                        r.rev, r.title, r.owner, r.others
                    ),
                };
            }
        }
        for phase in 0..PHASES {
            let items: Vec<String> = self
                .deliveries
                .iter()
                .filter(|d| d.phase == phase)
                .map(|d| {
                    let (id, revs) = &self.schedules[d.schedule];
                    let mut t = format!("{id} r{}", revs[d.revision].rev);
                    if d.how != How::Publish {
                        let _ = write!(t, " ({:?})", d.how);
                    }
                    if d.late && d.how == How::Publish {
                        t.push_str(" (late)");
                    }
                    t
                })
                .collect();
            let _ = writeln!(s, "  phase {phase}: {}", items.join(", "));
        }
        s
    }
}

/// How a copy shows in Outlook: what the model predicts and what the emulator stores.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    subject: String,
    start: String,
    end: String,
}

impl Shown {
    fn of(r: &Revision) -> Shown {
        let graph = |t: jiff::civil::DateTime| t.strftime("%Y-%m-%dT%H:%M:%S.0000000").to_string();
        let (start, end) = match &r.timing {
            Timing::Timed(s, e, _) => {
                let utc = |x: &str| {
                    graph(
                        x.parse::<jiff::Timestamp>()
                            .expect("rfc 3339")
                            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
                            .datetime(),
                    )
                };
                (utc(s), utc(e))
            }
            Timing::AllDay(f, l) => (
                graph(f.at(0, 0, 0, 0)),
                graph(l.tomorrow().expect("date").at(0, 0, 0, 0)),
            ),
        };
        Shown {
            subject: r.title.clone(),
            start,
            end,
        }
    }

    fn stored(e: &Value) -> Shown {
        let s = |p: &str| {
            e.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Shown {
            subject: s("/subject"),
            start: s("/start/dateTime"),
            end: s("/end/dateTime"),
        }
    }
}

/// The (company, schedule) of a stored copy, from its tag.
fn tag_of(e: &Value) -> Option<(String, String)> {
    e.get("singleValueExtendedProperties")?
        .as_array()?
        .iter()
        .find(|p| {
            p["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(TAG_PROPERTY_ID))
        })
        .and_then(|p| parse_tag(p["value"].as_str()?))
}

/// What is wrong with one seed's mailboxes.
#[derive(Debug, Default)]
struct Verdict {
    missing: usize,
    duplicated: usize,
    stale: usize,
    extra: usize,
    copies: usize,
    problems: Vec<String>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn check(h: &History, calendar: impl Fn(&str) -> Vec<Value>) -> Verdict {
    let mut v = Verdict::default();
    for (mb, want) in h.expected() {
        let mut have: BTreeMap<String, Vec<Shown>> = BTreeMap::new();
        for e in calendar(&mb) {
            match tag_of(&e) {
                Some((c, s)) if c == h.company => {
                    have.entry(s).or_default().push(Shown::stored(&e))
                }
                other => {
                    v.extra += 1;
                    v.problems.push(format!(
                        "{mb}: a copy with a foreign or no tag {other:?}: {e}"
                    ));
                }
            }
        }
        for (s, copies) in &have {
            v.copies += copies.len();
            if copies.len() > 1 {
                v.duplicated += copies.len() - 1;
                v.problems
                    .push(format!("{mb}: {} copies of {s}: {copies:?}", copies.len()));
            }
            match want.get(s) {
                None => {
                    v.extra += 1;
                    v.problems.push(format!(
                        "{mb}: a copy of {s} that should be gone (deleted, or the user was removed): {copies:?}"
                    ));
                }
                Some(w) => {
                    for c in copies.iter().filter(|c| *c != w) {
                        v.stale += 1;
                        v.problems
                            .push(format!("{mb}: {s} is stale: has {c:?}, want {w:?}"));
                    }
                }
            }
        }
        for (s, w) in &want {
            if !have.contains_key(s) {
                v.missing += 1;
                v.problems.push(format!("{mb}: {s} is missing: want {w:?}"));
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The run

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Totals over every chunk, for the report line.
#[derive(Debug, Default)]
struct Totals {
    seeds: usize,
    schedules: usize,
    revisions: usize,
    deliveries: usize,
    duplicates: usize,
    redeliveries: usize,
    late: usize,
    replays: usize,
    kills: u64,
    scripted_503: u64,
    scripted_429: u64,
    answered_429: u64,
    answered_503: u64,
    answered_504: u64,
    dropped: u64,
    create_dedupes: u64,
    graph_writes: u64,
    dead_letters_replayed: usize,
    owner_deletes: u64,
    owner_edits: u64,
    repair_passes: u64,
    drift_found: u64,
    copies: usize,
    missing: usize,
    duplicated: usize,
    stale: usize,
    extra: usize,
    failed: Vec<u64>,
    elapsed: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mailbox_converges_to_the_latest_state_under_faults_kills_and_replays() {
    let seeds: Vec<u64> = match env_u64("CONVERGENCE_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_u64("CONVERGENCE_FIRST_SEED").unwrap_or(1);
            let n = env_u64("CONVERGENCE_SEEDS").unwrap_or(200);
            (first..first + n).collect()
        }
    };
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut reports = Vec::new();
    for chunk in seeds.chunks(CHUNK) {
        reports.extend(run_chunk(chunk, &mut totals).await);
    }
    totals.elapsed = started.elapsed();
    println!(
        "RELIABILITY convergence seeds={} schedules={} revisions={} deliveries={} duplicates={} \
         redeliveries={} late={} operator_replays={} worker_kills={} scripted_503={} \
         scripted_429={} graph_429={} graph_503={} graph_504={} graph_dropped={} create_dedupes={} \
         graph_writes={} dead_letters_replayed={} owner_deletes={} owner_edits={} \
         repair_passes={} drift_found={} copies_checked={} missing={} duplicated={} \
         stale={} extra={} failed_seeds={} elapsed_s={:.1}",
        totals.seeds,
        totals.schedules,
        totals.revisions,
        totals.deliveries,
        totals.duplicates,
        totals.redeliveries,
        totals.late,
        totals.replays,
        totals.kills,
        totals.scripted_503,
        totals.scripted_429,
        totals.answered_429,
        totals.answered_503,
        totals.answered_504,
        totals.dropped,
        totals.create_dedupes,
        totals.graph_writes,
        totals.dead_letters_replayed,
        totals.owner_deletes,
        totals.owner_edits,
        totals.repair_passes,
        totals.drift_found,
        totals.copies,
        totals.missing,
        totals.duplicated,
        totals.stale,
        totals.extra,
        totals.failed.len(),
        totals.elapsed.as_secs_f64(),
    );
    if !totals.failed.is_empty() {
        for r in reports.iter().take(5) {
            eprintln!("{r}");
        }
        panic!(
            "{} of {} seeds did not converge: {:?} (missing {}, duplicated {}, stale {}, extra {}). \
             Replay one alone: CONVERGENCE_SEED=<seed> cargo test --test it convergence:: -- --nocapture",
            totals.failed.len(),
            totals.seeds,
            &totals.failed[..totals.failed.len().min(20)],
            totals.missing,
            totals.duplicated,
            totals.stale,
            totals.extra
        );
    }
}

/// Publishes in confirm mode, awaiting the confirms of a whole phase at once.
struct Publisher {
    ch: lapin::Channel,
    exchange: String,
}

impl Publisher {
    async fn new(sb: &Sandbox) -> Publisher {
        let ch = sb.connection().create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Publisher {
            ch,
            exchange: sb.cfg.amqp.exchange.clone(),
        }
    }

    async fn publish_all(&self, items: &[(Vec<u8>, String, BasicProperties)]) {
        let mut confirms = Vec::with_capacity(items.len());
        for (body, key, props) in items {
            confirms.push(
                self.ch
                    .basic_publish(
                        self.exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        props.clone(),
                    )
                    .await
                    .expect("publish"),
            );
        }
        for c in confirms {
            assert!(!c.await.expect("confirm").is_nack(), "the broker nacked");
        }
    }
}

fn replay_properties(props: BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(REPLAY_HEADER.into(), AMQPValue::Boolean(true));
    props.with_headers(headers)
}

async fn run_chunk(seeds: &[u64], totals: &mut Totals) -> Vec<String> {
    let run_seed = seeds[0];
    let mut rng = StdRng::seed_from_u64(run_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let settings = Settings {
        latency: Duration::from_millis(5),
        retry_after_secs: 0.3,
        fractional_retry_after: true,
        faults: Faults {
            rate_429: 0.03,
            rate_503: 0.03,
            rate_504: 0.03,
            rate_504_after_create: 0.08,
            rate_drop_connection: 0.02,
            rate_token_503: 0.0,
            seed: run_seed,
        },
        transaction_id_mode: if env_u64("CONVERGENCE_GRAPH_IGNORES_TRANSACTION_ID") == Some(1) {
            TransactionIdMode::CreateDuplicate
        } else {
            TransactionIdMode::ReturnExisting
        },
        ..Settings::default()
    };
    let mut sb = match Sandbox::start("conv", 1, settings).await {
        Ok(sb) => sb,
        Err(e) => panic!("the convergence test needs the local RabbitMQ and Redis: {e}"),
    };
    sb.cfg.retry.max_attempts = MAX_ATTEMPTS;
    sb.cfg.retry.max_backoff_ms = 500;

    let histories: Vec<History> = seeds.iter().map(|s| History::generate(*s)).collect();
    if let [h] = histories.as_slice() {
        println!("{}", h.describe());
    }
    let users: Vec<(&str, &str, MailboxKind)> = LINKED
        .iter()
        .map(|(u, l)| (*u, *l, MailboxKind::Ok))
        .collect();
    for h in &histories {
        sb.company(&h.company, Plan::Standard, &users)
            .await
            .expect("company");
        if let Some((mb, n)) = &h.burst {
            for _ in 0..*n {
                sb.emulator.emulator.script_fault(
                    ScriptedFault::new(FaultKind::Status503 { retry_after: None })
                        .path_contains(&format!("/users/{mb}/events")),
                );
            }
            totals.scripted_503 += u64::from(*n);
        }
        if let Some((mb, n)) = &h.throttled {
            for _ in 0..*n {
                sb.emulator.emulator.script_fault(
                    ScriptedFault::new(FaultKind::Throttle429 { retry_after: 0.2 })
                        .path_contains(&format!("/users/{mb}/events")),
                );
            }
            totals.scripted_429 += u64::from(*n);
        }
        // Linked with the address in upper case: still the one mailbox the emulator knows.
        for user in &h.mixed_case {
            let mut u = sb
                .directory
                .user(&h.company, user)
                .await
                .expect("directory")
                .expect("linked");
            u.mailbox = u.mailbox.to_uppercase();
            sb.directory
                .put_user(&h.company, &u)
                .await
                .expect("directory");
        }
        totals.seeds += 1;
        totals.schedules += h.schedules.len();
        totals.revisions += h.schedules.iter().map(|(_, r)| r.len()).sum::<usize>();
        for d in &h.deliveries {
            totals.deliveries += 1;
            match d.how {
                How::Publish if d.late => totals.late += 1,
                How::Publish => {}
                How::Duplicate => totals.duplicates += 1,
                How::Redelivered => totals.redeliveries += 1,
                How::Replayed => totals.replays += 1,
            }
        }
    }

    // Two workers; a chaos task kills one at random moments and starts another.
    let workers = Arc::new(Mutex::new(vec![
        sb.worker().await.expect("worker"),
        sb.worker().await.expect("worker"),
    ]));
    let chaos_on = Arc::new(AtomicBool::new(true));
    let kills = Arc::new(AtomicU64::new(0));
    let chaos = tokio::spawn({
        let (workers, on, kills, cfg) = (
            workers.clone(),
            chaos_on.clone(),
            kills.clone(),
            sb.cfg.clone(),
        );
        let mut rng = StdRng::seed_from_u64(run_seed ^ 0xdead);
        async move {
            while on.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(250..1200))).await;
                if !on.load(Ordering::Relaxed) {
                    break;
                }
                let mut w = workers.lock().await;
                let i = rng.random_range(0..w.len());
                let fresh = Worker::start(cfg.clone()).await.expect("worker");
                std::mem::replace(&mut w[i], fresh).kill();
                kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // The owners: cursors first (so every later deletion is listed), then edits and deletions
    // in Outlook while the history is delivered, and repair passes now and then.
    let owners = Arc::new(Owners {
        repairer: Repairer::new(
            Arc::new(sb.cfg.clone()),
            sb.redis.clone(),
            GraphClient::new(&sb.cfg.graph),
            Metrics::new(),
        ),
        mailboxes: histories
            .iter()
            .flat_map(|h| {
                LINKED
                    .iter()
                    .map(|(_, l)| (h.company.clone(), mailbox(&h.company, l)))
            })
            .collect(),
        emulator: sb.emulator.emulator.clone(),
        deletes: AtomicU64::new(0),
        edits: AtomicU64::new(0),
        passes: AtomicU64::new(0),
        found: AtomicU64::new(0),
    });
    owners.sweep().await;
    let owners_on = Arc::new(AtomicBool::new(true));
    let owner_task = tokio::spawn(owners.clone().act(owners_on.clone(), run_seed));
    let repair_task = tokio::spawn(owners.clone().keep_repairing(owners_on.clone()));

    let publisher = Publisher::new(&sb).await;
    for phase in 0..PHASES {
        let mut items: Vec<(Vec<u8>, String, BasicProperties)> = Vec::new();
        for h in &histories {
            for d in h.deliveries.iter().filter(|d| d.phase == phase) {
                let w = &h.schedules[d.schedule].1[d.revision].wire;
                let key = w.event_type.routing_key();
                let mut props = amqp::event_properties(&w.event_id, key);
                if d.how == How::Replayed {
                    props = replay_properties(props);
                }
                items.push((serde_json::to_vec(w).expect("json"), key.to_string(), props));
            }
        }
        items.shuffle(&mut rng);
        publisher.publish_all(&items).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1600))).await;
    }
    // A few more seconds of kills while the last windows flush, then let it settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    chaos_on.store(false, Ordering::Relaxed);
    chaos.await.expect("chaos task");
    totals.kills += kills.load(Ordering::Relaxed);
    owners_on.store(false, Ordering::Relaxed);
    owner_task.await.expect("owner task");
    repair_task.await.expect("repair task");

    // Settle: drain, replay the dead-letter queue as an operator would, until the dead-letter
    // queue stays empty and every seed converged, or DRAIN passes. (Idleness alone is not
    // enough: a batch a worker holds unacked looks idle from outside.)
    let deadline = Instant::now() + DRAIN;
    loop {
        owners.sweep().await;
        let idle = sb.wait_idle(Duration::from_secs(10)).await.expect("idle");
        let replayed = replay_dead_letters(&sb).await;
        totals.dead_letters_replayed += replayed;
        let converged = idle
            && replayed == 0
            && histories
                .iter()
                .all(|h| check(h, |mb| sb.emulator.emulator.calendar(mb)).ok());
        if converged || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for w in std::mem::take(&mut *workers.lock().await) {
        w.stop(Duration::from_secs(5)).await;
    }

    totals.owner_deletes += owners.deletes.load(Ordering::Relaxed);
    totals.owner_edits += owners.edits.load(Ordering::Relaxed);
    totals.repair_passes += owners.passes.load(Ordering::Relaxed);
    totals.drift_found += owners.found.load(Ordering::Relaxed);
    let stats = sb.emulator.emulator.stats();
    totals.create_dedupes += stats.create_dedupes;
    totals.graph_writes += stats.writes;
    for r in sb.emulator.emulator.request_log() {
        match r.status {
            429 => totals.answered_429 += 1,
            503 => totals.answered_503 += 1,
            504 => totals.answered_504 += 1,
            0 => totals.dropped += 1,
            _ => {}
        }
    }
    let mut reports = Vec::new();
    for h in &histories {
        let v = check(h, |mb| sb.emulator.emulator.calendar(mb));
        totals.copies += v.copies;
        totals.missing += v.missing;
        totals.duplicated += v.duplicated;
        totals.stale += v.stale;
        totals.extra += v.extra;
        if !v.ok() {
            totals.failed.push(h.seed);
            let mut r = format!("--- seed {} did not converge\n{}", h.seed, h.describe());
            for p in &v.problems {
                let _ = writeln!(r, "  ✗ {p}");
            }
            for (mb, want) in h.expected() {
                let _ = writeln!(
                    r,
                    "  {mb} should hold {:?}",
                    want.keys().collect::<Vec<_>>()
                );
            }
            reports.push(r);
        }
    }
    sb.cleanup().await;
    reports
}

/// The mailboxes' owners, who delete and edit copies in Outlook, and the repair passes that
/// bring them back.
struct Owners {
    repairer: Repairer,
    mailboxes: Vec<(String, String)>,
    emulator: graph_emulator::Emulator,
    deletes: AtomicU64,
    edits: AtomicU64,
    passes: AtomicU64,
    found: AtomicU64,
}

impl Owners {
    /// One repair pass over every mailbox, eight at a time. A pass that fails (Graph faults) or
    /// finds the mailbox busy is simply tried again by the next sweep.
    async fn sweep(&self) {
        use futures_util::StreamExt;
        let passes = futures_util::stream::iter(self.mailboxes.clone())
            .map(|(c, m)| {
                let r = self.repairer.clone();
                async move { r.pass(&c, &m).await }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        for p in passes.into_iter().flatten() {
            self.passes.fetch_add(1, Ordering::Relaxed);
            self.found
                .fetch_add(p.found.len() as u64, Ordering::Relaxed);
        }
    }

    async fn keep_repairing(self: Arc<Self>, on: Arc<AtomicBool>) {
        while on.load(Ordering::Relaxed) {
            self.sweep().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every 100–400 ms, a random owner deletes one of their copies, or retitles and moves it.
    async fn act(self: Arc<Self>, on: Arc<AtomicBool>, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x000a_11ce);
        while on.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
            let (_, mb) = &self.mailboxes[rng.random_range(0..self.mailboxes.len())];
            let events = self.emulator.calendar(mb);
            let Some(e) = events.choose(&mut rng) else {
                continue;
            };
            let id = e["id"].as_str().expect("id");
            if rng.random_bool(0.5) {
                if self.emulator.remove_event(mb, id) {
                    self.deletes.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let edit = serde_json::json!({
                    "subject": "changed in Outlook",
                    "start": {"dateTime": "2026-12-30T06:00:00", "timeZone": "UTC"},
                    "end": {"dateTime": "2026-12-30T07:00:00", "timeZone": "UTC"},
                });
                if self.emulator.edit_event(mb, id, &edit).is_ok() {
                    self.edits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Replays every dead letter with the operators' own tool (`outlook-sync dlq replay --all`:
/// each is republished to the work exchange with `x-replay: true`). Returns how many. A dead
/// letter from ingest would mean a valid event was refused, which fails the test.
async fn replay_dead_letters(sb: &Sandbox) -> usize {
    let dlq = Dlq::new(&sb.cfg, sb.redis.clone());
    let refused = dlq
        .list(&Filter {
            stage: Some("ingest".into()),
            ..Filter::default()
        })
        .await
        .expect("listing the dead letters");
    assert!(
        refused.records.is_empty(),
        "valid events became dead letters at ingest: {:?}",
        refused.records
    );
    // Throttling slows a mailbox; it never turns a change into a dead letter.
    let throttled = dlq
        .list(&Filter {
            graph_status: Some(429),
            ..Filter::default()
        })
        .await
        .expect("listing the dead letters");
    assert!(
        throttled.records.is_empty(),
        "throttled changes became dead letters: {:?}",
        throttled.records
    );
    let report = dlq
        .replay(
            &ReplayRequest {
                all: true,
                ..ReplayRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .expect("replaying the dead letters");
    assert!(
        report.skipped.is_empty(),
        "not replayed: {:?}",
        report.skipped
    );
    report.replayed
}

#[test]
fn histories_are_a_function_of_the_seed_and_the_model_follows_the_product_rules() {
    let a = History::generate(42);
    let b = History::generate(42);
    assert_eq!(a.describe(), b.describe());
    assert_ne!(a.describe(), History::generate(43).describe());
    // Over many seeds, every perturbation and every shape occurs.
    let hs: Vec<History> = (1..=200).map(History::generate).collect();
    let all: Vec<&Delivery> = hs.iter().flat_map(|h| &h.deliveries).collect();
    for how in [How::Duplicate, How::Redelivered, How::Replayed] {
        assert!(all.iter().any(|d| d.how == how), "{how:?} never occurs");
    }
    assert!(all.iter().any(|d| d.late));
    let revs: Vec<&Revision> = hs
        .iter()
        .flat_map(|h| h.schedules.iter().flat_map(|(_, r)| r))
        .collect();
    assert!(revs.iter().any(|r| r.kind == Kind::Deleted));
    assert!(
        hs.iter()
            .flat_map(|h| &h.schedules)
            .any(|(_, r)| r[0].kind == Kind::Updated),
        "no schedule predates the link"
    );
    assert!(revs.iter().any(|r| matches!(r.timing, Timing::AllDay(..))));
    assert!(hs.iter().any(|h| h.burst.is_some()));

    // The model: the latest revision's linked participants hold it; nobody else does.
    let mut h = History::generate(7);
    h.schedules.truncate(1);
    let company = h.company.clone();
    let revs = &mut h.schedules[0].1;
    revs.truncate(1);
    revs[0].kind = Kind::Created;
    revs[0].owner = "u-1";
    revs[0].others = vec![UNLINKED, "u-3"];
    let want = h.expected();
    assert_eq!(want[&mailbox(&company, "a")].len(), 1);
    assert!(want[&mailbox(&company, "b")].is_empty());
    assert_eq!(want[&mailbox(&company, "c")].len(), 1);
    // ...and the check finds a missing, a duplicated, a stale and an extra copy.
    let tagged = |s: &str, subject: &str| {
        serde_json::json!({
            "subject": subject,
            "start": {"dateTime": want[&mailbox(&company, "a")]["s1"].start},
            "end": {"dateTime": want[&mailbox(&company, "a")]["s1"].end},
            "singleValueExtendedProperties": [{
                "id": TAG_PROPERTY_ID,
                "value": outlook_sync::graph::mapping::tag_value(&company, s)
            }]
        })
    };
    let title = want[&mailbox(&company, "a")]["s1"].subject.clone();
    let v = check(&h, |mb| {
        if mb.starts_with("a@") {
            vec![tagged("s1", &title), tagged("s1", &title)]
        } else if mb.starts_with("b@") {
            vec![tagged("s1", &title)]
        } else {
            vec![]
        }
    });
    assert_eq!(
        (v.missing, v.duplicated, v.stale, v.extra),
        (1, 1, 0, 1),
        "{v:?}"
    );
    let v = check(&h, |mb| {
        if mb.starts_with("b@") {
            vec![]
        } else {
            vec![tagged("s1", "an older title")]
        }
    });
    assert_eq!(
        (v.missing, v.duplicated, v.stale, v.extra),
        (0, 0, 2, 0),
        "{v:?}"
    );
}
