//! Guid and RandomString. Each takes an injectable RNG (`*_with`); the plain
//! forms use `rand::rng()` (the OS generator, also on wasm32-wasip2).

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::error::{FnError, bad_arg};

/// `Guid()`: a new random GUID (UUID version 4), lower case with hyphens,
/// like Entra's sample `00aa00aa-bb11-cc22-dd33-44ee44ee44ee`.
pub fn guid() -> String {
    guid_with(&mut rand::rng())
}

/// [`guid`] drawing from `rng`.
pub fn guid_with<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Digits as RandomString draws them.
pub const DIGITS: &str = "0123456789";
/// Capital letters (ASCII).
pub const CAPITALS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// Lower-case letters (ASCII).
pub const LOWER_CASE: &str = "abcdefghijklmnopqrstuvwxyz";
/// The special characters of Windows' password complexity reference, which
/// Entra's RandomString points to: `~!@#$%^&*_-+=`|\(){}[]:;"'<>,.?/`.
pub const SPECIAL: &str = "~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/";

/// Longest string RandomString makes ("256 characters max").
pub const RANDOM_STRING_MAX: i64 = 256;

/// `RandomString(Length, MinimumNumbers, MinimumSpecialCharacters,
/// MinimumCapital, MinimumLowerCase, CharactersToAvoid)`: a random string
/// of `length` characters with at least the given numbers of digits,
/// special characters, capitals and lower-case letters, none of them in
/// `characters_to_avoid`; the remaining positions are drawn from all four
/// classes. Entra examples: `RandomString(6,3,0,0,3)` is like `1a73qt`;
/// `RandomString(10,2,2,2,1,"?,")` is like `1@!2BaRg53`.
///
/// Errors: a length above 256, a negative count, minimums adding up to more
/// than `length`, or a required class emptied by `characters_to_avoid`.
pub fn random_string(
    length: i64,
    minimum_numbers: i64,
    minimum_special_characters: i64,
    minimum_capital: i64,
    minimum_lower_case: i64,
    characters_to_avoid: &str,
) -> Result<String, FnError> {
    random_string_with(
        &mut rand::rng(),
        length,
        minimum_numbers,
        minimum_special_characters,
        minimum_capital,
        minimum_lower_case,
        characters_to_avoid,
    )
}

/// [`random_string`] drawing from `rng`.
pub fn random_string_with<R: Rng + ?Sized>(
    rng: &mut R,
    length: i64,
    minimum_numbers: i64,
    minimum_special_characters: i64,
    minimum_capital: i64,
    minimum_lower_case: i64,
    characters_to_avoid: &str,
) -> Result<String, FnError> {
    const F: &str = "RandomString";
    if !(0..=RANDOM_STRING_MAX).contains(&length) {
        return Err(bad_arg(
            F,
            "Length",
            format!("{length} is not between 0 and 256"),
        ));
    }
    let classes = [
        ("MinimumNumbers", minimum_numbers, DIGITS),
        (
            "MinimumSpecialCharacters",
            minimum_special_characters,
            SPECIAL,
        ),
        ("MinimumCapital", minimum_capital, CAPITALS),
        ("MinimumLowerCase", minimum_lower_case, LOWER_CASE),
    ];
    let mut total = 0;
    let mut pools = Vec::with_capacity(4);
    for (argument, min, set) in classes {
        if min < 0 {
            return Err(bad_arg(F, argument, format!("{min} is negative")));
        }
        total += min;
        let pool: Vec<char> = set
            .chars()
            .filter(|c| !characters_to_avoid.contains(*c))
            .collect();
        if pool.is_empty() && min > 0 {
            return Err(bad_arg(
                F,
                "CharactersToAvoid",
                format!("excludes every character {argument} needs"),
            ));
        }
        pools.push((min, pool));
    }
    if total > length {
        return Err(bad_arg(
            F,
            "Length",
            format!("{length} is less than the sum of the minimums ({total})"),
        ));
    }
    let all: Vec<char> = pools.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() && length > 0 {
        return Err(bad_arg(F, "CharactersToAvoid", "excludes every character"));
    }
    let mut out: Vec<char> = Vec::with_capacity(length as usize);
    for (min, pool) in &pools {
        for _ in 0..*min {
            out.push(*pool.choose(rng).expect("non-empty pool"));
        }
    }
    while (out.len() as i64) < length {
        out.push(*all.choose(rng).expect("non-empty pool"));
    }
    out.shuffle(rng);
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn guid_shape_and_injectable_rng() {
        let g = guid();
        assert_eq!(g.len(), 36);
        assert_eq!(g.as_bytes()[14], b'4');
        assert!(
            g.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let a = guid_with(&mut StdRng::seed_from_u64(7));
        let b = guid_with(&mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
        assert_ne!(a, guid_with(&mut StdRng::seed_from_u64(8)));
        assert_ne!(guid(), guid());
    }

    fn counts(s: &str) -> [usize; 4] {
        [DIGITS, SPECIAL, CAPITALS, LOWER_CASE]
            .map(|set| s.chars().filter(|c| set.contains(*c)).count())
    }

    #[test]
    fn random_string_doc_examples() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            // RandomString(6,3,0,0,3): 3 numbers and 3 lower case.
            let s = random_string_with(&mut rng, 6, 3, 0, 0, 3, "").unwrap();
            assert_eq!(counts(&s), [3, 0, 0, 3], "{s}");
            // RandomString(10,2,2,2,1,"?,")
            let s = random_string_with(&mut rng, 10, 2, 2, 2, 1, "?,").unwrap();
            assert_eq!(s.chars().count(), 10);
            let [d, sp, c, l] = counts(&s);
            assert!(d >= 2 && sp >= 2 && c >= 2 && l >= 1, "{s}");
            assert!(!s.contains('?') && !s.contains(','), "{s}");
        }
        let a = random_string_with(&mut StdRng::seed_from_u64(3), 12, 1, 1, 1, 1, "").unwrap();
        let b = random_string_with(&mut StdRng::seed_from_u64(3), 12, 1, 1, 1, 1, "").unwrap();
        assert_eq!(a, b);
        assert_eq!(random_string(8, 2, 2, 2, 2, "").unwrap().len(), 8);
    }

    #[test]
    fn random_string_limits() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(random_string_with(&mut rng, 0, 0, 0, 0, 0, "").unwrap(), "");
        assert_eq!(
            random_string_with(&mut rng, 256, 0, 0, 0, 0, "")
                .unwrap()
                .len(),
            256
        );
        let arg = |r: Result<String, FnError>| match r.unwrap_err() {
            FnError::BadArgument { argument, .. } => argument,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            arg(random_string_with(&mut rng, 257, 0, 0, 0, 0, "")),
            "Length"
        );
        assert_eq!(
            arg(random_string_with(&mut rng, 3, 2, 2, 0, 0, "")),
            "Length"
        );
        assert_eq!(
            arg(random_string_with(&mut rng, 3, -1, 0, 0, 0, "")),
            "MinimumNumbers"
        );
        assert_eq!(
            arg(random_string_with(&mut rng, 3, 1, 0, 0, 0, DIGITS)),
            "CharactersToAvoid"
        );
        let only_digits = format!("{SPECIAL}{CAPITALS}{LOWER_CASE}");
        let s = random_string_with(&mut rng, 20, 0, 0, 0, 0, &only_digits).unwrap();
        assert!(s.chars().all(|c| c.is_ascii_digit()), "{s}");
    }
}
