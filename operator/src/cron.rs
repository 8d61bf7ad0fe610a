//! Five-field cron schedules, read the way Kubernetes CronJobs read them: `minute hour
//! day-of-month month day-of-week`, in UTC, with `*`, lists, ranges, steps and the names of
//! months and weekdays, plus `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Parsing and
//! evaluation are croner's; this module fixes the dialect (no seconds or years; Vixie cron's rule
//! that a day matching either restricted day field runs) and the five-year horizon.

use std::fmt;
use std::str::FromStr;

use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(croner::Cron);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

impl FromStr for Schedule {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // croner knows these nicknames too; `@midnight` (Vixie cron's) it does not.
        let expanded = match s.trim() {
            "@midnight" => "0 0 * * *",
            other => other,
        };
        if !expanded.starts_with('@') && expanded.split_whitespace().count() != 5 {
            return Err(ParseError(format!(
                "{s:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            )));
        }
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // Vixie cron: when both day fields are restricted, a day matching either one runs.
            .dom_and_dow(false)
            // `5/15` (from 5 to the end, every 15), as accepted before croner.
            .sloppy_ranges(true)
            .build()
            .parse(expanded)
            .map(Schedule)
            .map_err(|e| ParseError(format!("{s:?}: {e}")))
    }
}

impl Schedule {
    /// The first minute strictly after `t` that the schedule names, within the next five years
    /// (`None` for a schedule that never fires, like `0 0 31 2 *`).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(TimeZone::UTC);
        let limit = start.checked_add(5.years()).ok()?;
        let next = self.0.find_next_occurrence(&start, false).ok()?;
        (next <= limit).then(|| next.timestamp())
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
