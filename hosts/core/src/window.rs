//! A span of event time: what a backfill writes (`--from/--to`) and what a
//! materialize loads, by one rule.

/// A half-open span of event time, `[from, to)` in UTC µs, either end open when
/// `None` (Feast's `materialize START END`). The default is all of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// The first instant inside.
    pub from: Option<i64>,
    /// The first instant after it.
    pub to: Option<i64>,
}

impl TimeWindow {
    /// Whether `t` falls inside.
    pub fn holds(&self, t: i64) -> bool {
        self.from.is_none_or(|from| t >= from) && self.to.is_none_or(|to| t < to)
    }

    /// Whether it is all of time.
    pub fn is_all(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_its_start_and_not_its_end() {
        let w = TimeWindow {
            from: Some(10),
            to: Some(20),
        };
        assert!(!w.holds(9) && w.holds(10) && w.holds(19) && !w.holds(20));
        let open = TimeWindow::default();
        assert!(open.is_all() && open.holds(i64::MIN) && open.holds(i64::MAX));
        assert!(
            TimeWindow {
                from: None,
                to: Some(0)
            }
            .holds(i64::MIN)
        );
        assert!(
            !TimeWindow {
                from: Some(0),
                to: None
            }
            .holds(-1)
        );
    }
}
