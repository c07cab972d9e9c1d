//! Tests of `call`: every function by name, with Microsoft's examples
//! (learn.microsoft.com/entra/identity/app-provisioning/functions-for-customizing-application-data).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::{Env, FUNCTIONS, FnError, Value, call, call_with, canonical_name};

fn t(s: &str) -> Value {
    Value::from(s)
}

fn n(x: f64) -> Value {
    Value::Number(x)
}

const NULL: Value = Value::Null;

fn c(name: &str, args: &[Value]) -> Value {
    call(name, args).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fixed_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2021-07-02T15:33:38Z")
        .unwrap()
        .to_utc()
}

/// The 42 functions the brief lists, as Microsoft spells them.
const EXPECTED: &[&str] = &[
    "Append",
    "BitAnd",
    "CBool",
    "CDate",
    "Coalesce",
    "ConvertToBase64",
    "ConvertToUTF8Hex",
    "Count",
    "CStr",
    "DateAdd",
    "DateDiff",
    "DateFromNum",
    "FormatDateTime",
    "Guid",
    "IIF",
    "IgnoreFlowIfNullOrEmpty",
    "InStr",
    "IsNull",
    "IsNullOrEmpty",
    "IsPresent",
    "IsString",
    "Item",
    "Join",
    "Left",
    "Mid",
    "NormalizeDiacritics",
    "Not",
    "Now",
    "NumFromDate",
    "PCase",
    "RandomString",
    "Redact",
    "RemoveDuplicates",
    "Replace",
    "SelectUniqueValue",
    "SingleAppRoleAssignment",
    "Split",
    "StripSpaces",
    "Switch",
    "ToLower",
    "ToUpper",
    "Word",
];

/// Arguments every function accepts (for the coverage test).
fn sample_args(name: &str) -> Vec<Value> {
    match name {
        "Guid" | "Now" => vec![],
        "BitAnd" => vec![n(1.0), n(3.0)],
        "Item" | "Left" => vec![t("abc"), n(1.0)],
        "Append" | "Split" | "Join" | "InStr" => vec![t("a,b"), t(",")],
        "Coalesce" | "SelectUniqueValue" => vec![NULL, t("x")],
        "DateAdd" => vec![t("d"), n(1.0), t("2021-01-01")],
        "DateDiff" => vec![t("d"), t("2021-01-01"), t("2021-01-02")],
        "DateFromNum" => vec![n(0.0)],
        "CDate" | "NumFromDate" => vec![t("2021-01-01")],
        "FormatDateTime" => vec![t("2021-01-01"), NULL, t("yyyy-MM-dd"), t("d")],
        "IIF" => vec![Value::Bool(true), t("a"), t("b")],
        "Mid" => vec![t("abc"), n(1.0), n(2.0)],
        "Word" => vec![t("a b"), n(1.0), t(" ")],
        "RandomString" => vec![n(4.0), n(1.0), n(1.0), n(1.0), n(1.0)],
        "Replace" => vec![t("abc"), t("b"), NULL, NULL, t("x")],
        "Switch" => vec![t("a"), t("d"), t("a"), t("1")],
        "CBool" | "Not" => vec![t("True")],
        _ => vec![t("x")],
    }
}

#[test]
fn functions_and_call_cover_the_same_names() {
    let listed: BTreeSet<&str> = FUNCTIONS.iter().copied().collect();
    assert_eq!(listed.len(), FUNCTIONS.len(), "FUNCTIONS has duplicates");
    assert_eq!(listed, EXPECTED.iter().copied().collect::<BTreeSet<_>>());
    // Microsoft's list has 43; AppRoleAssignmentsComplex is left out (see lib.rs).
    assert_eq!(FUNCTIONS.len(), 42);
    let mut rng = StdRng::seed_from_u64(0);
    let mut exists = |_: &str| false;
    let mut env = Env {
        rng: &mut rng,
        now: fixed_now(),
        exists: Some(&mut exists),
    };
    for name in FUNCTIONS {
        let got = call_with(&mut env, name, &sample_args(name));
        assert!(got.is_ok(), "{name}: {got:?}");
        // And case-insensitively.
        assert!(
            call_with(&mut env, &name.to_lowercase(), &sample_args(name)).is_ok(),
            "{name}"
        );
        assert!(
            call_with(&mut env, &name.to_uppercase(), &sample_args(name)).is_ok(),
            "{name}"
        );
    }
    for unknown in ["AppRoleAssignmentsComplex", "Concat", "", "Append2"] {
        assert_eq!(
            call(unknown, &[]),
            Err(FnError::UnknownFunction {
                name: unknown.to_string()
            })
        );
    }
    assert_eq!(canonical_name("isnullorempty"), Some("IsNullOrEmpty"));
    assert_eq!(canonical_name("IsNullorEmpty"), Some("IsNullOrEmpty"));
}

#[test]
fn arity_is_checked() {
    let arity = |name: &str, args: &[Value]| match call(name, args) {
        Err(FnError::Arity {
            function,
            expected,
            got,
        }) => format!("{function} {expected} {got}"),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(arity("append", &[t("a")]), "Append 2 1");
    assert_eq!(arity("Guid", &[t("a")]), "Guid 0 1");
    assert_eq!(arity("Join", &[t(",")]), "Join 2 or more 1");
    assert_eq!(
        arity("SelectUniqueValue", &[t("a")]),
        "SelectUniqueValue 2 or more 1"
    );
    assert_eq!(arity("InStr", &vec![t("a"); 5]), "InStr 2 to 4 5");
    assert_eq!(
        arity("Switch", &vec![t("a"); 5]),
        "Switch an even number, at least 4, 5"
    );
    assert_eq!(
        arity("Switch", &vec![t("a"); 2]),
        "Switch an even number, at least 4, 2"
    );
    assert_eq!(arity("Replace", &vec![t("a"); 8]), "Replace 2 to 7 8");
    let e = call("Mid", &[t("a")]).unwrap_err().to_string();
    assert_eq!(e, "Mid expects 3 argument(s), got 1");
}

#[test]
fn doc_examples_through_call() {
    assert_eq!(
        c("Append", &[t("John.Doe@contoso.com"), t(".test")]),
        t("John.Doe@contoso.com.test")
    );
    assert_eq!(c("BitAnd", &[t("&HF"), t("&HF7")]), n(7.0));
    assert_eq!(c("BitAnd", &[n(15.0), n(247.0)]), n(7.0));
    assert_eq!(c("CBool", &[Value::Bool(true)]), Value::Bool(true));
    assert_eq!(
        c("CDate", &[t("2020-03-16-07:00")]),
        t("3/16/2020 7:00:00 AM")
    );
    assert_eq!(
        c("CDate", &[t("2021-06-30+08:00")]),
        t("6/29/2021 4:00:00 PM")
    );
    assert_eq!(
        c("CDate", &[t("2009-06-15T01:45:30-07:00")]),
        t("6/15/2009 8:45:30 AM")
    );
    assert_eq!(
        c("Coalesce", &[NULL, t("John.Doe@contoso.com")]),
        t("John.Doe@contoso.com")
    );
    assert_eq!(
        c("ConvertToBase64", &[t("Hello world!")]),
        t("SABlAGwAbABvACAAdwBvAHIAbABkACEA")
    );
    assert_eq!(
        c("ConvertToUTF8Hex", &[t("Hello world!")]),
        t("48656C6C6F20776F726C6421")
    );
    assert_eq!(
        c("CStr", &[t("cn=Joe,dc=contoso,dc=com")]),
        t("cn=Joe,dc=contoso,dc=com")
    );
    assert_eq!(
        c(
            "DateAdd",
            &[t("d"), n(7.0), c("CDate", &[t("2012-03-16-07:00")])]
        ),
        t("3/23/2012 7:00:00 AM")
    );
    assert_eq!(
        c("DateAdd", &[t("m"), t("10"), t("2012-03-16-07:00")]),
        t("1/16/2013 7:00:00 AM")
    );
    assert_eq!(
        c(
            "DateDiff",
            &[t("d"), t("2021-08-18+08:00"), t("2021-08-31+08:00")]
        ),
        n(13.0)
    );
    assert_eq!(
        c(
            "DateDiff",
            &[t("ww"), t("8/25/2021 5:41:18 PM"), t("2012-03-16-07:00")]
        ),
        n(-493.0)
    );
    assert_eq!(
        c("DateFromNum", &[t("129699324000000000")]),
        t("1/1/2012 11:00:00 PM")
    );
    assert_eq!(
        c("DateFromNum", &[n(129_699_324_000_000_000.0)]),
        t("1/1/2012 11:00:00 PM")
    );
    assert_eq!(
        c(
            "FormatDateTime",
            &[
                t("20150123105347.1Z"),
                NULL,
                t("yyyyMMddHHmmss.fZ"),
                t("yyyy-MM-dd")
            ]
        ),
        t("2015-01-23")
    );
    assert_eq!(c("InStr", &[t("The quick brown fox"), t("quick")]), n(5.0));
    assert_eq!(
        c(
            "InStr",
            &[t("repEated"), t("e"), n(3.0), t("vbBinaryCompare")]
        ),
        n(7.0)
    );
    assert_eq!(
        c(
            "InStr",
            &[t("repEated"), t("e"), n(3.0), t("vbTextCompare")]
        ),
        n(4.0)
    );
    assert_eq!(c("IsNull", &[NULL]), Value::Bool(true));
    assert_eq!(c("IsNullOrEmpty", &[t("")]), Value::Bool(true));
    assert_eq!(c("IsPresent", &[t("x")]), Value::Bool(true));
    let proxies = Value::from(vec!["SMTP:a@x", "smtp:b@x", "SMTP:a@x"]);
    assert_eq!(c("Item", &[proxies.clone(), n(1.0)]), t("SMTP:a@x"));
    assert_eq!(c("Count", std::slice::from_ref(&proxies)), n(3.0));
    assert_eq!(
        c("RemoveDuplicates", std::slice::from_ref(&proxies)),
        Value::from(vec!["SMTP:a@x", "smtp:b@x"])
    );
    assert_eq!(
        c("Join", &[t(", "), t(""), t("Doe"), t("John")]),
        t("Doe, John")
    );
    assert_eq!(c("Left", &[t("John Doe"), n(3.0)]), t("Joh"));
    assert_eq!(
        c(
            "Append",
            &[
                c("Mid", &[t("John"), n(1.0), n(3.0)]),
                c("Mid", &[t("Doe"), n(1.0), n(5.0)])
            ]
        ),
        t("JohDoe")
    );
    assert_eq!(c("NormalizeDiacritics", &[t("Zoë")]), t("Zoe"));
    assert_eq!(c("Not", &[t("True")]), Value::Bool(false));
    assert_eq!(
        c("PCase", &[t("PABLO GONSALVES (SECOND)")]),
        t("Pablo Gonsalves (Second)")
    );
    assert_eq!(
        c("PCase", &[t("PINTO-DE'SILVA"), t(" '-")]),
        t("Pinto-De'Silva")
    );
    assert_eq!(
        c("PCase", &[c("Join", &[t(" "), t("GREGORY"), t("JAMES")])]),
        t("Gregory James")
    );
    assert_eq!(
        c("Redact", &[t("StringToBeRedacted")]),
        t("StringToBeRedacted")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("Product Developer"),
                t("Product Developer"),
                NULL,
                NULL,
                t("Software Engineer"),
                NULL,
                NULL
            ]
        ),
        t("Software Engineer")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("jsmith"),
                t("<username>"),
                NULL,
                NULL,
                NULL,
                NULL,
                t("<username>@contoso.com")
            ]
        ),
        t("jsmith@contoso.com")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("+91 9998887777"),
                NULL,
                t(r"\+(?<isdCode>\d* )(?<phoneNumber>\d{10})"),
                NULL,
                t("${phoneNumber}"),
                NULL,
                NULL
            ]
        ),
        t("9998887777")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("545 Tremont Street"),
                NULL,
                t(r"(?<streetNumber>^\d*)"),
                t("streetNumber"),
                t("888"),
                NULL,
                NULL
            ]
        ),
        t("888 Tremont Street")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("jsmith@contoso.com"),
                NULL,
                t("(?<Suffix>@(.)*)"),
                t("Suffix"),
                t(""),
                NULL,
                NULL
            ]
        ),
        t("jsmith")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t(""),
                NULL,
                t(r"\+(?<isdCode>\d* )(?<phoneNumber>\d{10})"),
                t("phoneNumber"),
                NULL,
                t("+91 8887779999"),
                NULL
            ]
        ),
        t("8887779999")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("john_doe72"),
                NULL,
                t("[a-zA-Z_]*"),
                NULL,
                t(""),
                NULL,
                NULL
            ]
        ),
        t("72")
    );
    assert_eq!(
        c(
            "Replace",
            &[
                t("john.doe@contoso.com"),
                t("@contoso.com"),
                NULL,
                NULL,
                t("")
            ]
        ),
        t("john.doe")
    );
    assert_eq!(
        c("Split", &[t("PermissionSetOne, PermissionSetTwo"), t(",")]),
        Value::from(vec!["PermissionSetOne", " PermissionSetTwo"])
    );
    assert_eq!(c("StripSpaces", &[t("John Smith")]), t("JohnSmith"));
    assert_eq!(
        c(
            "Switch",
            &[
                t("QLD"),
                t("Australia/Sydney"),
                t("NSW"),
                t("Australia/Sydney"),
                t("QLD"),
                t("Australia/Brisbane"),
                t("SA"),
                t("Australia/Adelaide")
            ]
        ),
        t("Australia/Brisbane")
    );
    assert_eq!(
        c(
            "Switch",
            &[NULL, t("Default Value"), t("true"), t("1"), t(""), t("0")]
        ),
        t("0")
    );
    assert_eq!(
        c("Word", &[t("The quick brown fox"), n(3.0), t(" ")]),
        t("brown")
    );
    assert_eq!(
        c(
            "Word",
            &[t("This,string!has&many separators"), n(3.0), t(",!&#")]
        ),
        t("has")
    );
    // ToLower(Join("@", NormalizeDiacritics(StripSpaces(Join(".", [PreferredFirstName], [PreferredLastName]))), "contoso.com"))
    let upn = c(
        "ToLower",
        &[c(
            "Join",
            &[
                t("@"),
                c(
                    "NormalizeDiacritics",
                    &[c(
                        "StripSpaces",
                        &[c("Join", &[t("."), t("John"), t("Smith")])],
                    )],
                ),
                t("contoso.com"),
            ],
        )],
    );
    assert_eq!(upn, t("john.smith@contoso.com"));
    assert_eq!(c("ToUpper", &[t("john")]), t("JOHN"));
}

#[test]
fn num_from_date_workday_example() {
    // NumFromDate(Join("", FormatDateTime([ContractEndDate], ,"yyyy-MM-ddzzz", "yyyy-MM-dd"), " 23:59:59-08:00"))
    let day = c(
        "FormatDateTime",
        &[
            t("2020-12-31-08:00"),
            NULL,
            t("yyyy-MM-ddzzz"),
            t("yyyy-MM-dd"),
        ],
    );
    let joined = c("Join", &[t(""), day, t(" 23:59:59-08:00")]);
    assert_eq!(c("NumFromDate", &[joined]), t("132539615990000000"));
    // SuccessFactors variant.
    let day = c(
        "FormatDateTime",
        &[
            t("12/31/2020 11:59:59 PM"),
            NULL,
            t("M/d/yyyy hh:mm:ss tt"),
            t("yyyy-MM-dd"),
        ],
    );
    assert_eq!(day, t("2020-12-31"));
}

#[test]
fn object_id_example() {
    // Join("", 1000, Replace(ConvertToUTF8Hex([objectId]), , "[a-zA-Z_]*", , "", , )).
    // Microsoft's sample output was computed from a different object id than
    // the input shown, so this checks the rule, not their digits.
    let hex = c(
        "ConvertToUTF8Hex",
        &[t("00aa00aa-bb11-cc22-dd33-44ee44ee44ee")],
    );
    let digits = c(
        "Replace",
        &[hex, NULL, t("[a-zA-Z_]*"), NULL, t(""), NULL, NULL],
    );
    let id = c("Join", &[t(""), n(1000.0), digits]);
    let id = id.as_str().unwrap();
    assert!(
        id.starts_with("100030306161") && id.chars().all(|c| c.is_ascii_digit()),
        "{id}"
    );
}

#[test]
fn select_unique_value_needs_the_host() {
    let args = [t("John.Smith@contoso.com"), t("J.Smith@contoso.com"), NULL];
    assert!(matches!(
        call("SelectUniqueValue", &args),
        Err(FnError::HostRequired {
            function: "SelectUniqueValue",
            ..
        })
    ));
    let mut rng = StdRng::seed_from_u64(0);
    let mut exists = |v: &str| v == "John.Smith@contoso.com";
    let mut env = Env {
        rng: &mut rng,
        now: fixed_now(),
        exists: Some(&mut exists),
    };
    assert_eq!(
        call_with(&mut env, "SelectUniqueValue", &args).unwrap(),
        t("J.Smith@contoso.com")
    );
    let mut all = |_: &str| true;
    env.exists = Some(&mut all);
    assert_eq!(
        call_with(&mut env, "SelectUniqueValue", &args),
        Err(FnError::NoUniqueValue { candidates: 3 })
    );
}

#[test]
fn injected_clock_and_rng() {
    let run = |seed: u64| {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut env = Env {
            rng: &mut rng,
            now: fixed_now(),
            exists: None,
        };
        (
            call_with(&mut env, "Now", &[]).unwrap(),
            call_with(&mut env, "Guid", &[]).unwrap(),
            call_with(
                &mut env,
                "RandomString",
                &[n(10.0), n(2.0), n(2.0), n(2.0), n(1.0), t("?,")],
            )
            .unwrap(),
        )
    };
    let (now, g1, r1) = run(5);
    // Now() example value: "7/2/2021 3:33:38 PM".
    assert_eq!(now, t("7/2/2021 3:33:38 PM"));
    let (_, g2, r2) = run(5);
    assert_eq!((g1.clone(), r1.clone()), (g2, r2));
    assert_ne!(g1, run(6).1);
    assert_eq!(r1.as_str().unwrap().chars().count(), 10);
    // Un-injected forms work too.
    assert!(matches!(c("Now", &[]), Value::Text(_)));
    assert_ne!(c("Guid", &[]), c("Guid", &[]));
}

#[test]
fn null_edges() {
    for name in [
        "Append",
        "CDate",
        "ConvertToBase64",
        "ConvertToUTF8Hex",
        "CStr",
        "NormalizeDiacritics",
        "NumFromDate",
        "PCase",
        "Split",
        "StripSpaces",
        "ToLower",
        "ToUpper",
        "DateFromNum",
        "Redact",
        "RemoveDuplicates",
        "SingleAppRoleAssignment",
        "Coalesce",
    ] {
        let mut args = vec![NULL];
        if matches!(name, "Append" | "Split") {
            args.push(t(","));
        }
        assert_eq!(c(name, &args), NULL, "{name}(null)");
    }
    assert_eq!(c("Mid", &[NULL, n(1.0), n(1.0)]), NULL);
    assert_eq!(c("InStr", &[NULL, t("a")]), NULL);
    assert_eq!(c("BitAnd", &[NULL, n(1.0)]), NULL);
    assert_eq!(c("DateAdd", &[t("d"), n(1.0), NULL]), NULL);
    assert_eq!(c("DateDiff", &[t("d"), NULL, t("2021-01-01")]), NULL);
    assert_eq!(
        c("FormatDateTime", &[NULL, NULL, t("yyyy"), t("yyyy")]),
        NULL
    );
    assert_eq!(c("Replace", &[NULL, t("a"), NULL, NULL, t("b")]), NULL);
    assert_eq!(c("Item", &[NULL, n(1.0)]), NULL);
    // Documented: Left and Word give "" for a null string.
    assert_eq!(c("Left", &[NULL, n(3.0)]), t(""));
    assert_eq!(c("Word", &[NULL, n(1.0), t(" ")]), t(""));
    assert_eq!(c("Append", &[t("a"), NULL]), t("a"));
    assert_eq!(
        c(
            "Join",
            &[
                t(","),
                NULL,
                t("a"),
                Value::from(vec!["b", "c"]),
                n(1.0),
                Value::Bool(true)
            ]
        ),
        t("a,b,c,1,True")
    );
    assert_eq!(c("Join", &[NULL, NULL]), t(""));
    assert_eq!(c("Count", &[NULL]), n(0.0));
    assert_eq!(c("IsNull", &[Value::List(vec![])]), Value::Bool(true));
    assert_eq!(c("IsString", &[NULL]), Value::Bool(false));
    assert_eq!(c("Not", &[NULL]), Value::Bool(true));
    assert_eq!(c("CBool", &[NULL]), Value::Bool(false));
    assert_eq!(c("Switch", &[t("x"), NULL, t("a"), t("b")]), NULL);
    assert_eq!(c("IgnoreFlowIfNullOrEmpty", &[NULL]), Value::IgnoreFlow);
    assert_eq!(c("IgnoreFlowIfNullOrEmpty", &[t("")]), Value::IgnoreFlow);
    assert_eq!(c("IgnoreFlowIfNullOrEmpty", &[t("x")]), t("x"));
    // Empty strings are values, not nulls.
    assert_eq!(c("Append", &[t(""), t("x")]), t("x"));
    assert_eq!(c("ToUpper", &[t("")]), t(""));
    assert_eq!(c("Split", &[t(""), t(",")]), Value::from(vec![""]));
    // A single-valued list is its value.
    assert_eq!(c("ToUpper", &[Value::from(vec!["a"])]), t("A"));
}

#[test]
fn ignore_flow_survives_nesting() {
    // IgnoreFlowIfNullOrEmpty(Switch([prefix], "", "3443", "Dr.", "3444", "Prof.", "3445", "Prof. Dr."))
    let sw = c(
        "Switch",
        &[
            t("9999"),
            t(""),
            t("3443"),
            t("Dr."),
            t("3444"),
            t("Prof."),
            t("3445"),
            t("Prof. Dr."),
        ],
    );
    let v = c("IgnoreFlowIfNullOrEmpty", &[sw]);
    assert!(v.is_ignore_flow());
    assert_eq!(c("Append", &[v.clone(), t("x")]), Value::IgnoreFlow);
    assert_eq!(c("Join", &[t(","), t("a"), v]), Value::IgnoreFlow);
    let sw = c(
        "Switch",
        &[t("3444"), t(""), t("3443"), t("Dr."), t("3444"), t("Prof.")],
    );
    assert_eq!(c("IgnoreFlowIfNullOrEmpty", &[sw]), t("Prof."));
}

#[test]
fn argument_errors_name_function_and_argument() {
    let err = |name: &str, args: &[Value]| match call(name, args).unwrap_err() {
        FnError::BadArgument {
            function, argument, ..
        }
        | FnError::BadDate {
            function, argument, ..
        }
        | FnError::BadFormat {
            function, argument, ..
        }
        | FnError::BadInterval {
            function, argument, ..
        }
        | FnError::BadRegex {
            function, argument, ..
        } => format!("{function}.{argument}"),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        err("DateAdd", &[t("q"), n(1.0), t("2021-01-01")]),
        "DateAdd.interval"
    );
    assert_eq!(
        err("DateAdd", &[t("d"), t("one"), t("2021-01-01")]),
        "DateAdd.value"
    );
    assert_eq!(
        err("DateAdd", &[t("d"), n(1.0), t("someday")]),
        "DateAdd.dateTime"
    );
    assert_eq!(
        err("DateAdd", &[NULL, n(1.0), t("2021-01-01")]),
        "DateAdd.interval"
    );
    assert_eq!(
        err("DateDiff", &[t("d"), t("2021-01-01"), t("x")]),
        "DateDiff.date2"
    );
    assert_eq!(err("CDate", &[t("x")]), "CDate.expression");
    assert_eq!(err("NumFromDate", &[t("x")]), "NumFromDate.value");
    assert_eq!(err("DateFromNum", &[t("x")]), "DateFromNum.value");
    assert_eq!(
        err("FormatDateTime", &[t("2021"), NULL, t("yyyy"), NULL]),
        "FormatDateTime.outputFormat"
    );
    assert_eq!(
        err("FormatDateTime", &[t("2021"), NULL, t("yyyy"), t("'")]),
        "FormatDateTime.outputFormat"
    );
    assert_eq!(
        err("FormatDateTime", &[t("x"), NULL, t("yyyy"), t("yyyy")]),
        "FormatDateTime.source"
    );
    assert_eq!(
        err("Replace", &[t("a"), NULL, t("("), NULL, t("")]),
        "Replace.regexPattern"
    );
    assert_eq!(err("Left", &[t("a"), t("many")]), "Left.NumChars");
    assert_eq!(err("Left", &[t("a"), NULL]), "Left.NumChars");
    assert_eq!(err("Item", &[t("a"), n(0.0)]), "Item.index");
    assert_eq!(
        err("InStr", &[t("a"), t("a"), n(1.0), t("vbWhatever")]),
        "InStr.compareType"
    );
    assert_eq!(err("IIF", &[NULL, t("a"), t("b")]), "IIF.condition");
    assert_eq!(
        err("RandomString", &[n(300.0), n(0.0), n(0.0), n(0.0), n(0.0)]),
        "RandomString.Length"
    );
    assert_eq!(
        err("ToUpper", &[Value::from(vec!["a", "b"])]),
        "ToUpper.source"
    );
    assert_eq!(err("BitAnd", &[Value::Bool(true), n(1.0)]), "BitAnd.value1");
}
