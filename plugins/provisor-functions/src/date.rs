//! Date functions: CDate, DateAdd, DateDiff, DateFromNum, FormatDateTime,
//! Now, NumFromDate.
//!
//! Entra passes dates between functions as strings in the form
//! `M/d/yyyy h:mm:ss tt`, always UTC ("The returned string is always in UTC
//! and follows the format M/d/yyyy h:mm:ss tt" — CDate). The typed functions
//! here work on [`DateTime<Utc>`]; [`to_entra_string`] gives that string and
//! [`parse_date`] reads it back (and ISO 8601 forms) for the next function.

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, TimeDelta, Utc};

use crate::error::{FnError, bad_date};
use crate::netfmt::{self, Kind, NetDateTime, Styles};

/// Entra's date string format (CDate, DateAdd, Now).
pub const ENTRA_DATE_FORMAT: &str = "M/d/yyyy h:mm:ss tt";

/// 100-nanosecond intervals between 1601-01-01 (AD/Windows FileTime epoch)
/// and 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// Write `dt` as Entra does: `M/d/yyyy h:mm:ss tt` in UTC, e.g.
/// `3/16/2020 7:00:00 AM`.
pub fn to_entra_string(dt: DateTime<Utc>) -> String {
    netfmt::format(
        NetDateTime {
            utc: dt,
            kind: Kind::Utc,
        },
        ENTRA_DATE_FORMAT,
    )
    .expect("built-in format is valid")
}

/// Read a date/time string as the date functions accept it, converting to
/// UTC. Accepted forms (after trimming white space):
///
/// * ISO 8601 / RFC 3339 date-times, `T` or space separated, optional
///   fraction, optional `Z` or `±hh:mm` offset (`2009-06-15T01:45:30-07:00`);
/// * an ISO date with an offset, as Workday sends it (`2020-03-16-07:00`,
///   `2021-06-30+08:00`, `2021-06-30Z`) — midnight at that offset;
/// * an ISO date alone (`2021-08-24`) — midnight UTC;
/// * Entra's own output `M/d/yyyy h:mm:ss tt` (`8/25/2021 5:41:18 PM`), and
///   `M/d/yyyy H:mm:ss`, `M/d/yyyy`.
///
/// Values without an offset are taken as UTC (the provisioning service runs
/// in UTC).
pub fn parse_date(
    function: &'static str,
    argument: &'static str,
    s: &str,
) -> Result<DateTime<Utc>, FnError> {
    parse_date_opt(s.trim()).ok_or_else(|| bad_date(function, argument, s, ""))
}

fn parse_date_opt(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.to_utc());
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%d %H:%M%:z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, f) {
            return Some(dt.to_utc());
        }
    }
    // A trailing `Z` on the forms above.
    if let Some(base) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z'))
        && base.len() > 10
        && let Some(dt) = parse_naive(base)
    {
        return Some(dt.and_utc());
    }
    if let Some(dt) = parse_naive(s) {
        return Some(dt.and_utc());
    }
    // Date with offset: yyyy-MM-dd(Z|±hh:mm).
    if s.len() > 10 && s.is_char_boundary(10) {
        let (date, zone) = s.split_at(10);
        if let Ok(date) = NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            let midnight = date.and_hms_opt(0, 0, 0)?;
            if zone.eq_ignore_ascii_case("z") {
                return Some(midnight.and_utc());
            }
            let t = DateTime::parse_from_str(
                &format!("{} 00:00:00{zone}", date.format("%Y-%m-%d")),
                "%Y-%m-%d %H:%M:%S%:z",
            )
            .ok()?;
            return Some(t.to_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc());
    }
    for f in [
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %I:%M %p",
        "%m/%d/%Y %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, f) {
            return Some(dt.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(s, "%m/%d/%Y") {
        return Some(date.and_hms_opt(0, 0, 0)?.and_utc());
    }
    None
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// `CDate(expression)`: "returns a UTC DateTime from a string". Entra
/// examples: `CDate("2021-06-30+08:00")` is `6/29/2021 4:00:00 PM`,
/// `CDate("2009-06-15T01:45:30-07:00")` is `6/15/2009 8:45:30 AM`. Accepts
/// the forms of [`parse_date`]. Null (via [`crate::call`]) gives null.
pub fn cdate(expression: &str) -> Result<DateTime<Utc>, FnError> {
    parse_date("CDate", "expression", expression)
}

/// The `interval` of DateAdd and DateDiff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Year,
    Month,
    Day,
    Week,
    Hour,
    Minute,
    Second,
}

impl Interval {
    /// Entra's interval strings: `yyyy`, `m`, `d`, `ww`, `h`, `n`, `s`
    /// (compared case-insensitively, as VBA does).
    pub fn parse(function: &'static str, s: &str) -> Result<Interval, FnError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "yyyy" => Interval::Year,
            "m" => Interval::Month,
            "d" => Interval::Day,
            "ww" => Interval::Week,
            "h" => Interval::Hour,
            "n" => Interval::Minute,
            "s" => Interval::Second,
            _ => {
                return Err(FnError::BadInterval {
                    function,
                    argument: "interval",
                    interval: s.to_string(),
                });
            }
        })
    }
}

/// `DateAdd(interval, value, dateTime)`: `dateTime` plus `value` intervals
/// (negative goes back). Entra example: `DateAdd("d", 7,
/// CDate("2012-03-16-07:00"))` is `3/23/2012 7:00:00 AM`; `"m", 10` gives
/// `1/16/2013 7:00:00 AM`. Years and months take the whole part of `value`
/// and clamp to the month's last day (.NET `AddMonths`: Jan 31 + 1 m is
/// Feb 28/29); the other intervals add fractions too (.NET `AddDays(1.5)`).
pub fn date_add(
    interval: &str,
    value: f64,
    date_time: DateTime<Utc>,
) -> Result<DateTime<Utc>, FnError> {
    const F: &str = "DateAdd";
    if !value.is_finite() {
        return Err(crate::error::bad_arg(F, "value", "not a finite number"));
    }
    let out_of_range = || crate::error::bad_arg(F, "value", "result is out of range");
    let months = |n: i64| -> Result<DateTime<Utc>, FnError> {
        let m = Months::new(u32::try_from(n.unsigned_abs()).map_err(|_| out_of_range())?);
        if n >= 0 {
            date_time.checked_add_months(m)
        } else {
            date_time.checked_sub_months(m)
        }
        .ok_or_else(out_of_range)
    };
    let millis = |unit_ms: f64| -> Result<DateTime<Utc>, FnError> {
        let ms = (value * unit_ms).round();
        if ms.abs() > 1e17 {
            return Err(out_of_range());
        }
        date_time
            .checked_add_signed(TimeDelta::milliseconds(ms as i64))
            .ok_or_else(out_of_range)
    };
    match Interval::parse(F, interval)? {
        Interval::Year => months((value.trunc() as i64).saturating_mul(12)),
        Interval::Month => months(value.trunc() as i64),
        Interval::Week => millis(7.0 * 86_400_000.0),
        Interval::Day => millis(86_400_000.0),
        Interval::Hour => millis(3_600_000.0),
        Interval::Minute => millis(60_000.0),
        Interval::Second => millis(1_000.0),
    }
}

/// `DateDiff(interval, date1, date2)`: positive when `date2` is later.
/// Follows VB.NET `DateDiff`, which reproduces every row of Entra's example
/// table: `yyyy` and `m` count calendar boundaries (year and month numbers
/// subtracted), `ww` counts Sundays crossed (weeks between the Sundays that
/// start each date's week), `d`, `h`, `n`, `s` are the elapsed time
/// truncated toward zero. Entra: `DateDiff("d", "8/25/2021 5:41:18 PM",
/// "2012-03-16-07:00")` is -3449, in `ww` -493, in `m` -113, in `yyyy` -9.
pub fn date_diff(
    interval: &str,
    date1: DateTime<Utc>,
    date2: DateTime<Utc>,
) -> Result<i64, FnError> {
    let elapsed = date2 - date1;
    Ok(match Interval::parse("DateDiff", interval)? {
        Interval::Year => (date2.year() - date1.year()) as i64,
        Interval::Month => {
            (date2.year() - date1.year()) as i64 * 12 + date2.month() as i64 - date1.month() as i64
        }
        Interval::Week => {
            let week_start = |d: DateTime<Utc>| {
                let day = d.date_naive();
                day - Duration::days(day.weekday().num_days_from_sunday() as i64)
            };
            (week_start(date2) - week_start(date1)).num_days() / 7
        }
        Interval::Day => elapsed.num_days(),
        Interval::Hour => elapsed.num_hours(),
        Interval::Minute => elapsed.num_minutes(),
        Interval::Second => elapsed.num_seconds(),
    })
}

/// `DateFromNum(value)`: an AD date (Windows FileTime: 100-ns ticks since
/// 1601-01-01 UTC, as in `lastLogonTimestamp`, `accountExpires`) to a
/// DateTime. Entra: `DateFromNum(129699324000000000)` is January 1, 2012 at
/// 11:00 PM. Values outside .NET's range (negative, or AD's "never"
/// `0x7FFFFFFFFFFFFFFF`) are errors, as `DateTime.FromFileTimeUtc` throws.
pub fn date_from_num(value: i64) -> Result<DateTime<Utc>, FnError> {
    const MAX_TICKS: i64 = 2_650_467_743_999_999_999; // 9999-12-31T23:59:59.9999999
    if !(0..=MAX_TICKS).contains(&value) {
        return Err(crate::error::bad_arg(
            "DateFromNum",
            "value",
            format!("{value} is not an AD date (FileTime) in .NET's range"),
        ));
    }
    let unix_ticks = value - FILETIME_UNIX_EPOCH;
    let secs = unix_ticks.div_euclid(10_000_000);
    let nanos = (unix_ticks.rem_euclid(10_000_000) * 100) as u32;
    DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| crate::error::bad_arg("DateFromNum", "value", "out of range"))
}

/// `NumFromDate(value)`: a date/time string (ISO 8601, e.g.
/// `2020-12-31 23:59:59-08:00`) to the AD integer format (FileTime) used by
/// `accountExpires`. The inverse of [`date_from_num`].
pub fn num_from_date(value: &str) -> Result<i64, FnError> {
    let dt = parse_date("NumFromDate", "value", value)?;
    let ticks = dt.timestamp() as i128 * 10_000_000 + (dt.timestamp_subsec_nanos() / 100) as i128;
    let ft = ticks + FILETIME_UNIX_EPOCH as i128;
    i64::try_from(ft)
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| bad_date("NumFromDate", "value", value, "before 1601-01-01"))
}

/// `Now()`: the current UTC time; Entra writes it as `M/d/yyyy h:mm:ss tt`
/// (see [`to_entra_string`]), e.g. `7/2/2021 3:33:38 PM`.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// `FormatDateTime(source, dateTimeStyles, inputFormat, outputFormat)`:
/// parse `source` with the .NET custom format `inputFormat` and write it
/// with `outputFormat`. `date_time_styles` is a list of .NET
/// `DateTimeStyles` names (`None` or empty: Entra's default
/// `RoundtripKind, AllowLeadingWhite, AllowTrailingWhite`). Entra example:
/// `FormatDateTime("20150123105347.1Z", , "yyyyMMddHHmmss.fZ",
/// "yyyy-MM-dd")` is `2015-01-23`. An input offset converts the value to
/// UTC (the service's local time). Uses the current time only when the
/// input format has no date part, as .NET does; see
/// [`format_date_time_at`].
pub fn format_date_time(
    source: &str,
    date_time_styles: Option<&str>,
    input_format: &str,
    output_format: &str,
) -> Result<String, FnError> {
    format_date_time_at(
        Utc::now(),
        source,
        date_time_styles,
        input_format,
        output_format,
    )
}

/// [`format_date_time`] with an explicit "now".
pub fn format_date_time_at(
    now: DateTime<Utc>,
    source: &str,
    date_time_styles: Option<&str>,
    input_format: &str,
    output_format: &str,
) -> Result<String, FnError> {
    const F: &str = "FormatDateTime";
    let styles = Styles::parse(date_time_styles.unwrap_or(""))
        .map_err(|message| crate::error::bad_arg(F, "dateTimeStyles", message))?;
    let bad_format = |argument: &'static str, format: &str, message: String| FnError::BadFormat {
        function: F,
        argument,
        format: format.to_string(),
        message,
    };
    // Check the output format first, so a bad one is reported as such.
    netfmt::format(
        NetDateTime {
            utc: now,
            kind: Kind::Utc,
        },
        output_format,
    )
    .map_err(|m| bad_format("outputFormat", output_format, m))?;
    let parsed = netfmt::parse_exact(source, input_format, styles, now).map_err(|m| {
        if netfmt::format(
            NetDateTime {
                utc: now,
                kind: Kind::Utc,
            },
            input_format,
        )
        .is_err()
        {
            bad_format("inputFormat", input_format, m)
        } else {
            bad_date(
                F,
                "source",
                source,
                format!("does not match `{input_format}`: {m}"),
            )
        }
    })?;
    netfmt::format(parsed, output_format).map_err(|m| bad_format("outputFormat", output_format, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DateTime<Utc> {
        parse_date("test", "date", s).unwrap()
    }

    #[test]
    fn cdate_doc_examples() {
        // learn.microsoft.com/entra/identity/app-provisioning/functions-for-customizing-application-data#cdate
        assert_eq!(
            to_entra_string(cdate("2020-03-16-07:00").unwrap()),
            "3/16/2020 7:00:00 AM"
        );
        assert_eq!(
            to_entra_string(cdate("2021-06-30+08:00").unwrap()),
            "6/29/2021 4:00:00 PM"
        );
        assert_eq!(
            to_entra_string(cdate("2009-06-15T01:45:30-07:00").unwrap()),
            "6/15/2009 8:45:30 AM"
        );
    }

    #[test]
    fn parse_date_forms() {
        assert_eq!(d("2021-08-24").to_rfc3339(), "2021-08-24T00:00:00+00:00");
        assert_eq!(d("2021-08-24Z").to_rfc3339(), "2021-08-24T00:00:00+00:00");
        assert_eq!(
            d("8/25/2021 5:41:18 PM").to_rfc3339(),
            "2021-08-25T17:41:18+00:00"
        );
        assert_eq!(
            d("12/25/2021 17:41:18").to_rfc3339(),
            "2021-12-25T17:41:18+00:00"
        );
        assert_eq!(d("8/25/2021").to_rfc3339(), "2021-08-25T00:00:00+00:00");
        assert_eq!(
            d("2021-08-24T10:00:00Z").to_rfc3339(),
            "2021-08-24T10:00:00+00:00"
        );
        assert_eq!(
            d("2021-08-24T10:00:00.5").to_rfc3339(),
            "2021-08-24T10:00:00.500+00:00"
        );
        assert_eq!(
            d("2021-08-24 10:00").to_rfc3339(),
            "2021-08-24T10:00:00+00:00"
        );
        assert_eq!(
            d(" 2020-12-31 23:59:59-08:00 ").to_rfc3339(),
            "2021-01-01T07:59:59+00:00"
        );
        // Round trip through Entra's own output format.
        let t = d("2009-06-15T13:45:30Z");
        assert_eq!(d(&to_entra_string(t)), t);
        for bad in [
            "",
            "tomorrow",
            "2021-02-30",
            "13/1/2021",
            "2021-08-24+25:00",
        ] {
            assert!(parse_date_opt(bad).is_none(), "{bad}");
        }
        let e = cdate("nope").unwrap_err();
        assert!(matches!(
            e,
            FnError::BadDate {
                function: "CDate",
                argument: "expression",
                ..
            }
        ));
    }

    #[test]
    fn date_add_doc_examples() {
        // Entra DateAdd example table, dateTime = CDate("2012-03-16-07:00").
        let hire = cdate("2012-03-16-07:00").unwrap();
        let add = |i: &str, v: f64| to_entra_string(date_add(i, v, hire).unwrap());
        assert_eq!(add("d", 7.0), "3/23/2012 7:00:00 AM");
        assert_eq!(add("d", -10.0), "3/6/2012 7:00:00 AM");
        assert_eq!(add("ww", 2.0), "3/30/2012 7:00:00 AM");
        assert_eq!(add("m", 10.0), "1/16/2013 7:00:00 AM");
        assert_eq!(add("yyyy", 2.0), "3/16/2014 7:00:00 AM");
    }

    #[test]
    fn date_add_edges() {
        let jan31 = d("2024-01-31T12:00:00Z");
        assert_eq!(
            to_entra_string(date_add("m", 1.0, jan31).unwrap()),
            "2/29/2024 12:00:00 PM"
        );
        assert_eq!(
            to_entra_string(date_add("yyyy", -1.0, d("2024-02-29")).unwrap()),
            "2/28/2023 12:00:00 AM"
        );
        assert_eq!(
            to_entra_string(date_add("h", 1.5, jan31).unwrap()),
            "1/31/2024 1:30:00 PM"
        );
        assert_eq!(
            to_entra_string(date_add("n", -30.0, jan31).unwrap()),
            "1/31/2024 11:30:00 AM"
        );
        assert_eq!(
            to_entra_string(date_add("S", 61.0, jan31).unwrap()),
            "1/31/2024 12:01:01 PM"
        );
        assert!(matches!(
            date_add("q", 1.0, jan31),
            Err(FnError::BadInterval {
                function: "DateAdd",
                argument: "interval",
                ..
            })
        ));
        assert!(date_add("yyyy", 1e12, jan31).is_err());
        assert!(date_add("d", f64::NAN, jan31).is_err());
    }

    #[test]
    fn date_diff_doc_examples() {
        // Entra DateDiff example table.
        let diff = |i: &str, a: &str, b: &str| date_diff(i, d(a), d(b)).unwrap();
        assert_eq!(diff("d", "2021-08-18+08:00", "2021-08-31+08:00"), 13);
        assert_eq!(diff("d", "8/25/2021 5:41:18 PM", "2012-03-16-07:00"), -3449);
        assert_eq!(diff("ww", "8/25/2021 5:41:18 PM", "2012-03-16-07:00"), -493);
        assert_eq!(diff("m", "8/25/2021 5:41:18 PM", "2012-03-16-07:00"), -113);
        assert_eq!(diff("yyyy", "8/25/2021 5:41:18 PM", "2012-03-16-07:00"), -9);
        assert_eq!(diff("d", "2021-08-31+08:00", "2021-08-31+08:00"), 0);
        assert_eq!(diff("h", "2021-08-24", "2021-08-25"), 24);
        assert_eq!(diff("n", "2021-08-24", "2021-08-25"), 1440);
        assert_eq!(diff("s", "2021-08-24", "2021-08-25"), 86400);
    }

    #[test]
    fn date_diff_truncates_and_counts_boundaries() {
        let diff = |i: &str, a: &str, b: &str| date_diff(i, d(a), d(b)).unwrap();
        assert_eq!(diff("d", "2021-08-24T23:00:00Z", "2021-08-25T22:00:00Z"), 0);
        assert_eq!(
            diff("yyyy", "2021-12-31T23:59:59Z", "2022-01-01T00:00:00Z"),
            1
        );
        assert_eq!(diff("m", "2021-01-31", "2021-02-01"), 1);
        // Saturday to Sunday crosses a week boundary.
        assert_eq!(diff("ww", "2024-05-04", "2024-05-05"), 1);
        assert_eq!(diff("ww", "2024-05-05", "2024-05-11"), 0);
        assert!(date_diff("x", d("2021-01-01"), d("2021-01-01")).is_err());
    }

    #[test]
    fn date_from_num_doc_example() {
        // DateFromNum(129699324000000000): January 1, 2012 at 11:00 PM.
        let t = date_from_num(129_699_324_000_000_000).unwrap();
        assert_eq!(to_entra_string(t), "1/1/2012 11:00:00 PM");
        assert_eq!(
            date_from_num(0).unwrap().to_rfc3339(),
            "1601-01-01T00:00:00+00:00"
        );
        assert!(date_from_num(i64::MAX).is_err());
        assert!(date_from_num(-1).is_err());
    }

    #[test]
    fn num_from_date_doc_example_and_round_trip() {
        // The Workday example's input after FormatDateTime/Join:
        // "2020-12-31 23:59:59-08:00" = 2021-01-01T07:59:59Z.
        assert_eq!(
            num_from_date("2020-12-31 23:59:59-08:00").unwrap(),
            132_539_615_990_000_000
        );
        assert_eq!(
            num_from_date("2012-01-01T23:00:00Z").unwrap(),
            129_699_324_000_000_000
        );
        let ft = 132_539_615_991_234_567;
        assert_eq!(
            num_from_date(&date_from_num(ft).unwrap().to_rfc3339()).unwrap(),
            ft
        );
        assert!(num_from_date("1600-12-31T00:00:00Z").is_err());
        assert!(num_from_date("").is_err());
    }

    #[test]
    fn format_date_time_doc_examples() {
        let now = d("2024-05-06T07:08:09Z");
        let fdt =
            |s: &str, st: Option<&str>, i: &str, o: &str| format_date_time_at(now, s, st, i, o);
        // FormatDateTime([extensionAttribute1], , "yyyyMMddHHmmss.fZ", "yyyy-MM-dd")
        assert_eq!(
            fdt("20150123105347.1Z", None, "yyyyMMddHHmmss.fZ", "yyyy-MM-dd").unwrap(),
            "2015-01-23"
        );
        // NumFromDate examples: Workday and SuccessFactors inner FormatDateTime.
        assert_eq!(
            fdt("2020-12-31-08:00", None, "yyyy-MM-ddzzz", "yyyy-MM-dd").unwrap(),
            "2020-12-31"
        );
        assert_eq!(
            fdt(
                "12/31/2020 11:59:59 PM",
                None,
                "M/d/yyyy hh:mm:ss tt",
                "yyyy-MM-dd"
            )
            .unwrap(),
            "2020-12-31"
        );
        assert_eq!(
            fdt(
                "2021-06-30T10:00:00",
                Some("AssumeUniversal"),
                "yyyy-MM-ddTHH:mm:ss",
                "o"
            )
            .unwrap(),
            "2021-06-30T10:00:00.0000000Z"
        );
        assert_eq!(
            fdt("10:30", None, "HH:mm", "yyyy-MM-dd HH:mm").unwrap(),
            "2024-05-06 10:30"
        );
    }

    #[test]
    fn format_date_time_errors_name_the_argument() {
        let now = d("2024-05-06T07:08:09Z");
        let arg = |r: Result<String, FnError>| match r.unwrap_err() {
            FnError::BadFormat { argument, .. } | FnError::BadDate { argument, .. } => argument,
            FnError::BadArgument { argument, .. } => argument,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            arg(format_date_time_at(
                now,
                "2020-01-01",
                None,
                "yyyy-MM-dd",
                "'"
            )),
            "outputFormat"
        );
        assert_eq!(
            arg(format_date_time_at(
                now,
                "2020-01-01",
                None,
                "fffffffff",
                "yyyy"
            )),
            "inputFormat"
        );
        assert_eq!(
            arg(format_date_time_at(
                now,
                "2020-01-32",
                None,
                "yyyy-MM-dd",
                "yyyy"
            )),
            "source"
        );
        assert_eq!(
            arg(format_date_time_at(now, "", None, "yyyy-MM-dd", "yyyy")),
            "source"
        );
        assert_eq!(
            arg(format_date_time_at(
                now,
                "2020-01-01",
                Some("Nope"),
                "yyyy-MM-dd",
                "yyyy"
            )),
            "dateTimeStyles"
        );
    }
}
