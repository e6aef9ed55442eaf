//! [`Deadline`]: a call's deadline, kept to the tens of microseconds.
//!
//! Tokio's timer wheel ticks by the millisecond: it rounds a deadline up to the next
//! tick and parks its driver for whole milliseconds, so a 5 ms timeout fires anywhere
//! from 5 to 7 ms — most of the budget again. On Linux a call's deadline is a
//! `timerfd` (a kernel high-resolution timer) registered with tokio's reactor, which
//! wakes the reactor when it expires; where one cannot be made (another OS, no file
//! descriptor left) the call falls back to tokio's timer.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The instant a call must be answered by, and the timer that says so.
pub(crate) struct Deadline {
    at: Instant,
    timer: Timer,
}

enum Timer {
    /// Not armed yet: made on the first wait that does not finish at once.
    Unarmed,
    #[cfg(target_os = "linux")]
    Fd(tokio_timerfd::Delay),
    Tick(Pin<Box<tokio::time::Sleep>>),
    Expired,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
            timer: Timer::Unarmed,
        }
    }

    /// Runs `work` until it finishes (`Some`) or the deadline passes (`None`). The work
    /// is polled first, so what is ready at the deadline still counts.
    pub(crate) async fn run<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.poll_expired(cx).map(|()| None)
        })
        .await
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.timer {
                Timer::Expired => return Poll::Ready(()),
                Timer::Unarmed => {
                    if Instant::now() >= self.at {
                        self.timer = Timer::Expired;
                    } else {
                        self.timer = self.arm();
                    }
                }
                #[cfg(target_os = "linux")]
                Timer::Fd(delay) => match Pin::new(delay).poll(cx) {
                    Poll::Ready(Ok(())) => self.timer = Timer::Expired,
                    // The descriptor failed to read: finish on tokio's timer.
                    Poll::Ready(Err(_)) => self.timer = self.tick(),
                    Poll::Pending => return Poll::Pending,
                },
                Timer::Tick(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => self.timer = Timer::Expired,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn arm(&self) -> Timer {
        match tokio_timerfd::Delay::new(self.at) {
            Ok(delay) => Timer::Fd(delay),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd for a call's deadline; using tokio's timer");
                self.tick()
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn arm(&self) -> Timer {
        self.tick()
    }

    fn tick(&self) -> Timer {
        Timer::Tick(Box::pin(tokio::time::sleep_until(self.at.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn work_that_finishes_in_time_gives_its_output() {
        runtime().block_on(async {
            let mut deadline = Deadline::after(Duration::from_secs(5));
            assert_eq!(deadline.run(async { 7 }).await, Some(7));
            let slow = tokio::time::sleep(Duration::from_millis(2));
            assert_eq!(
                deadline
                    .run(async {
                        slow.await;
                        8
                    })
                    .await,
                Some(8)
            );
        });
    }

    #[test]
    fn work_that_never_finishes_is_cut_at_the_deadline_and_stays_cut() {
        runtime().block_on(async {
            let start = Instant::now();
            let mut deadline = Deadline::after(Duration::from_millis(3));
            assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
            assert!(start.elapsed() >= Duration::from_millis(3));
            // Expired, a second wait ends at once; ready work still counts.
            assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
            assert_eq!(deadline.run(async { 1 }).await, Some(1));
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_the_deadline_is_a_kernel_timer() {
        runtime().block_on(async {
            let mut deadline = Deadline::after(Duration::from_secs(5));
            let slow = tokio::time::sleep(Duration::from_millis(1));
            assert_eq!(deadline.run(slow).await, Some(()));
            assert!(matches!(deadline.timer, Timer::Fd(_)));
        });
    }

    #[test]
    fn without_a_kernel_timer_tokios_timer_cuts_the_work() {
        runtime().block_on(async {
            let start = Instant::now();
            let mut deadline = Deadline::after(Duration::from_millis(3));
            deadline.timer = deadline.tick();
            assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
            assert!(start.elapsed() >= Duration::from_millis(3));
            assert!(matches!(deadline.timer, Timer::Expired));
        });
    }

    #[test]
    fn a_deadline_already_past_cuts_pending_work_at_once() {
        runtime().block_on(async {
            let mut deadline = Deadline::after(Duration::ZERO);
            let start = Instant::now();
            assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
            assert!(start.elapsed() < Duration::from_millis(100));
        });
    }
}
