//! Injected failures (GRAPH.md §4.2, §7.6): seeded random faults and one-shot scripted faults.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{FaultKind, Faults, ScriptedFault};

pub(crate) struct FaultState {
    pub faults: Faults,
    rng: StdRng,
    pub scripted: VecDeque<ScriptedFault>,
}

/// Outcome of the random draw for one request.
#[derive(Debug, Default)]
pub(crate) struct Draw {
    /// A fault answered instead of performing the request.
    pub before: Option<FaultKind>,
    /// Perform the request, then answer 504.
    pub after_create_504: bool,
}

impl FaultState {
    pub fn new(faults: Faults) -> FaultState {
        FaultState {
            rng: StdRng::seed_from_u64(faults.seed),
            faults,
            scripted: VecDeque::new(),
        }
    }

    pub fn set(&mut self, faults: Faults) {
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
    }

    /// Removes and returns the first scripted fault matching the request.
    pub fn take_scripted(&mut self, method: &str, path_and_query: &str) -> Option<FaultKind> {
        let pos = self.scripted.iter().position(|f| {
            f.matcher
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && f.matcher
                    .path_contains
                    .as_deref()
                    .is_none_or(|p| path_and_query.contains(p))
        })?;
        self.scripted.remove(pos).map(|f| f.kind)
    }

    /// Draws the random faults for a Graph event request.
    pub fn draw(&mut self, is_create: bool, retry_after: Option<f64>) -> Draw {
        let f = &self.faults;
        let total = f.rate_drop_connection + f.rate_503 + f.rate_504 + f.rate_429;
        let mut draw = Draw::default();
        if total > 0.0 {
            let r: f64 = self.rng.random();
            let mut acc = 0.0;
            let options = [
                (f.rate_drop_connection, FaultKind::DropConnection),
                (f.rate_503, FaultKind::Status503 { retry_after }),
                (f.rate_504, FaultKind::Gateway504),
                (
                    f.rate_429,
                    FaultKind::Throttle429 {
                        retry_after: retry_after.unwrap_or(1.0),
                    },
                ),
            ];
            for (rate, kind) in options {
                acc += rate;
                if r < acc {
                    draw.before = Some(kind);
                    break;
                }
            }
        }
        if is_create && draw.before.is_none() && self.faults.rate_504_after_create > 0.0 {
            let r: f64 = self.rng.random();
            draw.after_create_504 = r < self.faults.rate_504_after_create;
        }
        draw
    }

    pub fn draw_token_503(&mut self) -> bool {
        if self.faults.rate_token_503 <= 0.0 {
            return false;
        }
        let r: f64 = self.rng.random();
        r < self.faults.rate_token_503
    }
}
