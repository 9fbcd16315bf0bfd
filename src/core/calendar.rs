//! Calendar periods for stats: today, this ISO week and this month in an Application's zone,
//! and the date keys rollups are stored under.
//!
//! Rollups are keyed by the event's local date, so the periods are ranges of dates; the
//! arithmetic happens here, once, for ingest (which dates each event), the store (which
//! sums ranges of dates) and the readers (which ask for periods).

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// The first local date of each period that contains `today`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// The current local date.
    pub today: Date,
    /// Monday of the current ISO week.
    pub week_start: Date,
    /// The first day of the current month.
    pub month_start: Date,
}

impl Periods {
    /// Periods that contain `now` in `tz`.
    pub fn at(now: Timestamp, tz: &TimeZone) -> Self {
        Self::of_date(now.to_zoned(tz.clone()).date())
    }

    /// Periods that contain the local date `today` (stats for a past or given day).
    pub fn of_date(today: Date) -> Self {
        let back = i64::from(today.weekday().to_monday_zero_offset());
        let week_start = today
            .checked_sub(jiff::Span::new().days(back))
            .unwrap_or(today);
        let month_start = today.first_of_month();
        Self {
            today,
            week_start,
            month_start,
        }
    }

    /// The earliest date any period needs.
    pub fn earliest(&self) -> Date {
        self.week_start.min(self.month_start)
    }
}

/// The local date an event at `at` belongs to.
pub fn local_date(at: Timestamp, tz: &TimeZone) -> Date {
    at.to_zoned(tz.clone()).date()
}

/// Packs a date as `YYYYMMDD` so byte order is date order in storage keys.
pub fn date_key(d: Date) -> u32 {
    let y = u32::try_from(i32::from(d.year()) + 10_000).unwrap_or(0);
    y * 10_000 + u32::from(d.month().unsigned_abs()) * 100 + u32::from(d.day().unsigned_abs())
}

/// Inverse of [`date_key`].
pub fn date_from_key(k: u32) -> Option<Date> {
    let year = i16::try_from(i64::from(k / 10_000) - 10_000).ok()?;
    let month = i8::try_from((k / 100) % 100).ok()?;
    let day = i8::try_from(k % 100).ok()?;
    Date::new(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn amsterdam_dst_weeks_and_months() {
        let tz = TimeZone::get("Europe/Amsterdam").unwrap();
        // 2024-03-31 is the last Sunday of March (DST starts); 23:30 UTC on Sunday is Monday 01:30 local.
        let p = Periods::at(ts("2024-03-31T22:30:00Z"), &tz);
        assert_eq!(p.today.to_string(), "2024-04-01");
        assert_eq!(p.week_start.to_string(), "2024-04-01");
        assert_eq!(p.month_start.to_string(), "2024-04-01");
        let p = Periods::at(ts("2024-03-31T21:59:00Z"), &tz);
        assert_eq!(p.today.to_string(), "2024-03-31");
        assert_eq!(p.week_start.to_string(), "2024-03-25");
        assert_eq!(p.month_start.to_string(), "2024-03-01");
        assert_eq!(
            local_date(ts("2024-10-26T22:00:00Z"), &tz).to_string(),
            "2024-10-27"
        );
    }

    #[test]
    fn date_keys_sort_and_round_trip() {
        let a: Date = "2023-12-31".parse().unwrap();
        let b: Date = "2024-01-01".parse().unwrap();
        assert!(date_key(a) < date_key(b));
        assert_eq!(date_from_key(date_key(b)), Some(b));
    }
}
