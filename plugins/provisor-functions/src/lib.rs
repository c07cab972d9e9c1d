//! Microsoft Entra ID attribute-mapping expression functions, in Rust.
//!
//! The semantics are those of Microsoft's "Reference for writing
//! expressions for attribute mappings in Microsoft Entra ID"
//! (<https://learn.microsoft.com/entra/identity/app-provisioning/functions-for-customizing-application-data>):
//! argument order, 1-based indexes, null handling and the documented
//! examples, which the tests reproduce. Where the reference is silent or
//! contradicts itself, the choice made is written on the function.
//!
//! Two ways in:
//!
//! * typed functions, one per Entra function ([`mid`], [`join`],
//!   [`date_add`], [`replace`], ...), for Rust rule components;
//! * [`call`] / [`call_with`], which take the Entra name
//!   (case-insensitive) and positional [`Value`] arguments, for the host to
//!   register every name in [`FUNCTIONS`] with a script engine in one loop.
//!
//! The crate is pure: no threads, files or network, so it builds for
//! `wasm32-wasip2`. `Guid` and `RandomString` take an injectable RNG
//! ([`guid_with`], [`random_string_with`], [`Env::rng`]); `Now` an
//! injectable clock ([`Env::now`]); `SelectUniqueValue` the host's
//! target-system lookup ([`Env::exists`]).
//!
//! # Where the reference is ambiguous
//!
//! * **Split** does not trim: `Split("PermissionSetOne, PermissionSetTwo",
//!   ",")` gives `" PermissionSetTwo"` with its space (.NET `String.Split`),
//!   although Microsoft's sample output shows it trimmed.
//! * **Replace**, form `[()\s-]+` on `+1 (999) 888-7777`: the page says
//!   `19998887777`; the `+` is not in the class, so the result is
//!   `+19998887777`.
//! * **Null sources**: documented only for Left and Word (`""`); other
//!   string transformations return null for a null source (see [`call_with`]).
//! * **IIF** with a null condition is an error ("the condition check
//!   fails"); **Item** with an index below 1 is an error ("Index 0
//!   shouldn't be used"); **Mid** clamps instead of failing.
//! * **DateDiff** follows VB.NET `DateDiff` (calendar years/months, Sundays
//!   crossed for `ww`, truncated elapsed time otherwise): the only reading
//!   that reproduces every row of Microsoft's table.
//! * **Dates without an offset** are UTC, and parsed offsets convert to UTC
//!   (the provisioning service's local time).
//! * **SingleAppRoleAssignment** with several roles takes the first.
//! * **Redact** is the identity; masking the logs is the host's job.
//! * Microsoft's list also has `AppRoleAssignmentsComplex` (SCIM role
//!   objects, not a value), which is not implemented.

mod dispatch;
mod error;
mod value;

pub mod date;
pub mod logic;
pub mod netfmt;
pub mod random;
pub mod text;

pub use date::{
    ENTRA_DATE_FORMAT, Interval, cdate, date_add, date_diff, date_from_num, format_date_time,
    format_date_time_at, now, num_from_date, parse_date, to_entra_string,
};
pub use dispatch::{Env, FUNCTIONS, call, call_with, canonical_name};
pub use error::FnError;
pub use logic::{
    REDACTED, bit_and, cbool, coalesce, count, cstr, ignore_flow_if_null_or_empty, iif, is_null,
    is_null_or_empty, is_present, is_string, item, not, redact, remove_duplicates,
    select_unique_value, single_app_role_assignment, switch,
};
pub use random::{guid, guid_with, random_string, random_string_with};
pub use text::{
    CompareType, ReplaceArgs, append, convert_to_base64, convert_to_utf8_hex, in_str, join, left,
    mid, normalize_diacritics, pcase, replace, replace_from_attribute, replace_regex,
    replace_regex_group, replace_template, replace_text, split, strip_spaces, to_lower, to_upper,
    word,
};
pub use value::Value;

#[cfg(test)]
mod tests;
