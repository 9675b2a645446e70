//! Task schedules (SPEC §10): checks a schedule the agent asks for and
//! computes when it is next due, so an invalid one is refused at once with a
//! message the model can act on instead of failing later in the scheduler.
//!
//! - `cron`: 5 fields (minute hour day-of-month month day-of-week) in the
//!   configured timezone; `*`, lists `a,b`, ranges `a-b`, steps `*/n` and
//!   `a-b/n`, month and weekday names (`jan`, `mon`); weekday 0 and 7 are
//!   Sunday. When both day fields are restricted a day matching either one
//!   fires (classic cron). A local time skipped by a DST change is skipped.
//! - `interval`: milliseconds, at least [`MIN_INTERVAL_MS`] (one minute: a
//!   faster task would keep a container busy all the time) and at most a year.
//! - `once`: an RFC 3339 time, or a local `YYYY-MM-DDTHH:MM[:SS]` in the
//!   configured timezone; it must be in the future.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use crate::messages::UnixMillis;
use crate::store::ScheduleKind;

/// The shortest interval a task may have: one minute.
pub const MIN_INTERVAL_MS: i64 = 60_000;
/// The longest interval: 366 days.
pub const MAX_INTERVAL_MS: i64 = 366 * 24 * 60 * 60 * 1000;
/// How far ahead a cron expression is searched for its next time (covers
/// Feb 29 in a leap year).
const CRON_SEARCH_DAYS: i64 = 366 * 5;

/// A parsed 5-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "a cron schedule has 5 fields (minute hour day-of-month month day-of-week), \
                 e.g. \"0 9 * * 1-5\"; {expression:?} has {}",
                fields.len()
            ));
        }
        let minutes = field(fields[0], "minute", 0, 59, &[], 0)?;
        let hours = field(fields[1], "hour", 0, 23, &[], 0)?;
        let days = field(fields[2], "day-of-month", 1, 31, &[], 0)?;
        let months = field(fields[3], "month", 1, 12, MONTHS, 1)?;
        let mut weekdays = field(fields[4], "day-of-week", 0, 7, WEEKDAYS, 0)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if !self.months[date.month() as usize] {
            return false;
        }
        let by_day = self.days[date.day() as usize];
        let by_weekday = self.weekdays[date.weekday().num_days_from_sunday() as usize];
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => by_day || by_weekday,
            (true, false) => by_day,
            (false, true) => by_weekday,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` that matches, in `tz`.
    pub fn next_after(&self, after: DateTime<Tz>, tz: Tz) -> Option<DateTime<Tz>> {
        let start = after.date_naive();
        for offset in 0..CRON_SEARCH_DAYS {
            let date = start + Duration::days(offset);
            if !self.day_matches(date) {
                continue;
            }
            for hour in (0..24).filter(|h| self.hours[*h as usize]) {
                for minute in (0..60).filter(|m| self.minutes[*m as usize]) {
                    let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                        continue;
                    };
                    let candidate = match tz.from_local_datetime(&local) {
                        LocalResult::Single(t) => t,
                        LocalResult::Ambiguous(first, _) => first,
                        LocalResult::None => continue,
                    };
                    if candidate > after {
                        return Some(candidate);
                    }
                }
            }
        }
        None
    }
}

/// One cron field as a table of allowed values, indexed by value.
fn field(
    text: &str,
    name: &str,
    min: u32,
    max: u32,
    names: &[&str],
    names_start: u32,
) -> Result<Vec<bool>, String> {
    let mut allowed = vec![false; max as usize + 1];
    let value = |part: &str| -> Result<u32, String> {
        let lower = part.to_ascii_lowercase();
        if let Some(index) = names.iter().position(|n| *n == lower) {
            return Ok(index as u32 + names_start);
        }
        let number: u32 = part
            .parse()
            .map_err(|_| format!("cron {name} field: {part:?} is not a number"))?;
        if number < min || number > max {
            return Err(format!(
                "cron {name} field: {number} is outside {min}-{max}"
            ));
        }
        Ok(number)
    };
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("cron {name} field: step {step:?} must be a positive number")
                })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let single = value(range)?;
            // `a/n` means from a to the end, stepping n.
            (single, if item.contains('/') { max } else { single })
        };
        if low > high {
            return Err(format!("cron {name} field: range {range:?} runs backwards"));
        }
        for v in (low..=high).step_by(step as usize) {
            allowed[v as usize] = true;
        }
    }
    Ok(allowed)
}

/// Parses an interval in milliseconds within the allowed bounds.
pub fn parse_interval(value: &str) -> Result<i64, String> {
    let ms: i64 = value.trim().parse().map_err(|_| {
        format!("an interval is a whole number of milliseconds, e.g. \"3600000\" for an hour; not {value:?}")
    })?;
    if ms < MIN_INTERVAL_MS {
        return Err(format!(
            "an interval must be at least {MIN_INTERVAL_MS} ms (one minute); {ms} is too short"
        ));
    }
    if ms > MAX_INTERVAL_MS {
        return Err(format!(
            "an interval must be at most {MAX_INTERVAL_MS} ms (366 days); {ms} is too long"
        ));
    }
    Ok(ms)
}

/// Parses a `once` time: RFC 3339, or local time in `tz`.
pub fn parse_once(value: &str, tz: Tz) -> Result<DateTime<Tz>, String> {
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&tz));
    }
    let local = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M"))
        .map_err(|_| {
            format!(
                "a once time is RFC 3339 (\"2026-05-01T09:00:00+09:00\") or local time in {tz} \
                 (\"2026-05-01T09:00\"); not {value:?}"
            )
        })?;
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t),
        LocalResult::None => Err(format!(
            "{value} does not exist in {tz} (a daylight-saving gap); pick another time"
        )),
    }
}

/// Checks a schedule and returns when it is first due after `now_ms`.
pub fn first_run(
    kind: ScheduleKind,
    value: &str,
    tz: Tz,
    now_ms: UnixMillis,
) -> Result<UnixMillis, String> {
    let now = tz
        .timestamp_millis_opt(now_ms)
        .single()
        .ok_or_else(|| "the host clock is out of range".to_string())?;
    match kind {
        ScheduleKind::Cron => {
            let cron = Cron::parse(value)?;
            cron.next_after(now, tz)
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| format!("the cron schedule {value:?} never fires (no such date)"))
        }
        ScheduleKind::Interval => Ok(now_ms + parse_interval(value)?),
        ScheduleKind::Once => {
            let at = parse_once(value, tz)?;
            if at <= now {
                return Err(format!(
                    "the once time {value} is in the past (now is {})",
                    now.to_rfc3339()
                ));
            }
            Ok(at.timestamp_millis())
        }
    }
}

/// When a task that was due at `due_ms` and fires now (`now_ms`) is due
/// next; `Ok(None)` when it is done (a `once` task). Runs missed while the
/// host was down are not made up one by one: a late task fires once, and
/// its next time is the schedule's first one after now.
pub fn next_run_after(
    kind: ScheduleKind,
    value: &str,
    tz: Tz,
    due_ms: UnixMillis,
    now_ms: UnixMillis,
) -> Result<Option<UnixMillis>, String> {
    let after = due_ms.max(now_ms);
    match kind {
        ScheduleKind::Once => Ok(None),
        ScheduleKind::Interval => {
            let step = parse_interval(value)?;
            let missed = (after - due_ms) / step;
            Ok(Some(due_ms + (missed + 1) * step))
        }
        ScheduleKind::Cron => {
            let cron = Cron::parse(value)?;
            let after = tz
                .timestamp_millis_opt(after)
                .single()
                .ok_or_else(|| "the host clock is out of range".to_string())?;
            Ok(cron.next_after(after, tz).map(|t| t.timestamp_millis()))
        }
    }
}

/// Parses a schedule type name, with the valid names in the error.
pub fn parse_kind(text: &str) -> Result<ScheduleKind, String> {
    ScheduleKind::parse(text.trim()).ok_or_else(|| {
        format!("schedule_type must be \"cron\", \"interval\" or \"once\", not {text:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: Tz, text: &str) -> DateTime<Tz> {
        parse_once(text, tz).unwrap()
    }

    #[test]
    fn cron_next_times() {
        let utc = Tz::UTC;
        // (expression, after, expected next)
        let cases = [
            ("0 9 * * *", "2026-01-01T08:59", "2026-01-01T09:00"),
            ("0 9 * * *", "2026-01-01T09:00", "2026-01-02T09:00"),
            ("*/15 * * * *", "2026-01-01T10:01", "2026-01-01T10:15"),
            ("30 8 * * 1-5", "2026-01-02T09:00", "2026-01-05T08:30"), // Fri -> Mon
            ("0 0 1 jan *", "2026-03-01T00:00", "2027-01-01T00:00"),
            ("0 12 * * sun", "2026-01-01T00:00", "2026-01-04T12:00"),
            ("0 12 * * 7", "2026-01-01T00:00", "2026-01-04T12:00"),
            ("0 0 29 2 *", "2026-01-01T00:00", "2028-02-29T00:00"),
            // Both day fields: either matches (the 10th, or a Monday).
            ("0 0 10 * 1", "2026-01-06T00:00", "2026-01-10T00:00"),
            ("5-10/5 1,2 * * *", "2026-01-01T01:06", "2026-01-01T01:10"),
        ];
        for (expression, after, expected) in cases {
            let cron = Cron::parse(expression).unwrap();
            let next = cron.next_after(at(utc, after), utc).unwrap();
            assert_eq!(next, at(utc, expected), "{expression} after {after}");
        }
    }

    #[test]
    fn cron_uses_the_timezone() {
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        let now = Tz::UTC.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let first = first_run(
            ScheduleKind::Cron,
            "0 9 * * *",
            seoul,
            now.timestamp_millis(),
        );
        // 09:00 in Seoul is 00:00 UTC: the next is a day later.
        assert_eq!(
            first.unwrap(),
            Tz::UTC
                .with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
                .unwrap()
                .timestamp_millis()
        );
    }

    #[test]
    fn cron_skips_a_dst_gap() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let cron = Cron::parse("30 2 * * *").unwrap();
        // 2026-03-29 02:30 does not exist in Paris.
        let next = cron
            .next_after(at(paris, "2026-03-28T03:00"), paris)
            .unwrap();
        assert_eq!(next, at(paris, "2026-03-30T02:30"));
    }

    #[test]
    fn invalid_cron_is_refused_with_the_reason() {
        let cases = [
            ("0 9 * *", "5 fields"),
            ("0 9 * * * *", "5 fields"),
            ("60 * * * *", "outside 0-59"),
            ("* 24 * * *", "outside 0-23"),
            ("* * 0 * *", "outside 1-31"),
            ("* * * 13 *", "outside 1-12"),
            ("* * * * 8", "outside 0-7"),
            ("*/0 * * * *", "step"),
            ("x * * * *", "not a number"),
            ("10-5 * * * *", "backwards"),
        ];
        for (expression, phrase) in cases {
            let err = Cron::parse(expression).unwrap_err();
            assert!(err.contains(phrase), "{expression}: {err}");
        }
        let err = first_run(ScheduleKind::Cron, "0 0 31 2 *", Tz::UTC, 0).unwrap_err();
        assert!(err.contains("never fires"), "{err}");
    }

    #[test]
    fn intervals_have_bounds() {
        assert_eq!(
            first_run(ScheduleKind::Interval, "60000", Tz::UTC, 5).unwrap(),
            60_005
        );
        for (value, phrase) in [
            ("59999", "at least 60000"),
            ("0", "at least"),
            ("-1", "at least"),
            ("1h", "whole number"),
            ("99999999999999", "at most"),
        ] {
            let err = first_run(ScheduleKind::Interval, value, Tz::UTC, 0).unwrap_err();
            assert!(err.contains(phrase), "{value}: {err}");
        }
    }

    #[test]
    fn once_must_be_a_future_time() {
        let now = at(Tz::UTC, "2026-01-01T00:00").timestamp_millis();
        let later = first_run(ScheduleKind::Once, "2026-01-01T01:00:00Z", Tz::UTC, now);
        assert_eq!(later.unwrap(), now + 3_600_000);
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        // Local time in the configured zone: 10:00 Seoul is 01:00 UTC.
        let local = first_run(ScheduleKind::Once, "2026-01-01T10:00", seoul, now);
        assert_eq!(local.unwrap(), now + 3_600_000);
        let err = first_run(ScheduleKind::Once, "2025-12-31T23:59:00Z", Tz::UTC, now).unwrap_err();
        assert!(err.contains("in the past"), "{err}");
        let err = first_run(ScheduleKind::Once, "tomorrow", Tz::UTC, now).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn schedule_kinds_are_named() {
        assert_eq!(parse_kind("cron").unwrap(), ScheduleKind::Cron);
        assert!(parse_kind("weekly").unwrap_err().contains("\"interval\""));
    }

    #[test]
    fn the_next_run_follows_the_schedule_without_making_up_missed_runs() {
        let tz: Tz = "UTC".parse().unwrap();
        let minute = 60_000;
        // On time: the next interval step.
        assert_eq!(
            next_run_after(
                ScheduleKind::Interval,
                "60000",
                tz,
                10 * minute,
                10 * minute
            ),
            Ok(Some(11 * minute))
        );
        // Five and a half steps late: one run now, the next step after now.
        assert_eq!(
            next_run_after(
                ScheduleKind::Interval,
                "60000",
                tz,
                10 * minute,
                15 * minute + 30_000
            ),
            Ok(Some(16 * minute))
        );
        // A cron task late by hours fires once; next is the next match.
        let nine = chrono::Utc
            .with_ymd_and_hms(2026, 5, 1, 9, 0, 0)
            .unwrap()
            .timestamp_millis();
        let noon = chrono::Utc
            .with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        let tomorrow = chrono::Utc
            .with_ymd_and_hms(2026, 5, 2, 9, 0, 0)
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            next_run_after(ScheduleKind::Cron, "0 9 * * *", tz, nine, noon),
            Ok(Some(tomorrow))
        );
        assert_eq!(
            next_run_after(ScheduleKind::Once, "x", tz, nine, noon),
            Ok(None)
        );
        assert!(next_run_after(ScheduleKind::Cron, "bad", tz, nine, noon).is_err());
    }
}
