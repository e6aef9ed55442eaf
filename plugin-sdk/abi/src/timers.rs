//! Timers: an entity's pending wake-ups, kept in its state.
//!
//! A plugin whose manifest declares a `timer_resolution` may ask to be woken for an
//! entity at a later event time (say, when its oldest event leaves a window). At that
//! instant it computes the entity's features again and emits a row stamped with it, so
//! a value that changes with the passing of time alone is stored where it changes.
//!
//! # The rule (every host and the SDK follow it)
//!
//! Per entity, events and wake-ups are applied in time order: **a wake-up at `t` comes
//! after every event at or before `t`, and before every event after `t`.** Wake-up
//! times are multiples of the resolution (the SDK rounds a request up to the grid);
//! two requests for one instant are one wake-up.
//!
//! Inside an apply call the plugin wakes itself: before an event at `e` it takes every
//! pending wake-up before `e`. After an entity's events, the request names the instant
//! up to which the host knows no more events will come (`fire_until`, see
//! [`crate::ApplyRequest::with_fire_until`]); the plugin takes every wake-up at or
//! before it. An entity may come with no events at all, only to be woken. The batch
//! host sets `fire_until` to the end of its input; the stream host to just before its
//! watermark, since an event at the watermark may still arrive.
//!
//! # Where timers live
//!
//! In the state, right after its 4-byte version, so that whatever carries a state
//! (checkpoints, `--state-out`/`--start-state`, a reshard's hand-over, an erasure
//! that drops it) carries its timers too:
//!
//! ```text
//! u32 version | u32 n | n × i64 wake-up times (µs, UTC, strictly ascending) | plugin bytes
//! ```
//!
//! Hosts read the earliest ([`next_wake`]) to know when an entity is due, and check the
//! list ([`check_state`]) of every state a plugin returns.

use crate::AbiError;

/// The coarsest resolution a manifest may declare: a day, in µs.
pub const MAX_RESOLUTION: u64 = 86_400_000_000;

/// The `source_event` of a row a wake-up emitted (no event produced it).
pub const WAKE_ROW: u32 = u32::MAX;

/// `at` rounded up to a multiple of `resolution` (µs; 0 leaves it as is), saturating at
/// the largest multiple.
pub fn round_up(at: i64, resolution: u64) -> i64 {
    let Ok(r) = i64::try_from(resolution) else {
        return at;
    };
    if r <= 1 {
        return at;
    }
    let rem = at.rem_euclid(r);
    if rem == 0 {
        return at;
    }
    at.checked_add(r - rem)
        .unwrap_or(i64::MAX - i64::MAX.rem_euclid(r))
}

/// The wake-up times of a state, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers<'a> {
    bytes: &'a [u8],
}

impl<'a> Timers<'a> {
    /// How many wake-ups are pending.
    pub fn len(&self) -> usize {
        self.bytes.len() / 8
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The `i`-th, in ascending order.
    pub fn get(&self, i: usize) -> Option<i64> {
        let b = self.bytes.get(i * 8..i * 8 + 8)?;
        Some(i64::from_le_bytes(b.try_into().ok()?))
    }

    /// The earliest.
    pub fn first(&self) -> Option<i64> {
        self.get(0)
    }

    /// All of them, ascending.
    pub fn iter(&self) -> impl Iterator<Item = i64> + 'a {
        self.bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

/// Splits a timer plugin's `state` into its wake-up times and the plugin's own bytes
/// (after the version). Checks only that the list fits.
pub fn split_state(state: &[u8]) -> Result<(Timers<'_>, &[u8]), AbiError> {
    let count = state
        .get(4..8)
        .ok_or(AbiError::Truncated("state timer count"))?;
    let n = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let end = n
        .checked_mul(8)
        .and_then(|b| b.checked_add(8))
        .ok_or(AbiError::Truncated("state timers"))?;
    let timers = state
        .get(8..end)
        .ok_or(AbiError::Truncated("state timers"))?;
    Ok((Timers { bytes: timers }, &state[end..]))
}

/// The earliest pending wake-up of a timer plugin's `state`.
pub fn next_wake(state: &[u8]) -> Result<Option<i64>, AbiError> {
    Ok(split_state(state)?.0.first())
}

/// Checks the wake-up list of a state a plugin returned — it fits, is strictly
/// ascending and on the `resolution` grid — and returns the earliest.
pub fn check_state(state: &[u8], resolution: u64) -> Result<Option<i64>, AbiError> {
    let (timers, _) = split_state(state)?;
    let mut previous = None;
    for t in timers.iter() {
        if previous.is_some_and(|p| p >= t) {
            return Err(AbiError::Inconsistent(
                "state wake-up times are not strictly ascending",
            ));
        }
        if round_up(t, resolution) != t {
            return Err(AbiError::Inconsistent(
                "a state wake-up time is off the manifest's timer resolution",
            ));
        }
        previous = Some(t);
    }
    Ok(timers.first())
}

/// Appends a timer plugin's state header — `version`, then `timers` (ascending) — to
/// `out`; the plugin's own bytes follow.
pub fn write_state_header(out: &mut Vec<u8>, version: u32, timers: &[i64]) {
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(timers.len() as u32).to_le_bytes());
    for t in timers {
        out.extend_from_slice(&t.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_goes_up_to_the_grid_and_never_overflows() {
        assert_eq!(round_up(0, 60), 0);
        assert_eq!(round_up(1, 60), 60);
        assert_eq!(round_up(60, 60), 60);
        assert_eq!(round_up(-1, 60), 0);
        assert_eq!(round_up(-61, 60), -60);
        assert_eq!(round_up(17, 0), 17);
        assert_eq!(round_up(17, 1), 17);
        let top = round_up(i64::MAX - 3, 1_000);
        assert!(top > i64::MAX - 1_000 && top % 1_000 == 0, "{top}");
    }

    #[test]
    fn a_header_reads_back_and_a_bad_one_is_named() {
        let mut state = Vec::new();
        write_state_header(&mut state, 3, &[60, 120]);
        state.extend_from_slice(b"own");
        let (timers, rest) = split_state(&state).expect("split");
        assert_eq!(timers.iter().collect::<Vec<_>>(), [60, 120]);
        assert_eq!(rest, b"own");
        assert_eq!(next_wake(&state), Ok(Some(60)));
        assert_eq!(check_state(&state, 60), Ok(Some(60)));
        assert!(check_state(&state, 50).is_err(), "off the grid");
        let mut unordered = Vec::new();
        write_state_header(&mut unordered, 3, &[120, 60]);
        assert!(check_state(&unordered, 0).is_err());
        for cut in 0..16 {
            assert!(split_state(&state[..cut]).is_err(), "cut at {cut}");
        }
        let mut none = Vec::new();
        write_state_header(&mut none, 3, &[]);
        assert_eq!(next_wake(&none), Ok(None));
        let mut lying = Vec::new();
        lying.extend_from_slice(&3u32.to_le_bytes());
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(split_state(&lying).is_err());
    }
}
