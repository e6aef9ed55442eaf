//! Paths and partition keys. Dates are computed on integers (proleptic Gregorian,
//! UTC) so every representable timestamp has a partition, including the i64 extremes.

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// An hour partition: the UTC hour an event time falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour {
    /// Year (may be negative or beyond 9999 for extreme timestamps).
    pub year: i64,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    /// 0-23.
    pub hour: u32,
}

/// Civil date of a day count since 1970-01-01 (H. Hinnant's algorithm, all integers).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Hour {
    /// The hour's first instant (UTC µs), saturating at the i64 extremes.
    pub fn start(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day)
            .saturating_mul(24)
            .saturating_add(i64::from(self.hour))
            .saturating_mul(MICROS_PER_HOUR)
    }

    /// The hour a data file's path names (`…/year=YYYY/month=MM/day=DD/hour=HH/…`), if
    /// it names one.
    pub fn from_path(rel: &str) -> Option<Hour> {
        let mut parts = rel.split('/').skip_while(|p| !p.starts_with("year="));
        let mut value = |key: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(key))
                .and_then(|p| p.strip_prefix('='))
                .map(str::to_owned)
        };
        let year: i64 = value("year")?.parse().ok()?;
        let month: u32 = value("month")?.parse().ok()?;
        let day: u32 = value("day")?.parse().ok()?;
        let hour: u32 = value("hour")?.parse().ok()?;
        ((1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24).then_some(Hour {
            year,
            month,
            day,
            hour,
        })
    }

    /// The hour containing `micros` (UTC microseconds since the epoch).
    pub fn of(micros: i64) -> Hour {
        let hours = micros.div_euclid(MICROS_PER_HOUR);
        let (year, month, day) = civil_from_days(hours.div_euclid(24));
        Hour {
            year,
            month,
            day,
            hour: hours.rem_euclid(24) as u32,
        }
    }

    /// The partition values as the directory names spell them: `YYYY`, `MM`, `DD`, `HH`.
    pub fn values(&self) -> [String; 4] {
        let year = if self.year < 0 {
            format!("-{:04}", -self.year)
        } else {
            format!("{:04}", self.year)
        };
        [
            year,
            format!("{:02}", self.month),
            format!("{:02}", self.day),
            format!("{:02}", self.hour),
        ]
    }

    /// `year=YYYY/month=MM/day=DD/hour=HH`, `/`-separated on every platform.
    pub fn relative(&self) -> String {
        let [year, month, day, hour] = self.values();
        format!("year={year}/month={month}/day={day}/hour={hour}")
    }
}

/// A group version's data, relative to the store root (`/`-separated).
pub fn version_rel(group: &str, version: &str) -> String {
    format!("{group}/version={version}")
}

/// A group version's registry entry, relative to the store root.
pub fn registry_rel(group: &str, version: &str) -> String {
    format!("{group}/_lockstep/versions/{version}.json")
}

/// The one data file of an hour partition.
pub const PART_FILE: &str = "part-0.parquet";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike};
    use proptest::prelude::*;

    #[test]
    fn partitions_render_like_sagemaker() {
        let h = Hour::of(1_704_070_800_000_000); // 2024-01-01T01:00:00Z
        assert_eq!(h.relative(), "year=2024/month=01/day=01/hour=01");
        assert_eq!(Hour::of(-1).relative(), "year=1969/month=12/day=31/hour=23");
        // The extremes still have a partition.
        assert!(Hour::of(i64::MIN).year < -290_000);
        assert!(Hour::of(i64::MAX).year > 290_000);
    }

    #[test]
    fn a_path_without_a_whole_hour_names_none() {
        for rel in [
            "spend/version=1/part-0.parquet",
            "spend/version=1/year=2024/month=01/day=01/part-0.parquet",
            "spend/version=1/year=2024/month=13/day=01/hour=00/part-0.parquet",
            "spend/version=1/year=2024/month=01/day=01/hour=24/part-0.parquet",
            "spend/version=1/year=x/month=01/day=01/hour=00/part-0.parquet",
        ] {
            assert_eq!(Hour::from_path(rel), None, "{rel}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_chrono_where_chrono_has_a_date(micros in -8_000_000_000_000_000i64..8_000_000_000_000_000) {
            let t = chrono::DateTime::from_timestamp_micros(micros).expect("in chrono's range");
            let h = Hour::of(micros);
            prop_assert_eq!((h.year, h.month, h.day, h.hour), (i64::from(t.year()), t.month(), t.day(), t.hour()));
        }

        #[test]
        fn an_hour_starts_at_its_first_instant_and_its_path_names_it(micros in -8_000_000_000_000_000i64..8_000_000_000_000_000) {
            let h = Hour::of(micros);
            prop_assert_eq!(h.start(), micros.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR);
            prop_assert_eq!(Hour::of(h.start()), h);
            let path = format!("spend/version=1.0.0/{}/part-0.parquet", h.relative());
            prop_assert_eq!(Hour::from_path(&path), Some(h));
        }
    }
}
