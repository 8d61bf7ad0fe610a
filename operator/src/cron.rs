//! Five-field cron schedules, read the way Kubernetes CronJobs read them: `minute hour
//! day-of-month month day-of-week`, in UTC, with `*`, lists, ranges, steps and the names of
//! months and weekdays, plus `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.

use std::fmt;
use std::str::FromStr;

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Vixie cron: when both day fields are restricted, a day matching either one runs.
    days_restricted: bool,
    weekdays_restricted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field as a bit set over `min..=max`; `names` are accepted for values from `min` on.
/// Weekdays (`max` 6) also accept 7 for Sunday.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, ParseError> {
    let value = |s: &str| -> Result<u32, ParseError> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(min + i as u32);
        }
        s.parse::<u32>()
            .map_err(|_| ParseError(format!("{s:?} is not a number")))
    };
    let weekdays = max == 6;
    let top = if weekdays { 7 } else { max };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| ParseError(format!("bad step in {part:?}")))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end, every 15.
            (v, if step > 1 { max } else { v })
        };
        if lo < min || hi > top || lo > hi {
            return Err(ParseError(format!(
                "{part:?} is outside {min}-{max} or reversed"
            )));
        }
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    if weekdays && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok(bits)
}

impl FromStr for Schedule {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expanded = match s.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(ParseError(format!(
                "{s:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            )));
        }
        Ok(Schedule {
            minutes: field(f[0], 0, 59, &[])?,
            hours: field(f[1], 0, 23, &[])?,
            days: field(f[2], 1, 31, &[])?,
            months: field(f[3], 1, 12, &MONTHS)?,
            weekdays: field(f[4], 0, 6, &WEEKDAYS)?,
            days_restricted: !f[2].starts_with('*'),
            weekdays_restricted: !f[4].starts_with('*'),
        })
    }
}

fn has(bits: u64, v: i32) -> bool {
    bits & (1 << v) != 0
}

impl Schedule {
    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = has(self.days, dt.day() as i32);
        let dow = has(self.weekdays, dt.weekday().to_sunday_zero_offset() as i32);
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first minute strictly after `t` that the schedule names, within the next five years
    /// (`None` for a schedule that never fires, like `0 0 31 2 *`).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(TimeZone::UTC).datetime();
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.year() + 5;
        while dt.year() <= limit {
            if !has(self.months, dt.month() as i32) {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
            } else if !self.day_matches(dt) {
                dt = dt.start_of_day().checked_add(1.day()).ok()?;
            } else if !has(self.hours, dt.hour() as i32) {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if !has(self.minutes, dt.minute() as i32) {
                dt = dt.checked_add(1.minute()).ok()?;
            } else {
                return dt.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(schedule: &str, after: &str) -> String {
        let s: Schedule = schedule.parse().unwrap();
        s.next_after(after.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn next_times() {
        assert_eq!(
            next("*/15 * * * *", "2026-11-27T10:07:30Z"),
            "2026-11-27T10:15:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-27T10:15:00Z"),
            "2026-11-27T10:30:00Z"
        );
        assert_eq!(
            next("@daily", "2026-11-27T10:07:00Z"),
            "2026-11-28T00:00:00Z"
        );
        assert_eq!(
            next("30 2 * * sun", "2026-11-27T10:07:00Z"),
            "2026-11-29T02:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-11-27T10:07:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 3 29 2 *", "2026-11-27T10:07:00Z"),
            "2028-02-29T03:00:00Z"
        );
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            next("0 0 1 * 1", "2026-11-27T10:07:00Z"),
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            next("0 12 * * 7", "2026-11-27T10:07:00Z"),
            "2026-11-29T12:00:00Z"
        );
        assert_eq!(
            next("5-10/5 8-9 * * mon-fri", "2026-11-27T09:07:00Z"),
            "2026-11-27T09:10:00Z"
        );
        assert_eq!(
            next("5-10/5 8-9 * * mon-fri", "2026-11-27T09:10:00Z"),
            "2026-11-30T08:05:00Z"
        );
    }

    #[test]
    fn impossible_and_invalid_schedules() {
        let never: Schedule = "0 0 31 2 *".parse().unwrap();
        assert_eq!(
            never.next_after("2026-01-01T00:00:00Z".parse().unwrap()),
            None
        );
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "* * * * * *",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?} accepted");
        }
    }
}
