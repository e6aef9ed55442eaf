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

impl Hour {
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

    proptest! {
        #[test]
        fn agrees_with_chrono_where_chrono_has_a_date(micros in -8_000_000_000_000_000i64..8_000_000_000_000_000) {
            let t = chrono::DateTime::from_timestamp_micros(micros).expect("in chrono's range");
            let h = Hour::of(micros);
            prop_assert_eq!((h.year, h.month, h.day, h.hour), (i64::from(t.year()), t.month(), t.day(), t.hour()));
        }
    }
}
