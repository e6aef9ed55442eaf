//! `churn_features`: per-customer churn signals.
//!
//! Input is a customer activity log: `signup`, `login`, `session` (with its length in
//! minutes) and `ticket` (a support ticket) events. Every event emits the customer's
//! features as of that event:
//!
//! - `tenure_months`: whole months (30.4375 days) since signup, or since the first
//!   event seen when no signup was seen;
//! - `days_since_last_login`: whole days since the last login, null before the first;
//! - `sessions_30d`, `avg_session_minutes_30d`: sessions in `(t - 30 d, t]` and their
//!   mean length (null without sessions);
//! - `support_tickets_90d`: tickets in `(t - 90 d, t]`.
//!
//! Event types other than these four count as activity only (they set tenure's start
//! if nothing did). `read(state, as_of)` gives the features at any later instant.

use lockstep_sdk::prelude::*;
use std::collections::VecDeque;

const MONTH_MICROS: f64 = 30.4375 * Timestamp::DAY as f64;
const SESSION_WINDOW: i64 = 30 * Timestamp::DAY;
const TICKET_WINDOW: i64 = 90 * Timestamp::DAY;

/// One activity event. Its fields are the input schema (`#[derive(Event)]`).
#[derive(Deserialize, Event)]
pub struct Activity<'a> {
    /// customer identifier
    #[event(key)]
    pub customer_id: &'a str,
    /// event time
    #[event(time)]
    pub ts: Timestamp,
    /// signup, login, session or ticket
    pub event_type: &'a str,
    /// session length, for session events
    pub session_minutes: Option<f64>,
    /// event id, used to drop duplicates
    #[event(id)]
    pub event_id: Option<&'a str>,
}

/// The features, in order (`#[derive(Features)]`).
#[derive(Serialize, Features, Debug, Clone, PartialEq)]
pub struct Churn {
    /// whole months since signup
    #[feat(default = 0)]
    pub tenure_months: i64,
    /// whole days since the last login
    pub days_since_last_login: Option<i64>,
    /// sessions in the last 30 days
    #[feat(default = 0)]
    pub sessions_30d: i64,
    /// support tickets in the last 90 days
    #[feat(default = 0)]
    pub support_tickets_90d: i64,
    /// mean session length in the last 30 days
    pub avg_session_minutes_30d: Option<f64>,
}

/// Per-customer state.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct CustomerState {
    since: Option<i64>,
    signed_up: bool,
    last_login: Option<i64>,
    sessions: VecDeque<(i64, f64)>,
    tickets: VecDeque<i64>,
}

/// The transform.
pub struct ChurnFeatures;

fn features(s: &CustomerState, at: i64) -> Churn {
    let since = s.since.unwrap_or(at);
    let tenure = (at.saturating_sub(since).max(0) as f64 / MONTH_MICROS).floor() as i64;
    let in_window = |ts: i64, w: i64| ts <= at && at.saturating_sub(ts) < w;
    let (mut count, mut total) = (0i64, 0.0f64);
    for &(ts, minutes) in &s.sessions {
        if in_window(ts, SESSION_WINDOW) {
            count += 1;
            total += minutes;
        }
    }
    Churn {
        tenure_months: tenure,
        days_since_last_login: s
            .last_login
            .map(|l| at.saturating_sub(l).div_euclid(Timestamp::DAY)),
        sessions_30d: count,
        support_tickets_90d: s
            .tickets
            .iter()
            .filter(|&&t| in_window(t, TICKET_WINDOW))
            .count() as i64,
        avg_session_minutes_30d: (count > 0).then(|| total / count as f64),
    }
}

impl Transform for ChurnFeatures {
    type Event<'a> = Activity<'a>;
    type Row = Churn;
    type State = CustomerState;

    fn manifest() -> Manifest {
        lockstep_sdk::schema::manifest::<Self>("churn_features", "1.0.0")
            .description("Per-customer churn signals: tenure, login recency, session activity, support load.")
            .keyed_stateful(1)
            .supports_read()
            .build()
    }

    fn apply(
        s: &mut CustomerState,
        e: Activity<'_>,
        out: &mut Emit<'_, Churn>,
    ) -> Result<(), Error> {
        let t = e.ts.micros();
        match e.event_type {
            "signup" if !s.signed_up || s.since.is_some_and(|x| t < x) => {
                s.since = Some(t);
                s.signed_up = true;
            }
            "login" => s.last_login = Some(s.last_login.map_or(t, |l| l.max(t))),
            "session" => s.sessions.push_back((t, e.session_minutes.unwrap_or(0.0))),
            "ticket" => s.tickets.push_back(t),
            _ => {}
        }
        if s.since.is_none() {
            s.since = Some(t);
        }
        while s
            .sessions
            .front()
            .is_some_and(|&(ts, _)| t.saturating_sub(ts) >= SESSION_WINDOW)
        {
            s.sessions.pop_front();
        }
        while s
            .tickets
            .front()
            .is_some_and(|&ts| t.saturating_sub(ts) >= TICKET_WINDOW)
        {
            s.tickets.pop_front();
        }
        out.emit(features(s, t))
    }

    fn read(s: &CustomerState, as_of: Timestamp) -> Option<Churn> {
        s.since?;
        Some(features(s, as_of.micros()))
    }
}

lockstep_sdk::export!(ChurnFeatures);

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_sdk::testing::{check_derived, check_manifest, run_timed};

    fn ev(secs: i64, kind: &str, minutes: Option<f64>) -> (Timestamp, Activity<'_>) {
        let ts = Timestamp::from_secs(secs);
        (
            ts,
            Activity {
                customer_id: "c",
                ts,
                event_type: kind,
                session_minutes: minutes,
                event_id: None,
            },
        )
    }

    #[test]
    fn manifest_is_valid() {
        check_manifest::<ChurnFeatures>().expect("valid");
        check_derived::<ChurnFeatures>().expect("the manifest matches the structs");
    }

    #[test]
    fn tracks_tenure_logins_sessions_and_tickets() {
        const DAY: i64 = 86_400;
        let mut s = CustomerState::default();
        let rows = run_timed::<ChurnFeatures>(
            &mut s,
            [
                ev(0, "signup", None),
                ev(DAY, "login", None),
                ev(DAY + 60, "session", Some(10.0)),
                ev(20 * DAY, "session", Some(20.0)),
                ev(40 * DAY, "ticket", None),
                ev(65 * DAY, "login", None),
            ],
        )
        .expect("apply");
        let r = &rows[3].1;
        assert_eq!((r.sessions_30d, r.avg_session_minutes_30d), (2, Some(15.0)));
        assert_eq!(r.days_since_last_login, Some(19));
        let last = &rows[5].1;
        assert_eq!(last.tenure_months, 2);
        assert_eq!((last.sessions_30d, last.avg_session_minutes_30d), (0, None));
        assert_eq!(
            (last.support_tickets_90d, last.days_since_last_login),
            (1, Some(0))
        );
        assert_eq!(rows[0].1.days_since_last_login, None);
        let later = ChurnFeatures::read(&s, Timestamp::from_secs(200 * DAY)).expect("state");
        assert_eq!(
            (later.support_tickets_90d, later.days_since_last_login),
            (0, Some(135))
        );
        assert!(ChurnFeatures::read(&CustomerState::default(), Timestamp(0)).is_none());
    }
}
