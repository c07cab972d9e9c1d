//! String functions. Positions and lengths count Unicode scalar values
//! (.NET counts UTF-16 code units; the two differ only outside the BMP).

use base64::Engine as _;
use regex::Regex;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::error::{FnError, bad_arg};

/// `Append(source, suffix)`: `source` followed by `suffix`. Entra example:
/// `Append("John.Doe@contoso.com", ".test")` is
/// `John.Doe@contoso.com.test`. Via [`crate::call`], a null source gives
/// null and a null suffix appends nothing.
pub fn append(source: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(source.len() + suffix.len());
    s.push_str(source);
    s.push_str(suffix);
    s
}

/// `ConvertToBase64(source)`: "converts a string to a Unicode base64
/// string" — base64 of the UTF-16LE bytes, as .NET's `Encoding.Unicode`.
/// Entra example: `"Hello world!"` is `SABlAGwAbABvACAAdwBvAHIAbABkACEA`.
pub fn convert_to_base64(source: &str) -> String {
    let bytes: Vec<u8> = source.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `ConvertToUTF8Hex(source)`: the UTF-8 bytes in upper-case hex. Entra
/// example: `"Hello world!"` is `48656C6C6F20776F726C6421`.
pub fn convert_to_utf8_hex(source: &str) -> String {
    use std::fmt::Write as _;
    source
        .bytes()
        .fold(String::with_capacity(source.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02X}");
            s
        })
}

/// `InStr` compare type: VBA's `vbBinaryCompare` (0, the default) or
/// `vbTextCompare` (1, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompareType {
    #[default]
    Binary,
    Text,
}

impl CompareType {
    /// `vbBinaryCompare`/`vbTextCompare` (case-insensitive) or `0`/`1`.
    pub fn parse(s: &str) -> Option<CompareType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vbbinarycompare" | "0" => Some(CompareType::Binary),
            "vbtextcompare" | "1" => Some(CompareType::Text),
            _ => None,
        }
    }
}

/// `InStr(value1, value2, start, compareType)`: the 1-based position of the
/// first `value2` in `value1` at or after `start` (default 1), 0 when not
/// found. Entra examples: `InStr("The quick brown fox", "quick")` is 5,
/// `InStr("repEated", "e", 3, vbBinaryCompare)` is 7. As VBA: an empty
/// `value2` gives `start`; a `start` past the end gives 0; `start` < 1 is an
/// error. Via [`crate::call`], a null `value1` gives null.
pub fn in_str(
    value1: &str,
    value2: &str,
    start: Option<i64>,
    compare: CompareType,
) -> Result<i64, FnError> {
    let start = start.unwrap_or(1);
    if start < 1 {
        return Err(bad_arg("InStr", "start", format!("{start} is less than 1")));
    }
    let fold = |s: &str| -> Vec<char> {
        match compare {
            CompareType::Binary => s.chars().collect(),
            CompareType::Text => s.chars().map(lower_char).collect(),
        }
    };
    let hay = fold(value1);
    let needle = fold(value2);
    let from = (start - 1) as usize;
    if from > hay.len() {
        return Ok(0);
    }
    if needle.is_empty() {
        return Ok(start);
    }
    Ok(hay[from..]
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .map_or(0, |p| (from + p + 1) as i64))
}

/// `Join(separator, source1, source2, …)`: the non-empty values joined with
/// `separator`. Entra: multi-valued sources contribute every value; the
/// example `Join(", ", "", [surname], [givenName])` gives `Doe, John`, so
/// empty (and null) values are skipped rather than joined.
pub fn join<S: AsRef<str>>(separator: &str, sources: &[S]) -> String {
    let mut out = String::new();
    for s in sources.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
        if !out.is_empty() {
            out.push_str(separator);
        }
        out.push_str(s);
    }
    out
}

/// `Left(String, NumChars)`: the first `num_chars` characters. Entra: 0
/// gives an empty string, a negative count gives the input, a count past
/// the end gives the whole string, and a null string gives an empty string.
/// Example: `Left("John Doe", 3)` is `Joh`.
pub fn left(string: &str, num_chars: i64) -> String {
    if num_chars < 0 {
        return string.to_string();
    }
    string.chars().take(num_chars as usize).collect()
}

/// `Mid(source, start, length)`: `length` characters from the 1-based
/// `start`. Entra: "If length ends outside the source string, function
/// returns substring from start index until end of source string". Entra
/// documents nothing else; here a `start` past the end gives an empty
/// string, a `start` below 1 counts from 1, and a negative length gives an
/// empty string. Example (Entra "generate user alias"):
/// `Append(Mid("John", 1, 3), Mid("Doe", 1, 5))` is `JohDoe`.
pub fn mid(source: &str, start: i64, length: i64) -> String {
    if length <= 0 {
        return String::new();
    }
    let skip = start.max(1) - 1;
    source
        .chars()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(usize::try_from(length).unwrap_or(usize::MAX))
        .collect()
}

/// `NormalizeDiacritics(source)`: diacritical characters replaced by their
/// plain equivalents, following Entra's table (`Zoë` → `Zoe`, `æ` → `ae`,
/// `ø` → `oe`, `ß` → `ss`, `ł` → `l`, `ı` → `i`, combining macrons and
/// underlines dropped). Implemented as the table's special letters plus
/// canonical decomposition with the combining marks removed, which covers
/// every row of the table; characters neither decompose nor listed stay as
/// they are.
pub fn normalize_diacritics(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for c in source.nfd() {
        if is_combining_mark(c) {
            continue;
        }
        match c {
            'æ' => out.push_str("ae"),
            'Æ' => out.push_str("AE"),
            'ø' | 'œ' => out.push_str("oe"),
            'Ø' | 'Œ' => out.push_str("OE"),
            'ß' => out.push_str("ss"),
            'ł' => out.push('l'),
            'Ł' => out.push('L'),
            'ı' => out.push('i'),
            other => out.push(other),
        }
    }
    out
}

/// `PCase(source, wordSeparators)`: the first character of each word upper
/// case, the rest lower case. Entra examples: `PCase("PABLO GONSALVES
/// (SECOND)")` is `Pablo Gonsalves (Second)`; `PCase("PINTO-DE'SILVA", "
/// '-")` is `Pinto-De'Silva`.
///
/// Without `word_separators` (None or empty) Entra uses .NET
/// `TextInfo.ToTitleCase`, whose separators are white space, controls and
/// every punctuation and symbol category; letters, digits and combining
/// marks continue a word, and so does an apostrophe (`o'neil` → `O'neil`).
/// As in .NET, a word begins at a letter, so the letter after a leading
/// digit is capitalised (`3rd` → `3Rd`). With `word_separators`, only those
/// characters separate words.
pub fn pcase(source: &str, word_separators: Option<&str>) -> String {
    let lower: Vec<char> = source.chars().map(lower_char).collect();
    let mut out = String::with_capacity(source.len());
    match word_separators.filter(|s| !s.is_empty()) {
        Some(seps) => {
            let mut at_start = true;
            for c in lower {
                if seps.contains(c) {
                    at_start = true;
                    out.push(c);
                } else if at_start {
                    out.push(upper_char(c));
                    at_start = false;
                } else {
                    out.push(c);
                }
            }
        }
        None => {
            let is_letter = |c: char| c.is_alphabetic();
            let continues_word = |c: char| c.is_alphanumeric() || is_combining_mark(c) || c == '\'';
            let mut i = 0;
            while i < lower.len() {
                let c = lower[i];
                if is_letter(c) {
                    out.push(upper_char(c));
                    i += 1;
                    while i < lower.len() && continues_word(lower[i]) {
                        out.push(lower[i]);
                        i += 1;
                    }
                } else {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }
    out
}

/// `Split(source, delimiter)`: `source` cut at every `delimiter`, empty
/// pieces kept (.NET `String.Split`). An empty delimiter gives `[source]`.
/// Entra example: `Split("PermissionSetOne, PermissionSetTwo", ",")` — see
/// the crate notes: pieces are not trimmed, so the second value keeps its
/// leading space.
pub fn split(source: &str, delimiter: &str) -> Vec<String> {
    if delimiter.is_empty() {
        return vec![source.to_string()];
    }
    source.split(delimiter).map(str::to_string).collect()
}

/// `StripSpaces(source)`: "Removes all space (" ") characters" — only
/// U+0020; tabs and other white space stay.
pub fn strip_spaces(source: &str) -> String {
    source.chars().filter(|&c| c != ' ').collect()
}

fn turkic(culture: Option<&str>) -> bool {
    culture.is_some_and(|c| {
        let lang = c
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        lang == "tr" || lang == "az"
    })
}

/// One-to-one lower-casing, as .NET's invariant `ToLower` (no final-sigma
/// rule; `İ` becomes `i`).
fn lower_char(c: char) -> char {
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(l), None) => l,
        _ if c == 'İ' => 'i',
        _ => c,
    }
}

/// One-to-one upper-casing, as .NET's invariant `ToUpper` (`ß` stays `ß`).
fn upper_char(c: char) -> char {
    let mut it = c.to_uppercase();
    match (it.next(), it.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

/// `ToLower(source, culture)`: lower case with the invariant culture, or
/// with `culture`'s rules. Culture rules that differ from the invariant
/// one are only the Turkic dotted/dotless i (`tr`, `az`); other cultures
/// lower-case as invariant. Entra example:
/// `ToLower("John.Smith@contoso.com")` is `john.smith@contoso.com`.
pub fn to_lower(source: &str, culture: Option<&str>) -> String {
    let turkic = turkic(culture);
    source
        .chars()
        .map(|c| match c {
            'I' if turkic => 'ı',
            'İ' => 'i',
            c => lower_char(c),
        })
        .collect()
}

/// `ToUpper(source, culture)`: upper case with the invariant culture, or
/// with `culture`'s rules (Turkic `i` → `İ` for `tr`, `az`).
pub fn to_upper(source: &str, culture: Option<&str>) -> String {
    let turkic = turkic(culture);
    source
        .chars()
        .map(|c| match c {
            'i' if turkic => 'İ',
            c => upper_char(c),
        })
        .collect()
}

/// `Word(String, WordNumber, Delimiters)`: the `word_number`-th (1-based)
/// word, words being runs of characters not in `delimiters`. Entra: a
/// number below 1, a null string, or fewer words give an empty string.
/// Examples: `Word("The quick brown fox", 3, " ")` is `brown`;
/// `Word("This,string!has&many separators", 3, ",!&#")` is `has`.
/// Consecutive delimiters do not make empty words.
pub fn word(string: &str, word_number: i64, delimiters: &str) -> String {
    if word_number < 1 {
        return String::new();
    }
    string
        .split(|c| delimiters.contains(c))
        .filter(|w| !w.is_empty())
        .nth((word_number - 1) as usize)
        .unwrap_or("")
        .to_string()
}

/// `Replace(source, oldValue, , , replacementValue, , )`: every occurrence
/// of `old_value` replaced (case-sensitive). Entra examples:
/// `Replace("Product Developer", "Product Developer", , , "Software
/// Engineer", , )` is `Software Engineer`; `Replace("john.doe@contoso.com",
/// "@contoso.com", , , "", , )` is `john.doe`. An empty `old_value` is an
/// error (.NET throws).
pub fn replace_text(
    source: &str,
    old_value: &str,
    replacement_value: &str,
) -> Result<String, FnError> {
    if old_value.is_empty() {
        return Err(bad_arg("Replace", "oldValue", "must not be empty"));
    }
    Ok(source.replace(old_value, replacement_value))
}

/// `Replace(source, oldValue, , , , , template)`: `template` with every
/// `old_value` replaced by `source`. Entra example: `Replace("jsmith",
/// "<username>", , , , , "<username>@contoso.com")` is
/// `jsmith@contoso.com`.
pub fn replace_template(source: &str, old_value: &str, template: &str) -> Result<String, FnError> {
    if old_value.is_empty() {
        return Err(bad_arg("Replace", "oldValue", "must not be empty"));
    }
    Ok(template.replace(old_value, source))
}

fn compile(pattern: &str) -> Result<Regex, FnError> {
    Regex::new(pattern).map_err(|e| FnError::BadRegex {
        function: "Replace",
        argument: "regexPattern",
        message: e.to_string(),
    })
}

/// `Replace(source, , regexPattern, , replacementValue, , )`: every match
/// replaced by `replacement_value`, in which `${name}` and `$1` refer to
/// groups and `$$` is a dollar (.NET substitutions; the `regex` crate's
/// syntax is the same for these). Entra examples:
/// `Replace("+91 9998887777", , "\+(?<isdCode>\d* )(?<phoneNumber>\d{10})",
/// , "${phoneNumber}", , )` is `9998887777`; `Replace("john_doe72", ,
/// "[a-zA-Z_]*", , "", , )` is `72`.
pub fn replace_regex(
    source: &str,
    regex_pattern: &str,
    replacement_value: &str,
) -> Result<String, FnError> {
    Ok(compile(regex_pattern)?
        .replace_all(source, replacement_value)
        .into_owned())
}

fn group_index(re: &Regex, group: &str) -> Result<usize, FnError> {
    re.capture_names()
        .position(|n| n == Some(group))
        .or_else(|| {
            group
                .parse::<usize>()
                .ok()
                .filter(|i| *i < re.captures_len())
        })
        .ok_or_else(|| {
            bad_arg(
                "Replace",
                "regexGroupName",
                format!("`{group}` is not a group of regexPattern"),
            )
        })
}

/// `Replace(source, , regexPattern, regexGroupName, replacementValue, , )`:
/// in every match, the text of group `regex_group_name` replaced by
/// `replacement_value` (taken literally). Entra examples:
/// `Replace("545 Tremont Street", , "(?<streetNumber>^\d*)",
/// "streetNumber", "888", , )` is `888 Tremont Street`;
/// `Replace("jsmith@contoso.com", , "(?<Suffix>@(.)*)", "Suffix", "", , )`
/// is `jsmith`.
pub fn replace_regex_group(
    source: &str,
    regex_pattern: &str,
    regex_group_name: &str,
    replacement_value: &str,
) -> Result<String, FnError> {
    let re = compile(regex_pattern)?;
    let idx = group_index(&re, regex_group_name)?;
    let mut out = String::with_capacity(source.len());
    let mut last = 0;
    for caps in re.captures_iter(source) {
        if let Some(m) = caps.get(idx) {
            out.push_str(&source[last..m.start()]);
            out.push_str(replacement_value);
            last = m.end();
        }
    }
    out.push_str(&source[last..]);
    Ok(out)
}

/// `Replace(source, , regexPattern, regexGroupName, , replacementAttributeName, )`:
/// `source` if it has a value; otherwise the text of group
/// `regex_group_name` in the first match of `regex_pattern` in
/// `replacement_attribute` (None if it does not match). Entra example:
/// source `""`, `replacementAttributeName` `[mobile]` = `+91 8887779999`,
/// pattern `\+(?<isdCode>\d* )(?<phoneNumber>\d{10})`, group `phoneNumber`
/// gives `8887779999`.
pub fn replace_from_attribute(
    source: Option<&str>,
    regex_pattern: &str,
    regex_group_name: &str,
    replacement_attribute: Option<&str>,
) -> Result<Option<String>, FnError> {
    let re = compile(regex_pattern)?;
    let idx = group_index(&re, regex_group_name)?;
    if let Some(s) = source.filter(|s| !s.is_empty()) {
        return Ok(Some(s.to_string()));
    }
    Ok(replacement_attribute
        .and_then(|attr| re.captures(attr))
        .and_then(|caps| caps.get(idx))
        .map(|m| m.as_str().to_string()))
}

/// The optional arguments of the seven-argument `Replace`, `None` where the
/// expression leaves the position empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaceArgs<'a> {
    pub old_value: Option<&'a str>,
    pub regex_pattern: Option<&'a str>,
    pub regex_group_name: Option<&'a str>,
    pub replacement_value: Option<&'a str>,
    pub replacement_attribute_name: Option<&'a str>,
    pub template: Option<&'a str>,
}

/// `Replace(source, oldValue, regexPattern, regexGroupName,
/// replacementValue, replacementAttributeName, template)`, choosing the
/// form from the arguments present, as Entra describes:
///
/// 1. `regexPattern` + `regexGroupName` + `replacementValue` →
///    [`replace_regex_group`];
/// 2. `regexPattern` + `regexGroupName` (no `replacementValue`) →
///    [`replace_from_attribute`];
/// 3. `regexPattern` + `replacementValue` → [`replace_regex`];
/// 4. `oldValue` + `replacementValue` → [`replace_text`];
/// 5. `oldValue` + `template` → [`replace_template`].
///
/// When `replacementValue` and `template` are both given, `replacementValue`
/// wins. A null `source` gives null except in form 2. Anything else is an
/// error naming the missing argument.
pub fn replace(source: Option<&str>, a: &ReplaceArgs<'_>) -> Result<Option<String>, FnError> {
    if let Some(pattern) = a.regex_pattern {
        return match (a.regex_group_name, a.replacement_value) {
            (Some(group), Some(value)) => source
                .map(|s| replace_regex_group(s, pattern, group, value))
                .transpose(),
            (Some(group), None) => {
                replace_from_attribute(source, pattern, group, a.replacement_attribute_name)
            }
            (None, Some(value)) => source.map(|s| replace_regex(s, pattern, value)).transpose(),
            (None, None) => Err(bad_arg(
                "Replace",
                "replacementValue",
                "regexPattern needs replacementValue or regexGroupName",
            )),
        };
    }
    let Some(old) = a.old_value else {
        return Err(bad_arg(
            "Replace",
            "oldValue",
            "give oldValue or regexPattern",
        ));
    };
    match (a.replacement_value, a.template) {
        (Some(value), _) => source.map(|s| replace_text(s, old, value)).transpose(),
        (None, Some(template)) => source
            .map(|s| replace_template(s, old, template))
            .transpose(),
        (None, None) => Err(bad_arg(
            "Replace",
            "replacementValue",
            "oldValue needs replacementValue or template",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_doc_example() {
        assert_eq!(
            append("John.Doe@contoso.com", ".test"),
            "John.Doe@contoso.com.test"
        );
        assert_eq!(append("", ""), "");
        // Entra "generate user alias" example.
        assert_eq!(append(&mid("John", 1, 3), &mid("Doe", 1, 5)), "JohDoe");
    }

    #[test]
    fn base64_and_hex_doc_examples() {
        assert_eq!(
            convert_to_base64("Hello world!"),
            "SABlAGwAbABvACAAdwBvAHIAbABkACEA"
        );
        assert_eq!(convert_to_base64(""), "");
        assert_eq!(convert_to_base64("é"), "6QA=");
        assert_eq!(convert_to_base64("😀"), "PdgA3g==");
        assert_eq!(
            convert_to_utf8_hex("Hello world!"),
            "48656C6C6F20776F726C6421"
        );
        assert_eq!(convert_to_utf8_hex(""), "");
        assert_eq!(convert_to_utf8_hex("é"), "C3A9");
    }

    #[test]
    fn in_str_doc_examples() {
        assert_eq!(
            in_str("The quick brown fox", "quick", None, CompareType::Binary).unwrap(),
            5
        );
        assert_eq!(
            in_str("repEated", "e", Some(3), CompareType::Binary).unwrap(),
            7
        );
        assert_eq!(
            in_str("repEated", "e", Some(3), CompareType::Text).unwrap(),
            4
        );
        assert_eq!(in_str("abc", "z", None, CompareType::Binary).unwrap(), 0);
        assert_eq!(in_str("abc", "", Some(2), CompareType::Binary).unwrap(), 2);
        assert_eq!(in_str("abc", "c", Some(9), CompareType::Binary).unwrap(), 0);
        assert_eq!(in_str("", "", None, CompareType::Binary).unwrap(), 1);
        assert_eq!(in_str("ééa", "a", None, CompareType::Binary).unwrap(), 3);
        assert!(in_str("abc", "a", Some(0), CompareType::Binary).is_err());
        assert_eq!(CompareType::parse("vbTextCompare"), Some(CompareType::Text));
        assert_eq!(CompareType::parse("0"), Some(CompareType::Binary));
        assert_eq!(CompareType::parse("other"), None);
    }

    #[test]
    fn join_doc_example() {
        // "Add a comma between last name and first name": Join(", ", "", [surname], [givenName])
        assert_eq!(join(", ", &["", "Doe", "John"]), "Doe, John");
        assert_eq!(
            join("@", &["john.smith", "contoso.com"]),
            "john.smith@contoso.com"
        );
        assert_eq!(join::<&str>(",", &[]), "");
        assert_eq!(join("", &["a", "b"]), "ab");
    }

    #[test]
    fn left_doc_rules() {
        assert_eq!(left("John Doe", 3), "Joh");
        assert_eq!(left("John Doe", 0), "");
        assert_eq!(left("John Doe", -1), "John Doe");
        assert_eq!(left("Jo", 5), "Jo");
        assert_eq!(left("", 2), "");
        assert_eq!(left("Zoë", 3), "Zoë");
    }

    #[test]
    fn mid_rules() {
        assert_eq!(mid("John", 1, 1), "J");
        assert_eq!(mid("John", 2, 2), "oh");
        assert_eq!(mid("John", 3, 10), "hn");
        assert_eq!(mid("John", 5, 1), "");
        assert_eq!(mid("John", 0, 2), "Jo");
        assert_eq!(mid("John", 1, 0), "");
        assert_eq!(mid("John", 1, -1), "");
        assert_eq!(mid("Zoë", 3, 1), "ë");
        assert_eq!(mid("", 1, 1), "");
        assert_eq!(mid("abc", i64::MAX, i64::MAX), "");
    }

    #[test]
    fn normalize_diacritics_doc_table() {
        assert_eq!(normalize_diacritics("Zoë"), "Zoe");
        let rows = [
            ("äàâãåáąăāǟǡ", "aaaaaaaaaaa"),
            ("ÄÀÂÃÅÁĄĂĀǞǠ", "AAAAAAAAAAA"),
            ("æǣÆǢ", "aeaeAEAE"),
            ("çčćÇČĆ", "cccCCC"),
            ("ďḏĎḎ", "ddDD"),
            ("ëèéêęěėēḗḕ", "eeeeeeeeee"),
            ("ğḡĞḠ", "ggGG"),
            ("ïîìíıīÏÎÌÍİĪ", "iiiiiiIIIIII"),
            ("ľłḹḻŁĽḸḺ", "llllLLLL"),
            ("ñńňṉÑŃŇṈ", "nnnnNNNN"),
            ("öòőõôóōṓṑȫǭȭȱ", "ooooooooooooo"),
            ("øø̄œ̄ØØ̄Œ̄", "oeoeoeOEOEOE"),
            ("řṟṝŘṞṜ", "rrrRRR"),
            ("ß", "ss"),
            ("šśșşŠŚȘŞ", "ssssSSSS"),
            ("ťțṯŤȚṮ", "tttTTT"),
            ("üùûúůűūǖṻÜÙÛÚŮŰŪǕṺ", "uuuuuuuuuUUUUUUUUU"),
            ("ÿýȳŸÝȲ", "yyyYYY"),
            ("źžżẕŹŽŻẔ", "zzzzZZZZ"),
            // Combining-mark rows: a̱ c̄ ē̂ Ā́.
            (
                "a\u{331} c\u{304} e\u{304}\u{302} A\u{304}\u{301}",
                "a c e A",
            ),
        ];
        for (input, want) in rows {
            assert_eq!(normalize_diacritics(input), want, "{input}");
        }
        assert_eq!(normalize_diacritics(""), "");
        assert_eq!(normalize_diacritics("Jéssica Smith"), "Jessica Smith");
        assert_eq!(normalize_diacritics("李"), "李");
    }

    #[test]
    fn pcase_doc_examples() {
        assert_eq!(
            pcase("PABLO GONSALVES (SECOND)", None),
            "Pablo Gonsalves (Second)"
        );
        assert_eq!(pcase("PINTO-DE'SILVA", Some(" '-")), "Pinto-De'Silva");
        assert_eq!(pcase("GREGORY JAMES", None), "Gregory James");
        // Default separators: punctuation and symbols split, apostrophe does not.
        assert_eq!(pcase("PINTO-DE'SILVA", None), "Pinto-De'silva");
        assert_eq!(pcase("anne_marie+joe.o", None), "Anne_Marie+Joe.O");
        assert_eq!(pcase("3rd floor", None), "3Rd Floor");
        assert_eq!(pcase("élodie ÇA", None), "Élodie Ça");
        assert_eq!(pcase("", None), "");
        assert_eq!(pcase("a b", Some("")), "A B");
    }

    #[test]
    fn split_doc_example() {
        assert_eq!(
            split("PermissionSetOne, PermissionSetTwo", ","),
            vec!["PermissionSetOne", " PermissionSetTwo"]
        );
        assert_eq!(split("a,,b", ","), vec!["a", "", "b"]);
        assert_eq!(split("", ","), vec![""]);
        assert_eq!(split("a::b", "::"), vec!["a", "b"]);
        assert_eq!(split("ab", ""), vec!["ab"]);
    }

    #[test]
    fn strip_spaces_only_spaces() {
        assert_eq!(strip_spaces(" John  Smith "), "JohnSmith");
        assert_eq!(strip_spaces("a\tb"), "a\tb");
        assert_eq!(strip_spaces(""), "");
    }

    #[test]
    fn case_functions() {
        // Entra ToLower example (after Join/NormalizeDiacritics/StripSpaces).
        assert_eq!(
            to_lower("John.Smith@contoso.com", None),
            "john.smith@contoso.com"
        );
        assert_eq!(to_upper("john", None), "JOHN");
        assert_eq!(to_upper("straße", None), "STRAßE");
        assert_eq!(to_lower("ΟΔΟΣ", None), "οδοσ");
        assert_eq!(to_lower("İI", None), "ii");
        assert_eq!(to_lower("İI", Some("tr-TR")), "iı");
        assert_eq!(to_upper("iı", Some("az")), "İI");
        assert_eq!(to_upper("iı", Some("en-US")), "II");
        assert_eq!(to_lower("", None), "");
    }

    #[test]
    fn word_doc_examples() {
        assert_eq!(word("The quick brown fox", 3, " "), "brown");
        assert_eq!(word("This,string!has&many separators", 3, ",!&#"), "has");
        assert_eq!(
            word("This,string!has&many separators", 4, ",!&#"),
            "many separators"
        );
        assert_eq!(word("a  b", 2, " "), "b");
        assert_eq!(word("a b", 0, " "), "");
        assert_eq!(word("a b", 3, " "), "");
        assert_eq!(word("", 1, " "), "");
        assert_eq!(word("abc", 1, ""), "abc");
    }

    #[test]
    fn replace_doc_examples() {
        let r = |source: Option<&str>, a: ReplaceArgs| replace(source, &a).unwrap();
        // Example 1: oldValue + replacementValue.
        let ex1 = ReplaceArgs {
            old_value: Some("Product Developer"),
            replacement_value: Some("Software Engineer"),
            ..Default::default()
        };
        assert_eq!(
            r(Some("Product Developer"), ex1).as_deref(),
            Some("Software Engineer")
        );
        // Strip known domain name.
        let strip = ReplaceArgs {
            old_value: Some("@contoso.com"),
            replacement_value: Some(""),
            ..Default::default()
        };
        assert_eq!(
            r(Some("john.doe@contoso.com"), strip).as_deref(),
            Some("john.doe")
        );
        // Example 2: oldValue + template.
        let ex2 = ReplaceArgs {
            old_value: Some("<username>"),
            template: Some("<username>@contoso.com"),
            ..Default::default()
        };
        assert_eq!(
            r(Some("jsmith"), ex2).as_deref(),
            Some("jsmith@contoso.com")
        );
        // Example 3: regexPattern + replacementValue with a group reference.
        let ex3 = ReplaceArgs {
            regex_pattern: Some(r"\+(?<isdCode>\d* )(?<phoneNumber>\d{10})"),
            replacement_value: Some("${phoneNumber}"),
            ..Default::default()
        };
        assert_eq!(
            r(Some("+91 9998887777"), ex3).as_deref(),
            Some("9998887777")
        );
        // Example 3b. Microsoft's page says "19998887777", but `+` is not in
        // the class, so .NET (and this) keep it.
        let ex3b = ReplaceArgs {
            regex_pattern: Some(r"[()\s-]+"),
            replacement_value: Some(""),
            ..Default::default()
        };
        assert_eq!(
            r(Some("+1 (999) 888-7777"), ex3b).as_deref(),
            Some("+19998887777")
        );
        // Example 4: regexPattern + regexGroupName + replacementValue.
        let ex4 = ReplaceArgs {
            regex_pattern: Some(r"(?<streetNumber>^\d*)"),
            regex_group_name: Some("streetNumber"),
            replacement_value: Some("888"),
            ..Default::default()
        };
        assert_eq!(
            r(Some("545 Tremont Street"), ex4).as_deref(),
            Some("888 Tremont Street")
        );
        let ex4b = ReplaceArgs {
            regex_pattern: Some(r"(?<Suffix>@(.)*)"),
            regex_group_name: Some("Suffix"),
            replacement_value: Some(""),
            ..Default::default()
        };
        assert_eq!(
            r(Some("jsmith@contoso.com"), ex4b).as_deref(),
            Some("jsmith")
        );
        // Example 5: regexPattern + regexGroupName + replacementAttributeName.
        let ex5 = ReplaceArgs {
            regex_pattern: Some(r"\+(?<isdCode>\d* )(?<phoneNumber>\d{10})"),
            regex_group_name: Some("phoneNumber"),
            replacement_attribute_name: Some("+91 8887779999"),
            ..Default::default()
        };
        assert_eq!(r(Some(""), ex5).as_deref(), Some("8887779999"));
        assert_eq!(r(None, ex5).as_deref(), Some("8887779999"));
        assert_eq!(
            r(Some("+1 5551234567"), ex5).as_deref(),
            Some("+1 5551234567")
        );
        let no_mobile = ReplaceArgs {
            replacement_attribute_name: None,
            ..ex5
        };
        assert_eq!(r(Some(""), no_mobile), None);
        // Example 6: remove matches of a class.
        let ex6 = ReplaceArgs {
            regex_pattern: Some("[a-zA-Z_]*"),
            replacement_value: Some(""),
            ..Default::default()
        };
        assert_eq!(r(Some("john_doe72"), ex6).as_deref(), Some("72"));
        // Null source stays null.
        assert_eq!(r(None, ex1), None);
    }

    #[test]
    fn replace_errors_name_the_argument() {
        let arg = |a: ReplaceArgs| match replace(Some("x"), &a).unwrap_err() {
            FnError::BadArgument { argument, .. } | FnError::BadRegex { argument, .. } => argument,
            other => panic!("{other:?}"),
        };
        assert_eq!(arg(ReplaceArgs::default()), "oldValue");
        assert_eq!(
            arg(ReplaceArgs {
                old_value: Some("x"),
                ..Default::default()
            }),
            "replacementValue"
        );
        assert_eq!(
            arg(ReplaceArgs {
                old_value: Some(""),
                replacement_value: Some("y"),
                ..Default::default()
            }),
            "oldValue"
        );
        assert_eq!(
            arg(ReplaceArgs {
                regex_pattern: Some("("),
                replacement_value: Some(""),
                ..Default::default()
            }),
            "regexPattern"
        );
        assert_eq!(
            arg(ReplaceArgs {
                regex_pattern: Some("x"),
                ..Default::default()
            }),
            "replacementValue"
        );
        assert_eq!(
            arg(ReplaceArgs {
                regex_pattern: Some("(?<a>x)"),
                regex_group_name: Some("b"),
                replacement_value: Some(""),
                ..Default::default()
            }),
            "regexGroupName"
        );
    }
}
