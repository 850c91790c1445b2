//! Staging in Redis, straight through `Windows::stage` (ingest appends) and `Windows::read` (the
//! flush consolidates under its claim): per schedule only the newest revision is kept, each
//! event's outcome is reported, the marks the flush and the ledger read (`born`, `replay`)
//! follow the rules, and the largest batch ingest can send is staged in one call.

use std::time::Duration;

use outlook_sync::demo::Ev;
use outlook_sync::event::{ScheduleEvent, decode};
use outlook_sync::store::{Keys, Member};
use outlook_sync::window::{Dropped, Staged, Staging, Windows};
use redis::AsyncCommands;

use crate::support;

struct Fixture {
    windows: Windows,
    redis: outlook_sync::store::Redis,
    prefix: String,
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        let cfg = support::config(name);
        let redis = support::redis().await;
        let prefix = cfg.redis.key_prefix.clone();
        Fixture {
            windows: Windows::new(redis.clone(), Keys::new(&prefix), Duration::from_secs(300)),
            redis,
            prefix,
        }
    }

    async fn field(&self, schedule: &str, field: &str) -> Option<String> {
        let mut r = self.redis.clone();
        r.hget(format!("{}:s:acme/{schedule}", self.prefix), field)
            .await
            .unwrap()
    }

    async fn due(&self) -> Vec<String> {
        let mut r = self.redis.clone();
        r.zrange(format!("{}:due", self.prefix), 0, -1)
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let mut r = self.redis.clone();
        let keys: Vec<String> = r.keys(format!("{}:*", self.prefix)).await.unwrap();
        for chunk in keys.chunks(500) {
            let _: () = r.del(chunk).await.unwrap();
        }
    }
}

fn body(ev: Ev) -> (Vec<u8>, ScheduleEvent) {
    let raw = serde_json::to_vec(&ev.people("u-1", &[]).wire()).unwrap();
    let decoded = decode(&raw).unwrap();
    (raw, decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_appends_each_event_and_the_flush_keeps_the_newest_revision_counting_stale_and_duplicates()
 {
    let f = Fixture::new("window-newest").await;
    let (r1, e1) = body(Ev::created("acme", "s-1"));
    let (r3, e3) = body(Ev::updated("acme", "s-1", 3).title("third"));
    let (r2, e2) = body(Ev::updated("acme", "s-1", 2).title("second"));
    let (o1, oe1) = body(Ev::updated("acme", "s-2", 4));
    let batch = [
        Staging::new(&e1, &r1),
        Staging::new(&e3, &r3),
        Staging::new(&e2, &r2),
        Staging::new(&e3, &r3),
        Staging::new(&oe1, &o1),
    ];
    let outcomes = f.windows.stage(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            Staged::Appended,
            Staged::Appended,
            Staged::Stale,
            Staged::Duplicate,
            Staged::Appended
        ]
    );
    // The flush reads (and consolidates) under its claim.
    let read = f.windows.read(&[Member::new("acme", "s-1")]).await.unwrap();
    let s = read[0].as_ref().expect("staged");
    assert_eq!((s.revision, s.born_here, &s.raw), (3, true, &r3));
    assert_eq!(
        s.dropped,
        Dropped::default(),
        "revisions 1 and 3 were both news"
    );
    assert_eq!(f.field("s-1", "rev").await.as_deref(), Some("3"));
    assert_eq!(
        f.field("s-1", "event").await.map(String::into_bytes),
        Some(r3.clone()),
        "the newest revision's message is what the flush reads"
    );
    assert_eq!(f.field("s-1", "kind").await.as_deref(), Some("u"));
    // Its create was staged here, and an update does not take that away.
    assert_eq!(f.field("s-1", "born").await.as_deref(), Some("1"));
    // s-2 was never created through this Redis.
    assert_eq!(f.field("s-2", "born").await, None);
    let mut due = f.due().await;
    due.sort();
    assert_eq!(due, vec!["acme/s-1".to_string(), "acme/s-2".to_string()]);
    // A later batch's older revision and the same one again are appended; the flush finds the
    // first stale and the second a duplicate against what it consolidated, and neither moves
    // the staged state.
    assert_eq!(
        f.windows
            .stage(&[Staging::new(&e2, &r2), Staging::new(&e3, &r3)])
            .await
            .unwrap(),
        vec![Staged::Appended, Staged::Appended]
    );
    let read = f.windows.read(&[Member::new("acme", "s-1")]).await.unwrap();
    let s = read[0].as_ref().expect("staged");
    assert_eq!((s.revision, &s.raw), (3, &r3));
    assert_eq!(
        s.dropped,
        Dropped {
            duplicates: 1,
            stale: 1
        }
    );
    // Nothing is left pending.
    let mut r = f.redis.clone();
    let pending: bool = r
        .exists(Keys::new(&f.prefix).pending(&Member::new("acme", "s-1")))
        .await
        .unwrap();
    assert!(!pending, "the pending records went with the consolidation");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_keeps_the_highest_revision_of_batches_staged_in_any_order_and_drops_the_rest() {
    let f = Fixture::new("window-order").await;
    let (r1, e1) = body(Ev::created("acme", "s-1"));
    let (r2, e2) = body(Ev::updated("acme", "s-1", 2).title("second"));
    let (r3, e3) = body(Ev::updated("acme", "s-1", 3).title("third"));
    // Three batches, the newest in the middle: nothing is decided at ingest but per batch.
    for (e, r) in [(&e1, &r1), (&e3, &r3), (&e2, &r2)] {
        f.windows.stage(&[Staging::new(e, r)]).await.unwrap();
    }
    let m = Member::new("acme", "s-1");
    let read = f.windows.read(std::slice::from_ref(&m)).await.unwrap();
    let s = read[0].as_ref().expect("staged");
    assert_eq!((s.revision, s.born_here, &s.raw), (3, true, &r3));
    // The lower revisions are gone; only the staged state remains.
    let mut r = f.redis.clone();
    let pending: bool = r.exists(Keys::new(&f.prefix).pending(&m)).await.unwrap();
    assert!(!pending, "pending records left");
    let fields: Vec<String> = r.hkeys(format!("{}:s:acme/s-1", f.prefix)).await.unwrap();
    assert!(
        fields.iter().all(|k| !k.starts_with("e:")),
        "pending entries left: {fields:?}"
    );
    // Reading again (another claim) sees the same.
    let again = f.windows.read(&[m]).await.unwrap();
    assert_eq!(
        again[0].as_ref().map(|s| (s.revision, s.born_here)),
        Some((3, true))
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_marks_the_staged_revision_and_a_newer_revision_clears_the_mark() {
    let f = Fixture::new("window-replay").await;
    let (r1, e1) = body(Ev::created("acme", "s-1"));
    let (r2, e2) = body(Ev::updated("acme", "s-1", 2));
    let (r3, e3) = body(Ev::updated("acme", "s-1", 3));
    f.windows
        .stage(&[Staging::new(&e1, &r1), Staging::new(&e2, &r2)])
        .await
        .unwrap();
    assert_eq!(f.field("s-1", "replay").await, None);
    // An operator replays the dead letter of revision 1: revision 2 (staged) is what is re-applied.
    let replay = Staging {
        replay: true,
        ..Staging::new(&e1, &r1)
    };
    assert_eq!(
        f.windows.stage(&[replay]).await.unwrap(),
        vec![Staged::Replayed]
    );
    assert_eq!(f.field("s-1", "replay").await.as_deref(), Some("2"));
    assert_eq!(f.field("s-1", "rev").await.as_deref(), Some("2"));
    // A newer revision supersedes the replay: the mark goes (when the flush consolidates), the
    // rest of the state moves on.
    assert_eq!(
        f.windows.stage(&[Staging::new(&e3, &r3)]).await.unwrap(),
        vec![Staged::Appended]
    );
    f.windows.read(&[Member::new("acme", "s-1")]).await.unwrap();
    assert_eq!(f.field("s-1", "replay").await, None);
    assert_eq!(f.field("s-1", "rev").await.as_deref(), Some("3"));
    assert_eq!(f.field("s-1", "born").await.as_deref(), Some("1"));
    // A replay that is itself the newest revision is staged and marked at once.
    let (r4, e4) = body(Ev::updated("acme", "s-1", 4));
    let replay = Staging {
        replay: true,
        ..Staging::new(&e4, &r4)
    };
    assert_eq!(
        f.windows.stage(&[replay]).await.unwrap(),
        vec![Staged::Newest]
    );
    assert_eq!(f.field("s-1", "replay").await.as_deref(), Some("4"));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batch_ingest_sends_is_staged_in_one_call_and_every_schedule_becomes_due() {
    let f = Fixture::new("window-large").await;
    // Ingest batches are at most the prefetch, whose ceiling is 2,000.
    let n = 2_000;
    let events: Vec<(Vec<u8>, ScheduleEvent)> = (0..n)
        .map(|i| body(Ev::created("acme", &format!("s-{i}"))))
        .collect();
    let batch: Vec<Staging<'_>> = events.iter().map(|(r, e)| Staging::new(e, r)).collect();
    let outcomes = f.windows.stage(&batch).await.unwrap();
    assert_eq!(outcomes.len(), n);
    assert!(outcomes.iter().all(|o| *o == Staged::Appended));
    assert_eq!(f.due().await.len(), n);
    // Each is due at the end of the current window, and once the flush has consolidated it,
    // retained well beyond that.
    let members: Vec<Member> = (0..n)
        .map(|i| Member::new("acme", format!("s-{i}")))
        .collect();
    let read = f.windows.read(&members).await.unwrap();
    assert!(
        read.iter()
            .all(|s| s.as_ref().is_some_and(|s| s.revision == 1 && s.born_here))
    );
    let mut r = f.redis.clone();
    let ttl: i64 = r.ttl(format!("{}:s:acme/s-1999", f.prefix)).await.unwrap();
    assert!(
        ttl > 30 * 24 * 3600,
        "retained for the staging retention, got {ttl}s"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_shards_each_schedule_is_due_claimed_and_settled_in_its_own_shard() {
    let f = Fixture::new("window-shards").await;
    let keys = Keys::sharded(&f.prefix, 3, false);
    let windows = Windows::new(f.redis.clone(), keys.clone(), Duration::from_millis(50));
    let n = 60;
    let events: Vec<(Vec<u8>, ScheduleEvent)> = (0..n)
        .map(|i| body(Ev::created("acme", &format!("s-{i}"))))
        .collect();
    let batch: Vec<Staging<'_>> = events.iter().map(|(r, e)| Staging::new(e, r)).collect();
    windows.stage(&batch).await.unwrap();
    let mut r = f.redis.clone();
    let mut per_shard = Vec::new();
    for shard in 0..3 {
        let due: Vec<String> = r.zrange(keys.due_in(shard), 0, -1).await.unwrap();
        for m in &due {
            let m = Member::decode(m).unwrap();
            assert_eq!(keys.shard_of(&m), shard, "{m:?} is due in shard {shard}");
        }
        per_shard.push(due.len());
    }
    assert_eq!(per_shard.iter().sum::<usize>(), n);
    assert!(
        per_shard.iter().all(|k| *k > 0),
        "every shard has due schedules: {per_shard:?}"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(windows.due_now().await.unwrap(), n as u64);
    // A claim takes from every shard, and completing the claims leaves nothing claimed.
    let claimed = windows
        .claim("token-1", n, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), n);
    assert_eq!(windows.complete("token-1", &claimed).await.unwrap(), n);
    assert_eq!(windows.due_or_claimed().await.unwrap(), 0);
    // Made due again by the repair, each lands in its own shard too.
    windows.make_due_now(&claimed[..6]).await.unwrap();
    for m in &claimed[..6] {
        let score: Option<f64> = r
            .zscore(keys.due_in(keys.shard_of(m)), m.encode())
            .await
            .unwrap();
        assert!(score.is_some(), "{m:?} is due in its shard");
    }
    assert_eq!(windows.due_now().await.unwrap(), 6);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_staged_by_the_previous_version_as_hash_fields_are_consolidated_with_new_ones() {
    // Versions before December 2026 appended `e:{rev}` = `{kind}{replay}{staged_at}:{raw}` to
    // the schedule's hash; a schedule staged by one and flushed by this one loses nothing.
    let f = Fixture::new("window-upgrade").await;
    let (r2, _) = body(Ev::updated("acme", "s-1", 2).title("second"));
    let (r1, _) = body(Ev::created("acme", "s-1"));
    let mut old = b"u01733240000000:".to_vec();
    old.extend_from_slice(&r2);
    let mut created = b"c01733240000000:".to_vec();
    created.extend_from_slice(&r1);
    let mut r = f.redis.clone();
    let key = format!("{}:s:acme/s-1", f.prefix);
    let _: () = r
        .hset_multiple(&key, &[("e:2", old), ("e:1", created)])
        .await
        .unwrap();
    let m = Member::new("acme", "s-1");
    let read = f.windows.read(std::slice::from_ref(&m)).await.unwrap();
    let s = read[0].as_ref().expect("staged");
    assert_eq!((s.revision, s.born_here, &s.raw), (2, true, &r2));
    let fields: Vec<String> = r.hkeys(&key).await.unwrap();
    assert!(
        fields.iter().all(|k| !k.starts_with("e:")),
        "old entries left: {fields:?}"
    );
    // An old entry beside a newer appended record: the newer wins.
    let mut stale = b"u01733240000000:".to_vec();
    stale.extend_from_slice(&r2);
    let _: () = r.hset(&key, "e:2", stale).await.unwrap();
    let (r3, e3) = body(Ev::updated("acme", "s-1", 3).title("third"));
    f.windows.stage(&[Staging::new(&e3, &r3)]).await.unwrap();
    let read = f.windows.read(std::slice::from_ref(&m)).await.unwrap();
    let s = read[0].as_ref().expect("staged");
    assert_eq!((s.revision, &s.raw), (3, &r3));
    assert_eq!(
        s.dropped.duplicates, 1,
        "revision 2 was consolidated already"
    );
    f.cleanup().await;
}
