//! Answers on their way to the served-feature log.
//!
//! The serving threads copy each answer (request id, time, body as sent) into a few
//! pre-allocated byte buffers; the log's writer swaps a full buffer for an empty one
//! now and then and reads the answers back from it. An answer costs the serving path
//! one uncontended lock and one copy: no allocation, no wake-up of another thread, and
//! no memory freed on a thread other than the one that allocated it — each of which
//! the serving p99 felt when answers were handed over one by one.
//!
//! The buffers are striped: a serving thread takes the first one free (`try_lock`), so
//! it never waits on the writer, which holds one buffer at a time and may be
//! descheduled while it does (it runs at idle priority). Bounded: when every buffer is
//! at its limit, the answer is refused and the caller counts it.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Bytes before each answer: time (8), id length (4), body length (4).
const HEADER: usize = 16;

/// Answers waiting for the served-feature log; see the [module](self) docs.
pub struct AnswerQueue {
    stripes: Box<[Stripe]>,
    /// Bytes a stripe holds at most.
    stripe_limit: usize,
}

/// One buffer, on a cache line of its own so two threads appending to neighbours do
/// not contend.
#[repr(align(128))]
struct Stripe(Mutex<Vec<u8>>);

impl AnswerQueue {
    /// A queue holding at most about `limit_bytes` of answers, in `stripes` buffers
    /// (at least two, so that a serving thread always finds one the writer does not
    /// hold).
    pub fn new(limit_bytes: usize, stripes: usize) -> Self {
        let stripes = stripes.max(2);
        AnswerQueue {
            stripes: (0..stripes)
                .map(|_| Stripe(Mutex::new(Vec::new())))
                .collect(),
            stripe_limit: (limit_bytes / stripes).max(HEADER),
        }
    }

    /// Appends one answer; `false` when the queue is full (or the answer larger than a
    /// buffer may hold), and nothing was kept.
    pub fn push(&self, request_id: &str, served_at: i64, body: &[u8]) -> bool {
        let (Ok(id_len), Ok(body_len)) =
            (u32::try_from(request_id.len()), u32::try_from(body.len()))
        else {
            return false;
        };
        let needed = HEADER + request_id.len() + body.len();
        if needed > self.stripe_limit {
            return false;
        }
        // Each stripe in turn, without waiting. A serving thread holds a stripe only for
        // a copy, so when every stripe is taken one is free again within moments; when
        // every stripe free is full, the answer is refused.
        loop {
            let mut full = 0;
            for stripe in self.stripes.iter() {
                let Some(mut buffer) = try_lock(&stripe.0) else {
                    continue;
                };
                if buffer.len() + needed > self.stripe_limit {
                    full += 1;
                    continue;
                }
                buffer.extend_from_slice(&served_at.to_le_bytes());
                buffer.extend_from_slice(&id_len.to_le_bytes());
                buffer.extend_from_slice(&body_len.to_le_bytes());
                buffer.extend_from_slice(request_id.as_bytes());
                buffer.extend_from_slice(body);
                return true;
            }
            if full > 0 {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Takes the answers of stripe `index` (modulo the stripe count), leaving `spare`,
    /// emptied, in their place: handing back the buffer of the previous take keeps its
    /// memory in use instead of allocating anew. Read them with [`answers`].
    pub fn take(&self, index: usize, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        let stripe = &self.stripes[index % self.stripes.len()];
        let mut buffer = stripe
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *buffer, spare)
    }

    /// How many stripes there are.
    pub fn stripes(&self) -> usize {
        self.stripes.len()
    }
}

fn try_lock(mutex: &Mutex<Vec<u8>>) -> Option<MutexGuard<'_, Vec<u8>>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        // Nothing panics while holding a stripe; were it to, the bytes are whole answers
        // or a partial one at the end, which [`answers`] stops at.
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// One answer read back from a taken buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedAnswer<'a> {
    /// The request id the response carried (`x-request-id`).
    pub request_id: &'a str,
    /// When it was answered, µs since the epoch (UTC).
    pub served_at: i64,
    /// The response body as sent: a `FeatureResponse` in JSON.
    pub body: &'a [u8],
}

/// The answers in `buffer`, a buffer [`AnswerQueue::take`] returned, in the order they
/// were appended (to that stripe).
pub fn answers(buffer: &[u8]) -> impl Iterator<Item = QueuedAnswer<'_>> {
    let mut rest = buffer;
    std::iter::from_fn(move || {
        let header = rest.get(..HEADER)?;
        let served_at = i64::from_le_bytes(header[..8].try_into().ok()?);
        let id_len = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
        let body_len = u32::from_le_bytes(header[12..16].try_into().ok()?) as usize;
        let id = rest.get(HEADER..HEADER + id_len)?;
        let body = rest.get(HEADER + id_len..HEADER + id_len + body_len)?;
        rest = &rest[HEADER + id_len + body_len..];
        Some(QueuedAnswer {
            request_id: std::str::from_utf8(id).ok()?,
            served_at,
            body,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_back_whole_and_in_order() {
        let queue = AnswerQueue::new(1 << 20, 2);
        for i in 0..100i64 {
            assert!(queue.push(
                &format!("id-{i}"),
                i * 7,
                format!("{{\"n\":{i}}}").as_bytes()
            ));
        }
        let mut got = Vec::new();
        for stripe in 0..queue.stripes() {
            let buffer = queue.take(stripe, Vec::new());
            got.extend(answers(&buffer).map(|a| {
                (
                    a.request_id.to_owned(),
                    a.served_at,
                    String::from_utf8(a.body.to_vec()).unwrap(),
                )
            }));
        }
        got.sort_by_key(|a| a.1);
        assert_eq!(got.len(), 100);
        for (i, (id, at, body)) in got.into_iter().enumerate() {
            assert_eq!(id, format!("id-{i}"));
            assert_eq!(at, i as i64 * 7);
            assert_eq!(body, format!("{{\"n\":{i}}}"));
        }
        // Taken: nothing is read twice.
        for stripe in 0..queue.stripes() {
            assert_eq!(answers(&queue.take(stripe, Vec::new())).count(), 0);
        }
    }

    #[test]
    fn a_full_queue_refuses_and_keeps_what_it_holds() {
        let queue = AnswerQueue::new(2 * (HEADER + 2 + 10) * 3, 2);
        let body = [b'x'; 10];
        let kept = (0..10).filter(|_| queue.push("id", 1, &body)).count();
        assert_eq!(kept, 6, "three answers a stripe");
        assert!(!queue.push("id", 1, &[0; 1 << 16]), "larger than a stripe");
        let back: usize = (0..2)
            .map(|s| answers(&queue.take(s, Vec::new())).count())
            .sum();
        assert_eq!(back, 6);
        assert!(queue.push("id", 1, &body), "room again once taken");
    }

    #[test]
    fn a_stripe_the_writer_holds_is_passed_over() {
        let queue = AnswerQueue::new(1 << 20, 2);
        let held = queue.stripes[0].0.lock().unwrap();
        assert!(queue.push("id", 1, b"body"));
        drop(held);
        assert_eq!(answers(&queue.take(0, Vec::new())).count(), 0);
        assert_eq!(answers(&queue.take(1, Vec::new())).count(), 1);
    }

    #[test]
    fn a_cut_buffer_yields_its_whole_answers_only() {
        let queue = AnswerQueue::new(1 << 20, 2);
        let held = queue.stripes[1].0.lock().unwrap();
        assert!(queue.push("a", 1, b"first"));
        assert!(queue.push("b", 2, b"second"));
        drop(held);
        let buffer = queue.take(0, Vec::new());
        let cut = &buffer[..buffer.len() - 3];
        let read: Vec<_> = answers(cut).map(|a| a.request_id).collect();
        assert_eq!(read, ["a"]);
    }

    #[test]
    fn threads_pushing_together_lose_nothing() {
        let queue = std::sync::Arc::new(AnswerQueue::new(64 << 20, 3));
        let pushers: Vec<_> = (0..4)
            .map(|t| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000i64 {
                        assert!(queue.push(&format!("{t}-{i}"), i, b"{}"));
                    }
                })
            })
            .collect();
        // The writer takes while they push.
        let mut seen = std::collections::HashSet::new();
        let mut spare = Vec::new();
        let mut stripe = 0;
        while pushers.iter().any(|p| !p.is_finished()) {
            let buffer = queue.take(stripe, spare);
            for a in answers(&buffer) {
                assert!(
                    seen.insert(a.request_id.to_owned()),
                    "{} twice",
                    a.request_id
                );
            }
            spare = buffer;
            stripe += 1;
        }
        for p in pushers {
            p.join().unwrap();
        }
        for s in 0..queue.stripes() {
            for a in answers(&queue.take(s, Vec::new())) {
                assert!(seen.insert(a.request_id.to_owned()));
            }
        }
        assert_eq!(seen.len(), 20_000);
    }
}
