//! The capability-limited host API during a real sync, pack stacking, and
//! components that want more than a rule may have.

use std::collections::HashMap;

use provisor::engine::Quiet;
use provisor::rules::{Fixture, HostEnv, OwnedRecords, OwnerTarget, Pack, Person};
use provisor_e2e::{engine_with, repo_root, start_sim, wasm_pack};
use serde_json::{Value, json};

/// A pack reads a mapping table (the organisation's wins over its own),
/// an Entra team and the manager chain, live from the store and the org;
/// its one ungranted call is refused, the mapping goes on, and every
/// refusal is audited with the pack, version, rule and what it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_use_the_host_api_within_their_capabilities() {
    let running = start_sim(30, 73).await;
    let sim = running.sim.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_with(
        &running,
        &repo_root().join("tests/fixtures/packs/host-api"),
        &dir.path().join("a.db"),
        |cfg| {
            cfg.rules.tables.insert(
                "regions".into(),
                [("Sales".to_string(), "Org Sales".to_string())].into(),
            );
        },
    )
    .await;
    let r = engine.sync_once(&Quiet).await.expect("sync");
    assert_eq!(r.failed, 0, "{:?}", r.failures);
    assert!(r.created > 10, "{r:?}");

    let (users, members) = engine.store.mirror().await.expect("mirror");
    let by_id: HashMap<&str, &provisor::model::EntraUser> =
        users.iter().map(|u| (u.id.as_str(), u)).collect();
    let groups = engine.store.mirror_groups().await.expect("groups");
    let sales_group = groups
        .iter()
        .find(|(_, n)| n.as_deref() == Some("SF-Sales"))
        .map(|(id, _)| id.clone())
        .expect("SF-Sales exists");
    let direct_sales = members
        .iter()
        .filter(|(g, _, t)| *g == sales_group && t == "user")
        .count();
    assert!(direct_sales > 0);

    let mut team_sizes = Vec::new();
    let mut checked = 0;
    for u in &users {
        let Some(upn) = u.user_principal_name.as_deref() else {
            continue;
        };
        let org = sim.salesforce();
        let found = org.users_where("FederationIdentifier", upn);
        let Some(sf) = found.first() else {
            continue;
        };
        let text = |k: &str| sf.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let want_title = match u.department.as_deref() {
            Some("Sales") => "Org Sales",
            _ => "unmapped",
        };
        assert_eq!(text("Title"), want_title, "{upn}: the org's table wins");
        let want_manager = u
            .manager_id
            .as_deref()
            .and_then(|m| by_id.get(m))
            .map_or("none".to_string(), |m| {
                m.display_name.clone().unwrap_or_else(|| "?".into())
            });
        assert_eq!(text("Department"), want_manager, "{upn}: nearest manager");
        let (size, queue) = text("EmployeeNumber")
            .split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .expect("n/q");
        assert_eq!(queue, "-1", "the queue lookup was refused");
        team_sizes.push(size.parse::<usize>().expect("a number"));
        checked += 1;
    }
    assert!(checked > 10);
    team_sizes.dedup();
    assert_eq!(team_sizes.len(), 1, "one team, one size: {team_sizes:?}");
    assert!(
        team_sizes[0] >= direct_sales,
        "{team_sizes:?} vs {direct_sales}"
    );

    let audit = engine.store.audit_rows(None).await.expect("audit");
    let refused: Vec<_> = audit
        .iter()
        .filter(|a| a.event == "rules.refused")
        .collect();
    assert_eq!(
        refused.len(),
        r.users_considered,
        "one refusal per user mapped"
    );
    for a in &refused {
        assert_eq!(
            a.detail,
            json!({"pack": "host-api@0.1.0", "rule": "map", "capability": "queue-members", "target": "Secret_Queue"})
        );
        assert!(a.entra_id.is_some());
    }
}

/// The round-robin component stacked on the gallery component: `map` is the
/// base pack's, `on-leave` is the override's, through the host API.
#[test]
fn round_robin_stacks_on_a_base_pack() {
    let rr = repo_root().join("rules/round-robin");
    assert!(
        rr.join("round_robin.wasm").is_file(),
        "run `cargo xtask plugins` first"
    );
    let base = Pack::load(&wasm_pack()).expect("base loads");
    let stack = Pack::load_stack(&[wasm_pack(), rr.clone()]).expect("stack loads");
    assert_eq!(
        stack.id(),
        "gallery-defaults-wasm@0.1.0 + round-robin@0.1.0"
    );
    let user: provisor::model::EntraUser = serde_json::from_value(json!({
        "id": "leaver-1",
        "userPrincipalName": "lee.aver@contoso.com",
        "accountEnabled": false,
        "surname": "Aver",
    }))
    .expect("user");
    assert_eq!(
        stack.map(&user, &["SF-Sales".into()]).expect("maps"),
        base.map(&user, &["SF-Sales".into()]).expect("maps"),
        "the override keeps the base mapping"
    );
    let person = |id: &str, name: &str, active: bool| Person {
        id: id.into(),
        salesforce_username: Some(name.into()),
        salesforce_active: Some(active),
        ..Default::default()
    };
    let fixture = Fixture {
        teams: [(
            "SF-Sales".to_string(),
            vec![
                person("p2", "bo@contoso.com", true),
                person("leaver-1", "lee.aver@contoso.com", true),
                person("p3", "al@contoso.com", true),
                person("p4", "old@contoso.com", false),
            ],
        )]
        .into(),
        ..Default::default()
    };
    let env = HostEnv::new(std::sync::Arc::new(fixture));
    let records = [
        OwnedRecords {
            object: "Opportunity".into(),
            count: 7,
            accounts: vec![],
        },
        OwnedRecords {
            object: "Lead".into(),
            count: 2,
            accounts: vec![],
        },
    ];
    let plan = stack
        .on_leave(&user, &[], &records, &env)
        .expect("on-leave");
    assert_eq!(plan.reassignments.len(), 2);
    assert_eq!(
        plan.reassignments[0].targets[0],
        OwnerTarget::RoundRobin(vec!["al@contoso.com".into(), "bo@contoso.com".into()])
    );
    assert_eq!(
        plan.reassignments[1].targets[0],
        OwnerTarget::Queue("Sales_Leads".into())
    );
    assert!(env.take_refusals().is_empty());

    // The same component without its team capability: refused, audited,
    // and it falls back to the manager.
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["round_robin.wasm", "pack.toml"] {
        std::fs::copy(rr.join(f), dir.path().join(f)).expect("copy");
    }
    let manifest = std::fs::read_to_string(dir.path().join("pack.toml")).expect("manifest");
    let stripped: String = manifest
        .lines()
        .filter(|l| !l.starts_with("team_members"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("pack.toml"), stripped).expect("write");
    let limited = Pack::load(dir.path()).expect("loads");
    let plan = limited
        .on_leave(&user, &[], &records[..1], &env)
        .expect("on-leave");
    assert_eq!(plan.reassignments[0].targets[0], OwnerTarget::Manager);
    let refusals = env.take_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        (
            refusals[0].pack.as_str(),
            refusals[0].rule.as_str(),
            refusals[0].capability.as_str(),
            refusals[0].target.as_str()
        ),
        ("round-robin@0.1.0", "on-leave", "team-members", "SF-Sales")
    );
}

/// A minimal component that imports one (empty) instance by name.
fn component_importing(name: &str) -> Vec<u8> {
    let mut out = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    // Type section: one instance type with no declarations.
    out.extend([0x07, 0x03, 0x01, 0x42, 0x00]);
    // Import section: the name, then "instance of type 0".
    let mut body = vec![0x01, 0x00, name.len() as u8];
    body.extend(name.as_bytes());
    body.extend([0x05, 0x00]);
    out.push(0x0a);
    out.push(body.len() as u8);
    out.extend(body);
    out
}

/// Components importing WASI filesystem or sockets are refused at load,
/// naming the pack and the import.
#[test]
fn components_importing_files_or_sockets_are_refused_at_load() {
    for import in [
        "wasi:filesystem/preopens@0.2.0",
        "wasi:sockets/tcp@0.2.0",
        "wasi:http/outgoing-handler@0.2.0",
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("pack.toml"),
            "[pack]\nname = \"greedy\"\nversion = \"1.0.0\"\nengine = \"wasm\"\nentry = \"g.wasm\"\ncontract = \"0.4\"\n",
        )
        .expect("manifest");
        std::fs::write(dir.path().join("g.wasm"), component_importing(import)).expect("wasm");
        let e = Pack::load(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("greedy@1.0.0") && e.contains(import) && e.contains("may not use"),
            "{import}: {e}"
        );
    }
}
