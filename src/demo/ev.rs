//! Schedule events, built tersely (the demo, the tests, the benchmark).

use jiff::Timestamp;

use crate::event::{EventType, Place, Visibility, WireEvent, WireSchedule};

/// Builds schedule events tersely (the demo, tests, the benchmark).
#[derive(Debug, Clone)]
pub struct Ev(pub WireEvent);

impl Ev {
    fn base(company: &str, schedule: &str, revision: u64, event_type: EventType) -> Ev {
        let now = Timestamp::now().to_string();
        Ev(WireEvent {
            schema_version: 1,
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type,
            occurred_at: now.clone(),
            company_id: company.into(),
            schedule_id: schedule.into(),
            revision,
            schedule: Some(WireSchedule {
                title: format!("Schedule {schedule}"),
                memo: String::new(),
                all_day: false,
                start: Some("2026-11-30T10:00:00+09:00".into()),
                end: Some("2026-11-30T11:00:00+09:00".into()),
                time_zone: Some("Asia/Tokyo".into()),
                first_date: None,
                last_date: None,
                place: None,
                owner_user_id: "u-100".into(),
                participant_user_ids: vec![],
                visibility: Visibility::Public,
                url: format!("https://app.cyzen.cloud/schedules/{schedule}"),
                created_at: now.clone(),
                updated_at: now,
            }),
        })
    }

    pub fn created(company: &str, schedule: &str) -> Ev {
        Self::base(company, schedule, 1, EventType::Created)
    }

    pub fn updated(company: &str, schedule: &str, revision: u64) -> Ev {
        Self::base(company, schedule, revision, EventType::Updated)
    }

    pub fn deleted(company: &str, schedule: &str, revision: u64) -> Ev {
        let mut e = Self::base(company, schedule, revision, EventType::Deleted);
        e.0.schedule = None;
        e
    }

    fn s(&mut self) -> &mut WireSchedule {
        self.0.schedule.as_mut().expect("not a delete")
    }

    pub fn title(mut self, t: &str) -> Ev {
        self.s().title = t.into();
        self
    }

    pub fn memo(mut self, m: &str) -> Ev {
        self.s().memo = m.into();
        self
    }

    /// A timed schedule: RFC 3339 start and end, and its IANA zone.
    pub fn at(mut self, start: &str, end: &str, zone: &str) -> Ev {
        let s = self.s();
        s.all_day = false;
        s.start = Some(start.into());
        s.end = Some(end.into());
        s.time_zone = Some(zone.into());
        s.first_date = None;
        s.last_date = None;
        self
    }

    /// An all-day schedule from `first` to `last`, both inclusive.
    pub fn all_day(mut self, first: &str, last: &str) -> Ev {
        let s = self.s();
        s.all_day = true;
        s.start = None;
        s.end = None;
        s.first_date = Some(first.into());
        s.last_date = Some(last.into());
        self
    }

    pub fn place(mut self, name: &str, address: &str) -> Ev {
        self.s().place = Some(Place {
            name: name.into(),
            address: address.into(),
        });
        self
    }

    /// The owner, then the other participants.
    pub fn people(mut self, owner: &str, others: &[&str]) -> Ev {
        let s = self.s();
        s.owner_user_id = owner.into();
        s.participant_user_ids = others.iter().map(|o| o.to_string()).collect();
        self
    }

    pub fn private(mut self) -> Ev {
        self.s().visibility = Visibility::Private;
        self
    }

    pub fn occurred(mut self, at: Timestamp) -> Ev {
        self.0.occurred_at = at.to_string();
        self
    }

    pub fn wire(self) -> WireEvent {
        self.0
    }
}
