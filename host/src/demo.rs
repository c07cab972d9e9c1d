//! `provisor demo`: the whole product in one command, no accounts. Starts
//! the emulators in-process, runs the initial sync, then a joiner, a mover,
//! a leaver and a restore through incremental syncs, once with the Rhai
//! pack and once with the WASM component, and shows that both agree.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value, json};

use crate::cli::{BarObserver, engine_from_config, find_rules_dir, print_summary};
use crate::config::Config;
use crate::engine::{CycleReport, Engine, Quiet};
use crate::sim::{RunningSim, Sim, SimOptions, seed};

/// Options of `provisor demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Users in the generated tenant.
    #[arg(long, default_value_t = 600)]
    users: usize,
    /// Seed of the generated tenant.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory holding the rule packs.
    #[arg(long, default_value = "rules")]
    rules: PathBuf,
    /// Directory for the demo's state databases (default: a temporary one).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// What one demo run leaves in Salesforce, keyed by Username.
pub type OrgState = BTreeMap<String, Map<String, Value>>;

/// The scripted changes of the demo, applied to a tenant.
pub struct Story {
    pub joiner: String,
    pub mover: String,
    pub leaver: String,
}

/// Picks the demo's mover and leaver and adds the joiner.
pub fn joiner_mover_leaver(sim: &Sim) -> anyhow::Result<Story> {
    let mut t = sim.graph();
    let sales = t
        .group_by_name("SF-Sales")
        .map(|g| g.id.clone())
        .context("tenant has no SF-Sales group")?;
    let pick = |dept: &str, skip: usize| -> Option<String> {
        t.users()
            .filter(|u| {
                u.removed.is_none()
                    && u.props.get("department").and_then(Value::as_str) == Some(dept)
                    && u.props.get("accountEnabled") == Some(&Value::Bool(true))
                    && u.props.get("userType").and_then(Value::as_str) == Some("Member")
            })
            .nth(skip)
            .map(|u| u.id.clone())
    };
    let mover = pick("Finance", 3).context("no Finance user to move")?;
    let leaver = pick("Support", 5).context("no Support user to leave")?;
    let joiner = "0a1b2c3d-0000-4000-8000-00000000a01b".to_string();
    let props = json!({
        "userPrincipalName": format!("new.joiner@{}", seed::DOMAIN), "mail": format!("new.joiner@{}", seed::DOMAIN),
        "givenName": "Nova", "surname": "Joiner", "displayName": "Nova Joiner", "department": "Sales",
        "jobTitle": "Account Executive", "userType": "Member", "accountEnabled": true, "preferredLanguage": "de-DE",
        "businessPhones": ["+49 30 555 0100"]
    });
    let Value::Object(props) = props else {
        bail!("joiner properties are not an object")
    };
    t.create_user(&joiner, props)?;
    t.set_membership(&sales, &joiner, true)?;
    // Mover: Finance -> Sales, gains the SF-Sales group (Chatter Free -> Standard User).
    let mut change = Map::new();
    change.insert("department".into(), json!("Sales"));
    change.insert("jobTitle".into(), json!("Sales Manager"));
    t.update_user(&mover, change)?;
    t.set_membership(&sales, &mover, true)?;
    // Leaver: deleted in Entra.
    t.soft_delete_user(&leaver)?;
    Ok(Story {
        joiner,
        mover,
        leaver,
    })
}

/// Salesforce users as the demo compares them.
pub fn org_state(sim: &Sim) -> OrgState {
    let org = sim.salesforce();
    org.rows("User")
        .map(|u| {
            let mut u = u.clone();
            // Profiles compare by name; ids and timestamps differ per run.
            let profile = u
                .get("ProfileId")
                .and_then(Value::as_str)
                .and_then(|p| org.get("Profile", p))
                .and_then(|p| p.get("Name").cloned());
            u.insert("Profile".into(), profile.unwrap_or(Value::Null));
            for volatile in [
                "Id",
                "CreatedDate",
                "LastModifiedDate",
                "CommunityNickname",
                "ProfileId",
                "ManagerId",
            ] {
                u.remove(volatile);
            }
            (
                u.get("Username")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                u,
            )
        })
        .collect()
}

/// Engine for a sim and a pack, with its own store file.
pub async fn demo_engine(
    running: &RunningSim,
    pack: &std::path::Path,
    store: &std::path::Path,
) -> anyhow::Result<Engine> {
    let url = format!("sqlite://{}?mode=rwc", store.display());
    let text = running.config_toml(&pack.display().to_string(), &url);
    let cfg: Config = Config::parse(&text).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    engine_from_config(&cfg).await
}

async fn one_run(
    args: &DemoArgs,
    label: &str,
    pack: &std::path::Path,
    store: &std::path::Path,
    verbose: bool,
) -> anyhow::Result<OrgState> {
    let sim = Sim::new(SimOptions {
        users: args.users,
        seed: args.seed,
        ..Default::default()
    });
    let running = sim
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the emulators on loopback")?;
    let engine = demo_engine(&running, pack, store).await?;
    println!(
        "\n=== {label}: pack {} ({:?} engine) ===",
        engine.pack.get().id(),
        engine.pack.get().info.engine
    );
    if verbose {
        let t = sim.graph();
        let users: Vec<_> = t.users().collect();
        let disabled = users
            .iter()
            .filter(|u| u.props.get("accountEnabled") == Some(&Value::Bool(false)))
            .count();
        let guests = users
            .iter()
            .filter(|u| u.props.get("userType").and_then(Value::as_str) == Some("Guest"))
            .count();
        println!(
            "Emulated tenant at {}: {} users ({} disabled, {} guests) in {} departments, {} groups",
            running.base_url(),
            users.len(),
            disabled,
            guests,
            seed::DEPARTMENTS.len(),
            t.groups().count()
        );
        drop(t);
        println!(
            "Emulated org: {} users already exist (integration user, admins, people to match)\n",
            sim.salesforce().rows("User").count()
        );
    }

    println!("Initial sync:");
    let bar = BarObserver::new();
    let report = engine
        .sync_once(bar.as_ref())
        .await
        .context("initial sync failed")?;
    bar.finish();
    print_summary(&report);

    let writes_before = sim.stats().sf_write_calls;
    let noop = engine
        .sync_once(&Quiet)
        .await
        .context("no-op sync failed")?;
    let noop_writes = sim.stats().sf_write_calls - writes_before;
    println!(
        "\nSecond sync with no Entra changes: {} changes read, {} Salesforce writes.",
        noop.entra_changes, noop_writes
    );
    if noop_writes != 0 {
        bail!("a sync without Entra changes wrote to Salesforce {noop_writes} times");
    }

    let story = joiner_mover_leaver(&sim)?;
    println!(
        "\nIn Entra: a joiner ({}), a mover (Finance -> Sales), a leaver (deleted). Incremental sync from the stored deltaLink:",
        story.joiner
    );
    let r1 = engine
        .sync_once(&Quiet)
        .await
        .context("incremental sync failed")?;
    show(&r1, verbose);

    sim.graph().restore_user(&story.leaver)?;
    println!("\nIn Entra: the deleted user is restored. Incremental sync:");
    let r2 = engine
        .sync_once(&Quiet)
        .await
        .context("incremental sync failed")?;
    show(&r2, verbose);

    if verbose {
        println!("\nAudit trail (tail):");
        for row in engine.store.audit_rows(Some(8)).await? {
            println!("  {}", row.render());
        }
        let all = engine.store.audit_rows(None).await?;
        match crate::audit::verify(&all) {
            Ok(()) => println!("  hash chain intact over {} rows", all.len()),
            Err(seq) => bail!("audit chain broken at row {seq}"),
        }
    }
    let s = sim.stats();
    println!(
        "\nSalesforce API: {} calls, {} write calls, {} records written; Graph: {} calls.",
        s.sf_api_calls, s.sf_write_calls, s.sf_records_written, s.graph_calls
    );
    Ok(org_state(&sim))
}

fn show(r: &CycleReport, verbose: bool) {
    if verbose {
        println!("{}", r.plan.render());
    }
    print_summary(r);
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rules = find_rules_dir(&args.rules).with_context(|| {
        format!(
            "cannot find the rule packs directory {}",
            args.rules.display()
        )
    })?;
    let rhai = rules.join("gallery-defaults");
    let wasm = rules.join("gallery-defaults-wasm");
    if !wasm.join("gallery_defaults.wasm").is_file() {
        bail!(
            "the WASM rule component is not built ({} is missing); run `cargo xtask demo`, or `cargo xtask plugins` first",
            wasm.join("gallery_defaults.wasm").display()
        );
    }
    let dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("provisor-demo-{}", uuid::Uuid::new_v4().simple()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!(
        "provisor demo: Entra ID -> rules -> plan -> Salesforce, against in-process emulators."
    );
    let a = one_run(&args, "Run 1", &rhai, &dir.join("rhai.db"), true).await?;
    let b = one_run(&args, "Run 2", &wasm, &dir.join("wasm.db"), false).await?;
    if a != b {
        let diff: Vec<&String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .take(5)
            .collect();
        bail!(
            "the Rhai and WASM packs left different Salesforce states (first differences: {diff:?})"
        );
    }
    println!(
        "\nThe Rhai pack and the WASM component left identical Salesforce states ({} users).",
        a.len()
    );
    println!("State databases: {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
