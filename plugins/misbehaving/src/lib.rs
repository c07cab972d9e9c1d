//! A rule component that misbehaves on purpose, for the host's sandbox
//! tests. `[settings.test] "mode"` picks the misbehaviour; any other value
//! maps normally. `"bad-settings"` makes `configure` refuse the settings;
//! `"configure-host"` asks for the clock in `configure`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "rule-pack",
});

use provisor::rules::types::Value;

struct Misbehaving;

/// `[settings.test] "mode"`, kept by `configure`.
static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    // black_box keeps the optimiser from turning this into a loop.
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

impl Guest for Misbehaving {
    fn configure(settings: Vec<SettingTable>) -> Result<(), String> {
        let mode = settings
            .iter()
            .find(|t| t.name == "test")
            .and_then(|t| t.entries.iter().find(|(k, _)| k == "mode"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if mode == "bad-settings" {
            return Err("[settings.test] mode \"bad-settings\" is refused on purpose".into());
        }
        if mode == "configure-host" {
            // The clock in configure would make what the instance keeps
            // depend on when it was made: the host refuses it.
            if let Err(provisor::rules::types::HostError::Refused(why)) =
                provisor::rules::host::now()
            {
                return Err(format!("the host refused the clock: {why}"));
            }
        }
        MODE.set(mode).map_err(|_| "configured twice".to_string())
    }

    fn scope(_user: EntraUser) -> Decision {
        Decision {
            in_scope: true,
            reason: String::new(),
        }
    }

    fn match_keys(_user: EntraUser) -> Vec<MatchKey> {
        Vec::new()
    }

    fn map(user: EntraUser, _base: Option<DesiredUser>) -> DesiredUser {
        let mode = MODE.get().map_or("", String::as_str);
        let mut fields = vec![("LastName".to_string(), Value::Text("x".into()))];
        match mode {
            "loop" => loop {
                std::hint::black_box(&user);
            },
            "recursion" => {
                recurse(0);
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserve without touching: grows linear memory fast
                    // and cheaply in fuel, so the memory cap is what stops it.
                    hoard.push(Vec::with_capacity(16 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "huge-output" => {
                // 5,000 fields: more than any Salesforce object has.
                for i in 0..5_000 {
                    fields.push((format!("F{i}__c"), Value::Text("y".repeat(16))));
                }
            }
            "panic" => panic!("misbehaving on purpose"),
            "print" => {
                println!("hello from the guest for {}", user.id);
                eprintln!("a warning from the guest");
            }
            "stateful" => {
                // Remembers how many users it has mapped: a result that
                // depends on earlier users.
                static SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                fields[0].1 = Value::Text(format!("seen {n}"));
            }
            _ => {}
        }
        DesiredUser {
            fields,
            profile: None,
            role: None,
            permission_sets: Vec::new(),
            permission_set_groups: Vec::new(),
            permission_set_licenses: Vec::new(),
            queues: Vec::new(),
            active: true,
        }
    }

    // Behaves: an empty plan, which defers to the pack below.
    fn on_leave(_user: EntraUser, _records: Vec<OwnedRecords>) -> ReassignmentPlan {
        ReassignmentPlan {
            reassignments: Vec::new(),
            deactivate_anyway: false,
        }
    }
}

export!(Misbehaving);
