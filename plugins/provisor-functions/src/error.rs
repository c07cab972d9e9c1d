//! Errors, each naming the Entra function and the argument at fault.

use thiserror::Error;

/// Why an Entra function could not produce a value.
///
/// `function` is the Entra spelling (`DateAdd`, `Replace`, ...); `argument`
/// the parameter name as Microsoft's reference writes it (`interval`,
/// `regexPattern`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FnError {
    #[error("unknown function `{name}`")]
    UnknownFunction { name: String },

    #[error("{function} expects {expected} argument(s), got {got}")]
    Arity {
        function: &'static str,
        expected: &'static str,
        got: usize,
    },

    #[error("{function}: argument `{argument}`: {message}")]
    BadArgument {
        function: &'static str,
        argument: &'static str,
        message: String,
    },

    #[error("{function}: argument `{argument}`: `{value}` is not a date/time{}", detail(.message))]
    BadDate {
        function: &'static str,
        argument: &'static str,
        value: String,
        message: String,
    },

    #[error("{function}: argument `{argument}`: bad format string `{format}`: {message}")]
    BadFormat {
        function: &'static str,
        argument: &'static str,
        format: String,
        message: String,
    },

    #[error(
        "{function}: argument `{argument}`: unknown interval `{interval}` (expected yyyy, m, d, ww, h, n or s)"
    )]
    BadInterval {
        function: &'static str,
        argument: &'static str,
        interval: String,
    },

    #[error("{function}: argument `{argument}`: bad regular expression: {message}")]
    BadRegex {
        function: &'static str,
        argument: &'static str,
        message: String,
    },

    /// `SelectUniqueValue`: every candidate already exists in the target.
    /// Entra escrows the entry and logs the reason.
    #[error("SelectUniqueValue: all {candidates} candidate value(s) already exist in the target")]
    NoUniqueValue { candidates: usize },

    /// The function needs something only the host has (for
    /// `SelectUniqueValue`, the target-system lookup): use
    /// [`crate::call_with`] with [`crate::Env::exists`] set.
    #[error("{function} needs the host: {message}")]
    HostRequired {
        function: &'static str,
        message: &'static str,
    },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

pub(crate) fn bad_arg(
    function: &'static str,
    argument: &'static str,
    message: impl Into<String>,
) -> FnError {
    FnError::BadArgument {
        function,
        argument,
        message: message.into(),
    }
}

pub(crate) fn bad_date(
    function: &'static str,
    argument: &'static str,
    value: &str,
    message: impl Into<String>,
) -> FnError {
    FnError::BadDate {
        function,
        argument,
        value: value.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_function_and_argument() {
        let e = FnError::BadInterval {
            function: "DateAdd",
            argument: "interval",
            interval: "q".into(),
        };
        assert!(e.to_string().starts_with("DateAdd: argument `interval`"));
        let e = bad_date("CDate", "expression", "nope", "");
        assert_eq!(
            e.to_string(),
            "CDate: argument `expression`: `nope` is not a date/time"
        );
    }
}
