//! The Rhai pack and the WASM component must want the same Salesforce user
//! for every user of a varied fixture; the Rhai output is also pinned by a
//! golden file (`UPDATE_GOLDEN=1` rewrites it after an intended change).

use provisor::model::{DesiredUser, EntraUser};
use provisor::rules::Pack;
use provisor_e2e::{repo_root, rhai_pack, wasm_pack};
use serde_json::Value;

fn fixture() -> Vec<(EntraUser, Vec<String>)> {
    let path = repo_root().join("tests/fixtures/parity-users.json");
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    let items: Vec<Value> = serde_json::from_str(&text).expect("fixture is JSON");
    items
        .into_iter()
        .map(|i| {
            let user: EntraUser = serde_json::from_value(i["user"].clone()).expect("fixture user");
            let groups: Vec<String> =
                serde_json::from_value(i["groups"].clone()).expect("fixture groups");
            (user, groups)
        })
        .collect()
}

#[test]
fn rhai_and_wasm_packs_want_identical_users() {
    let users = fixture();
    assert!(users.len() >= 200, "fixture has {} users", users.len());
    let rhai = Pack::load(&rhai_pack()).expect("rhai pack loads");
    let wasm = Pack::load(&wasm_pack()).expect("wasm pack loads");
    let mut rhai_out: Vec<DesiredUser> = Vec::new();
    for (u, g) in &users {
        let a = rhai.map(u, g).unwrap_or_else(|e| panic!("rhai: {e}"));
        let b = wasm.map(u, g).unwrap_or_else(|e| panic!("wasm: {e}"));
        assert_eq!(
            a, b,
            "packs disagree for {} ({:?})",
            u.id, u.user_principal_name
        );
        rhai_out.push(a);
    }
    // The fixture really is varied: these cases must all occur.
    let alias = |d: &DesiredUser| d.fields.get("Alias").cloned();
    assert!(rhai_out.iter().any(|d| !d.active), "some users inactive");
    assert!(
        rhai_out
            .iter()
            .any(|d| d.profile.as_deref() == Some("System Administrator"))
    );
    assert!(
        rhai_out
            .iter()
            .any(|d| d.fields.get("LastName").and_then(|v| v.as_text()) == Some(".")),
        "missing surnames default to '.'"
    );
    assert!(rhai_out.iter().any(|d| matches!(alias(d), Some(provisor::model::FieldValue::Text(a)) if a.chars().count() == 8 && a.len() > 8)), "non-ASCII aliases cut by characters");

    let golden_path = repo_root().join("tests/fixtures/parity-desired.golden.json");
    let actual = serde_json::to_string_pretty(&rhai_out).expect("serialises") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &actual).expect("golden written");
    }
    let golden = std::fs::read_to_string(&golden_path)
        .expect("golden file exists (UPDATE_GOLDEN=1 creates it)");
    assert!(
        golden == actual,
        "desired users differ from {}; rerun with UPDATE_GOLDEN=1 if the change is intended",
        golden_path.display()
    );
}

/// Both gallery packs hand a leaver's open records to the manager, object
/// by object, and refuse objects neither declared.
#[test]
fn rhai_and_wasm_packs_plan_leavers_alike() {
    use provisor::rules::{HostEnv, OwnedRecords};
    let rhai = Pack::load(&rhai_pack()).expect("rhai pack loads");
    let wasm = Pack::load(&wasm_pack()).expect("wasm pack loads");
    let (user, groups) = fixture().remove(0);
    let records: Vec<OwnedRecords> = ["Opportunity", "Lead", "Case"]
        .iter()
        .map(|o| OwnedRecords {
            object: (*o).into(),
            count: 4,
            accounts: vec![],
        })
        .collect();
    let env = HostEnv::empty();
    let a = rhai.on_leave(&user, &groups, &records, &env).expect("rhai");
    let b = wasm.on_leave(&user, &groups, &records, &env).expect("wasm");
    assert_eq!(a, b);
    assert_eq!(a.reassignments.len(), 3);
    let custom = [OwnedRecords {
        object: "Project__c".into(),
        count: 1,
        accounts: vec![],
    }];
    assert!(rhai.on_leave(&user, &groups, &custom, &env).is_err());
    assert!(wasm.on_leave(&user, &groups, &custom, &env).is_err());
    assert_eq!(env.take_refusals().len(), 2);
}
