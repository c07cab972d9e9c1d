//! .NET custom date and time format strings, as `FormatDateTime` (and the
//! `M/d/yyyy h:mm:ss tt` form of `CDate`, `DateAdd` and `Now`) use them.
//!
//! Specifiers follow
//! <https://learn.microsoft.com/dotnet/standard/base-types/custom-date-and-time-format-strings>
//! with the invariant culture: `yyyy yy y`, `MMMM MMM MM M`, `dddd ddd dd d`,
//! `HH H hh h`, `mm m`, `ss s`, `f`..`fffffff`, `F`..`FFFFFFF`, `tt t`,
//! `zzz zz z`, `K`, `g`, `'quoted'` and `"quoted"` literals, `\x` escapes,
//! `%x` single specifiers; every other character is a literal (so `Z`, `T`,
//! `-`, `/`, `:`). A one-character format is a .NET *standard* format
//! (`o`, `s`, `u`, `d`, `G`, ...), expanded with the invariant culture.
//!
//! The Entra provisioning service runs in UTC, so "local time" is UTC here:
//! a parsed offset converts the value to UTC, and `zzz` always writes
//! `+00:00`.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// .NET `DateTimeKind`: only `K` can tell them apart in output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Utc,
    Local,
}

/// A parsed date/time: the instant in UTC plus the kind .NET would give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDateTime {
    pub utc: DateTime<Utc>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Year(usize),
    Month(usize),
    Day(usize),
    Hour12(usize),
    Hour24(usize),
    Minute(usize),
    Second(usize),
    /// `f` (exact digits) or `F` (trailing zeros trimmed) with a count.
    Fraction(usize, bool),
    AmPm(usize),
    Offset(usize),
    KindSpec,
    Era,
    /// A literal `Z` outside quotes: written as `Z`; when parsing it marks
    /// the value as UTC, as .NET's `ParseExact` does.
    ZLiteral,
    Lit(String),
}

/// Expand .NET standard (one-character) formats with the invariant culture.
fn standard(format: &str) -> Result<Option<&'static str>, String> {
    let mut chars = format.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Ok(None);
    };
    Ok(Some(match c {
        'd' => "MM/dd/yyyy",
        'D' => "dddd, dd MMMM yyyy",
        'f' => "dddd, dd MMMM yyyy HH:mm",
        'F' | 'U' => "dddd, dd MMMM yyyy HH:mm:ss",
        'g' => "MM/dd/yyyy HH:mm",
        'G' => "MM/dd/yyyy HH:mm:ss",
        'M' | 'm' => "MMMM dd",
        'O' | 'o' => "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
        'R' | 'r' => "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
        's' => "yyyy'-'MM'-'dd'T'HH':'mm':'ss",
        't' => "HH:mm",
        'T' => "HH:mm:ss",
        'u' => "yyyy'-'MM'-'dd HH':'mm':'ss'Z'",
        'Y' | 'y' => "yyyy MMMM",
        other => return Err(format!("`{other}` is not a standard date/time format")),
    }))
}

fn tokenize(format: &str) -> Result<Vec<Tok>, String> {
    if format.is_empty() {
        return Err("empty format".into());
    }
    let format = standard(format)?.unwrap_or(format);
    let chars: Vec<char> = format.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let lit = |toks: &mut Vec<Tok>, c: char| match toks.last_mut() {
        Some(Tok::Lit(s)) => s.push(c),
        _ => toks.push(Tok::Lit(c.to_string())),
    };
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let tok = match c {
            'y' => Tok::Year(run),
            'M' => Tok::Month(run),
            'd' => Tok::Day(run),
            'h' => Tok::Hour12(run),
            'H' => Tok::Hour24(run),
            'm' => Tok::Minute(run),
            's' => Tok::Second(run),
            'f' | 'F' if run > 7 => return Err(format!("more than 7 `{c}` specifiers")),
            'f' => Tok::Fraction(run, false),
            'F' => Tok::Fraction(run, true),
            't' => Tok::AmPm(run),
            'z' => Tok::Offset(run),
            'g' => Tok::Era,
            'K' => {
                toks.push(Tok::KindSpec);
                i += 1;
                continue;
            }
            'Z' => {
                toks.push(Tok::ZLiteral);
                i += 1;
                continue;
            }
            '\'' | '"' => {
                let mut j = i + 1;
                let mut s = String::new();
                loop {
                    match chars.get(j) {
                        None => return Err(format!("unterminated quote {c}")),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            j += 1;
                            match chars.get(j) {
                                Some(&e) => s.push(e),
                                None => return Err("`\\` at end of format".into()),
                            }
                        }
                        Some(&other) => s.push(other),
                    }
                    j += 1;
                }
                for ch in s.chars() {
                    lit(&mut toks, ch);
                }
                i = j + 1;
                continue;
            }
            '\\' => {
                match chars.get(i + 1) {
                    Some(&e) => lit(&mut toks, e),
                    None => return Err("`\\` at end of format".into()),
                }
                i += 2;
                continue;
            }
            '%' => {
                // `%d`: a single custom specifier standing alone.
                match chars.get(i + 1) {
                    Some('%') | None => return Err("`%` must precede one specifier".into()),
                    Some(_) => {}
                }
                i += 1;
                continue;
            }
            other => {
                lit(&mut toks, other);
                i += 1;
                continue;
            }
        };
        toks.push(tok);
        i += run;
    }
    Ok(toks)
}

/// Format a UTC instant with a .NET format string (invariant culture).
pub fn format(value: NetDateTime, format: &str) -> Result<String, String> {
    let toks = tokenize(format)?;
    let d = value.utc.naive_utc();
    let mut out = String::new();
    for tok in toks {
        match tok {
            Tok::Year(1) => out.push_str(&(d.year() % 100).to_string()),
            Tok::Year(2) => out.push_str(&format!("{:02}", d.year() % 100)),
            Tok::Year(n) => out.push_str(&format!("{:0n$}", d.year(), n = n)),
            Tok::Month(1) => out.push_str(&d.month().to_string()),
            Tok::Month(2) => out.push_str(&format!("{:02}", d.month())),
            Tok::Month(3) => out.push_str(&MONTHS[d.month0() as usize][..3]),
            Tok::Month(_) => out.push_str(MONTHS[d.month0() as usize]),
            Tok::Day(1) => out.push_str(&d.day().to_string()),
            Tok::Day(2) => out.push_str(&format!("{:02}", d.day())),
            Tok::Day(n) => {
                let name = DAYS[d.weekday().num_days_from_sunday() as usize];
                out.push_str(if n == 3 { &name[..3] } else { name });
            }
            Tok::Hour12(n) => {
                let h = match d.hour() % 12 {
                    0 => 12,
                    h => h,
                };
                out.push_str(&pad(h, n));
            }
            Tok::Hour24(n) => out.push_str(&pad(d.hour(), n)),
            Tok::Minute(n) => out.push_str(&pad(d.minute(), n)),
            Tok::Second(n) => out.push_str(&pad(d.second(), n)),
            Tok::Fraction(n, trim) => {
                // .NET ticks: 7 digits, truncated (not rounded) to n.
                let ticks = format!("{:07}", d.nanosecond().min(999_999_999) / 100);
                let mut digits = ticks[..n].to_string();
                if trim {
                    digits.truncate(digits.trim_end_matches('0').len());
                    if digits.is_empty() && out.ends_with('.') {
                        // .NET drops the separator before an empty `F`.
                        out.pop();
                    }
                }
                out.push_str(&digits);
            }
            Tok::AmPm(n) => {
                let s = if d.hour() < 12 { "AM" } else { "PM" };
                out.push_str(if n == 1 { &s[..1] } else { s });
            }
            Tok::Offset(1) => out.push_str("+0"),
            Tok::Offset(2) => out.push_str("+00"),
            Tok::Offset(_) => out.push_str("+00:00"),
            Tok::KindSpec => match value.kind {
                Kind::Utc => out.push('Z'),
                Kind::Local => out.push_str("+00:00"),
                Kind::Unspecified => {}
            },
            Tok::Era => out.push_str("A.D."),
            Tok::ZLiteral => out.push('Z'),
            Tok::Lit(s) => out.push_str(&s),
        }
    }
    Ok(out)
}

fn pad(v: u32, n: usize) -> String {
    if n == 1 {
        v.to_string()
    } else {
        format!("{v:02}")
    }
}

/// Which `DateTimeStyles` flags matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Styles {
    pub leading_white: bool,
    pub trailing_white: bool,
    pub inner_white: bool,
    pub assume_universal: bool,
    pub assume_local: bool,
    pub adjust_to_universal: bool,
    pub no_current_date_default: bool,
}

impl Default for Styles {
    /// Entra's default: `RoundtripKind, AllowLeadingWhite, AllowTrailingWhite`.
    fn default() -> Self {
        Styles {
            leading_white: true,
            trailing_white: true,
            inner_white: false,
            assume_universal: false,
            assume_local: false,
            adjust_to_universal: false,
            no_current_date_default: false,
        }
    }
}

impl Styles {
    /// Parse `DateTimeStyles` names separated by `,` or `|` (.NET enum
    /// syntax, case-insensitive, optional `DateTimeStyles.` prefix). An empty
    /// string gives Entra's default.
    pub fn parse(s: &str) -> Result<Styles, String> {
        if s.trim().is_empty() {
            return Ok(Styles::default());
        }
        let mut st = Styles {
            leading_white: false,
            trailing_white: false,
            ..Styles::default()
        };
        for name in s.split([',', '|']) {
            let name = name.trim();
            let name = name
                .strip_prefix("DateTimeStyles.")
                .or_else(|| name.strip_prefix("System.Globalization.DateTimeStyles."))
                .unwrap_or(name);
            match name.to_ascii_lowercase().as_str() {
                "none" | "roundtripkind" => {}
                "allowleadingwhite" => st.leading_white = true,
                "allowtrailingwhite" => st.trailing_white = true,
                "allowinnerwhite" => st.inner_white = true,
                "allowwhitespaces" => {
                    st.leading_white = true;
                    st.trailing_white = true;
                    st.inner_white = true;
                }
                "assumeuniversal" => st.assume_universal = true,
                "assumelocal" => st.assume_local = true,
                "adjusttouniversal" => st.adjust_to_universal = true,
                "nocurrentdatedefault" => st.no_current_date_default = true,
                other => return Err(format!("unknown DateTimeStyles value `{other}`")),
            }
        }
        Ok(st)
    }
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn digits(&mut self, min: usize, max: usize, what: &str) -> Result<u32, String> {
        let n = self
            .rest()
            .bytes()
            .take(max)
            .take_while(u8::is_ascii_digit)
            .count();
        if n < min {
            return Err(format!("expected {what} at position {}", self.pos + 1));
        }
        let v = self.rest()[..n].parse::<u32>().unwrap_or(0);
        self.pos += n;
        Ok(v)
    }

    fn eat_ci(&mut self, word: &str) -> bool {
        let rest = self.rest();
        if rest.len() >= word.len()
            && rest.is_char_boundary(word.len())
            && rest[..word.len()].eq_ignore_ascii_case(word)
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn skip_white(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }

    fn offset(&mut self, zcount: usize) -> Result<i32, String> {
        let sign = match self.rest().chars().next() {
            Some('+') => 1,
            Some('-') => -1,
            _ => return Err(format!("expected an offset at position {}", self.pos + 1)),
        };
        self.pos += 1;
        let h = self.digits(if zcount == 2 { 2 } else { 1 }, 2, "offset hours")?;
        let mut m = 0;
        if zcount >= 3 || self.rest().starts_with(':') {
            self.eat_ci(":");
            m = self.digits(2, 2, "offset minutes")?;
        }
        if h > 14 || m > 59 {
            return Err("offset out of range".into());
        }
        Ok(sign * (h as i32 * 3600 + m as i32 * 60))
    }
}

/// .NET `DateTime.ParseExact(source, format, InvariantCulture, styles)`.
/// `now` fills a missing date the way .NET does (current date when no date
/// part is given, current year when only the year is missing).
pub fn parse_exact(
    source: &str,
    format: &str,
    styles: Styles,
    now: DateTime<Utc>,
) -> Result<NetDateTime, String> {
    let toks = tokenize(format)?;
    let mut s = source;
    if styles.leading_white {
        s = s.trim_start();
    }
    if styles.trailing_white {
        s = s.trim_end();
    }
    let mut c = Cursor { s, pos: 0 };
    let (mut year, mut month, mut day) = (None::<i32>, None::<u32>, None::<u32>);
    let (mut hour, mut minute, mut second, mut nanos) = (0u32, 0u32, 0u32, 0u32);
    let mut pm: Option<bool> = None;
    let mut hour12 = false;
    let mut offset: Option<i32> = None;
    let mut utc_marked = false;
    for tok in &toks {
        if styles.inner_white && !matches!(tok, Tok::Lit(_)) {
            c.skip_white();
        }
        match tok {
            Tok::Year(n) => {
                if *n <= 2 {
                    let y = c.digits(*n, 2, "a two-digit year")? as i32;
                    // .NET Gregorian TwoDigitYearMax = 2049.
                    year = Some(if y <= 49 { 2000 + y } else { 1900 + y });
                } else {
                    year = Some(c.digits(*n, (*n).max(4), "a year")? as i32);
                }
            }
            Tok::Month(n) if *n <= 2 => month = Some(c.digits(*n, 2, "a month")?),
            Tok::Month(n) => {
                let found = MONTHS.iter().position(|m| {
                    let name = if *n == 3 { &m[..3] } else { m };
                    c.eat_ci(name)
                });
                month = Some(found.ok_or("expected a month name")? as u32 + 1);
            }
            Tok::Day(n) if *n <= 2 => day = Some(c.digits(*n, 2, "a day")?),
            Tok::Day(n) => {
                DAYS.iter()
                    .find(|d| c.eat_ci(if *n == 3 { &d[..3] } else { d }))
                    .ok_or("expected a day name")?;
            }
            Tok::Hour12(n) => {
                hour = c.digits((*n).min(2), 2, "an hour")?;
                hour12 = true;
            }
            Tok::Hour24(n) => hour = c.digits((*n).min(2), 2, "an hour")?,
            Tok::Minute(n) => minute = c.digits((*n).min(2), 2, "minutes")?,
            Tok::Second(n) => second = c.digits((*n).min(2), 2, "seconds")?,
            Tok::Fraction(n, trimmed) => {
                let start = c.pos;
                let min = if *trimmed { 0 } else { *n };
                c.digits(min, *n, "a fraction of a second")
                    .or_else(|e| if min == 0 { Ok(0) } else { Err(e) })?;
                let digits = &c.s[start..c.pos];
                nanos = if digits.is_empty() {
                    0
                } else {
                    format!("{digits:0<9}").parse().unwrap_or(0)
                };
            }
            Tok::AmPm(n) => {
                let (a, p) = if *n == 1 { ("A", "P") } else { ("AM", "PM") };
                pm = Some(if c.eat_ci(a) {
                    false
                } else if c.eat_ci(p) {
                    true
                } else {
                    return Err(format!("expected {a} or {p} at position {}", c.pos + 1));
                });
            }
            Tok::Offset(n) => offset = Some(c.offset(*n)?),
            Tok::KindSpec => {
                if c.eat_ci("Z") {
                    utc_marked = true;
                } else if matches!(c.rest().chars().next(), Some('+' | '-')) {
                    offset = Some(c.offset(3)?);
                }
            }
            Tok::Era => {
                if !(c.eat_ci("A.D.") || c.eat_ci("AD")) {
                    return Err("expected the era A.D.".into());
                }
            }
            Tok::ZLiteral => {
                if !c.eat_ci("Z") {
                    return Err(format!("expected `Z` at position {}", c.pos + 1));
                }
                utc_marked = true;
            }
            Tok::Lit(lit) => {
                for ch in lit.chars() {
                    if ch.is_whitespace() && (styles.inner_white || styles.trailing_white) {
                        c.skip_white();
                        continue;
                    }
                    if c.rest().starts_with(ch) {
                        c.pos += ch.len_utf8();
                    } else {
                        return Err(format!("expected `{ch}` at position {}", c.pos + 1));
                    }
                }
            }
        }
    }
    if !c.rest().is_empty() {
        return Err(format!(
            "unexpected `{}` at position {}",
            c.rest(),
            c.pos + 1
        ));
    }
    if let Some(pm) = pm {
        if hour > 12 || (hour12 && hour == 0) {
            return Err("hour out of range for AM/PM".into());
        }
        hour = match (pm, hour) {
            (false, 12) => 0,
            (true, 12) => 12,
            (true, h) => h + 12,
            (false, h) => h,
        };
    }
    let (year, month, day) = match (year, month, day) {
        (None, None, None) if styles.no_current_date_default => (1, 1, 1),
        (None, None, None) => (now.year(), now.month(), now.day()),
        (y, m, d) => (y.unwrap_or(now.year()), m.unwrap_or(1), d.unwrap_or(1)),
    };
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| format!("{year:04}-{month:02}-{day:02} is not a valid date"))?;
    let time = date
        .and_hms_nano_opt(hour, minute, second, nanos)
        .ok_or_else(|| format!("{hour:02}:{minute:02}:{second:02} is not a valid time"))?;
    let (utc, kind) = match offset {
        Some(secs) => (
            utc_of(time - Duration::seconds(secs as i64)),
            if utc_marked { Kind::Utc } else { Kind::Local },
        ),
        None if utc_marked => (utc_of(time), Kind::Utc),
        None if styles.assume_universal => (utc_of(time), Kind::Utc),
        None if styles.assume_local => (utc_of(time), Kind::Local),
        None => (utc_of(time), Kind::Unspecified),
    };
    let kind = if styles.adjust_to_universal && kind != Kind::Unspecified {
        Kind::Utc
    } else {
        kind
    };
    Ok(NetDateTime { utc, kind })
}

fn utc_of(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NetDateTime {
        NetDateTime {
            utc: DateTime::parse_from_rfc3339(s).unwrap().to_utc(),
            kind: Kind::Utc,
        }
    }

    fn now() -> DateTime<Utc> {
        at("2024-05-06T07:08:09Z").utc
    }

    fn parse(s: &str, f: &str) -> Result<NetDateTime, String> {
        parse_exact(s, f, Styles::default(), now())
    }

    #[test]
    fn formats_common_specifiers() {
        let t = at("2009-06-15T13:45:30.6175425Z");
        let cases = [
            ("yyyy-MM-dd", "2009-06-15"),
            ("yy y M d", "09 9 6 15"),
            ("M/d/yyyy h:mm:ss tt", "6/15/2009 1:45:30 PM"),
            ("HH H hh h", "13 13 01 1"),
            ("m mm s ss", "45 45 30 30"),
            (
                "f ff fff ffff fffff ffffff fffffff",
                "6 61 617 6175 61754 617542 6175425",
            ),
            ("F FFFFFFF", "6 6175425"),
            ("t tt", "P PM"),
            ("zzz zz z", "+00:00 +00 +0"),
            ("%K", "Z"),
            ("K K", "Z Z"),
            ("yyyyMMddHHmmss'Z'", "20090615134530Z"),
            ("yyyy-MM-ddTHH:mm:ssZ", "2009-06-15T13:45:30Z"),
            ("\"at\" HH\\h", "at 13h"),
            ("%d", "15"),
            ("ddd dddd MMM MMMM", "Mon Monday Jun June"),
            ("o", "2009-06-15T13:45:30.6175425Z"),
            ("s", "2009-06-15T13:45:30"),
            ("u", "2009-06-15 13:45:30Z"),
        ];
        for (f, want) in cases {
            assert_eq!(format(t, f).unwrap(), want, "format {f}");
        }
    }

    #[test]
    fn trimmed_fraction_drops_its_separator() {
        let t = at("2009-06-15T13:45:30Z");
        assert_eq!(format(t, "ss.FFF").unwrap(), "30");
        assert_eq!(format(t, "ss.fff").unwrap(), "30.000");
    }

    #[test]
    fn midnight_and_noon_in_twelve_hour_clock() {
        assert_eq!(
            format(at("2020-01-01T00:05:00Z"), "h:mm tt").unwrap(),
            "12:05 AM"
        );
        assert_eq!(
            format(at("2020-01-01T12:05:00Z"), "h:mm tt").unwrap(),
            "12:05 PM"
        );
    }

    #[test]
    fn bad_formats() {
        assert!(format(at("2020-01-01T00:00:00Z"), "").is_err());
        assert!(format(at("2020-01-01T00:00:00Z"), "ffffffff").is_err());
        assert!(format(at("2020-01-01T00:00:00Z"), "'open").is_err());
        assert!(format(at("2020-01-01T00:00:00Z"), "Q").is_err());
        // As in .NET, a lone custom specifier needs `%`.
        assert!(format(at("2020-01-01T00:00:00Z"), "K").is_err());
    }

    #[test]
    fn parses_entra_example() {
        // FormatDateTime([extensionAttribute1], , "yyyyMMddHHmmss.fZ", ...)
        let t = parse("20150123105347.1Z", "yyyyMMddHHmmss.fZ").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2015-01-23T10:53:47.100+00:00");
        assert_eq!(t.kind, Kind::Utc);
    }

    #[test]
    fn parses_offsets_to_utc() {
        let t = parse("2020-12-31-08:00", "yyyy-MM-ddzzz").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2020-12-31T08:00:00+00:00");
        assert_eq!(t.kind, Kind::Local);
        let t = parse("2021-06-30+08:00", "yyyy-MM-ddK").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2021-06-29T16:00:00+00:00");
        let t = parse("2021-06-30Z", "yyyy-MM-ddK").unwrap();
        assert_eq!(t.kind, Kind::Utc);
        let t = parse("2021-06-30", "yyyy-MM-ddK").unwrap();
        assert_eq!(t.kind, Kind::Unspecified);
    }

    #[test]
    fn parses_twelve_hour_clock_and_short_fields() {
        let t = parse("12/31/2020 11:59:59 PM", "M/d/yyyy hh:mm:ss tt").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2020-12-31T23:59:59+00:00");
        let t = parse("1/2/2020 12:00:00 AM", "M/d/yyyy h:mm:ss tt").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2020-01-02T00:00:00+00:00");
        let t = parse("  01-Feb-99 ", "dd-MMM-yy").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "1999-02-01T00:00:00+00:00");
        let t = parse("05-03-49", "dd-MM-yy").unwrap();
        assert_eq!(t.utc.date_naive().to_string(), "2049-03-05");
    }

    #[test]
    fn missing_date_parts_follow_dotnet() {
        let t = parse("10:30", "HH:mm").unwrap();
        assert_eq!(t.utc.to_rfc3339(), "2024-05-06T10:30:00+00:00");
        let t = parse("03-05", "MM-dd").unwrap();
        assert_eq!(t.utc.date_naive().to_string(), "2024-03-05");
    }

    #[test]
    fn rejects_mismatches() {
        assert!(parse("2020-13-01", "yyyy-MM-dd").is_err());
        assert!(parse("2020-02-30", "yyyy-MM-dd").is_err());
        assert!(parse("2020-1-01", "yyyy-MM-dd").is_err());
        assert!(parse("2020-01-01x", "yyyy-MM-dd").is_err());
        assert!(parse("20200101", "yyyy-MM-dd").is_err());
        assert!(parse("2020-01-01 13:00 PM", "yyyy-MM-dd hh:mm tt").is_err());
    }

    #[test]
    fn styles() {
        assert_eq!(Styles::parse("").unwrap(), Styles::default());
        let st = Styles::parse("DateTimeStyles.AssumeUniversal, AdjustToUniversal").unwrap();
        assert!(st.assume_universal && st.adjust_to_universal && !st.leading_white);
        assert!(Styles::parse("Bogus").is_err());
        let st = Styles::parse("AssumeUniversal").unwrap();
        let t = parse_exact("2020-01-01", "yyyy-MM-dd", st, now()).unwrap();
        assert_eq!(t.kind, Kind::Utc);
        let none = Styles::parse("None").unwrap();
        assert!(parse_exact(" 2020-01-01", "yyyy-MM-dd", none, now()).is_err());
    }
}
