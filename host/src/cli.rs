//! The command line. Library errors become `anyhow` here, at the edge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::engine::{CycleReport, Engine, Observer, Progress};
use crate::entra::EntraClient;
use crate::http::{self, RetryPolicy};
use crate::rules::Pack;
use crate::salesforce::SalesforceClient;
use crate::sim::{self, Faults, Sim, SimOptions};
use crate::store::Store;

/// Keeps Salesforce users in lockstep with Microsoft Entra ID.
#[derive(Debug, Parser)]
#[command(name = "provisor", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. `info`, `provisor=debug`); also PROVISOR_LOG.
    #[arg(long, global = true, env = "PROVISOR_LOG", default_value = "warn")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in-process against the emulators, no accounts needed.
    Demo(crate::demo::DemoArgs),
    /// Serve the Entra ID / Graph and Salesforce emulators on one port.
    Sim(SimArgs),
    /// Read Entra changes, run the rules and apply the plan to Salesforce.
    Sync(SyncArgs),
    /// Benchmarks against the emulators (use a release build).
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
    /// Check auth, API version, the integration user's rights and every
    /// profile, role and permission set the rule pack references.
    TestConnection {
        #[arg(long)]
        config: PathBuf,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Audit trail helpers.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Rule pack tools: check, run its test cases, evaluate one user.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Users parked after failing `sync.max_attempts` times. A later change
    /// in Entra re-arms them.
    Deadletter {
        #[command(subcommand)]
        command: DeadletterCommand,
    },
    /// A dry run: read Entra, run the rules and show what a sync would do
    /// in Salesforce, without writing to it.
    Plan {
        #[arg(long)]
        config: PathBuf,
        /// Write the plan here (JSON with a digest) for `provisor apply`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the plan as JSON instead of the readable rendering.
        #[arg(long)]
        json: bool,
    },
    /// Apply a plan written by `provisor plan --out`, only if planning now
    /// gives exactly that plan (same Entra state, same Salesforce state).
    Apply {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        plan: PathBuf,
    },
    /// Users whose match to Salesforce waits for a decision.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Run one user through scope, match, map, plan and apply now, and
    /// print each step's outcome.
    Provision {
        #[arg(long)]
        config: PathBuf,
        /// The Entra object id or userPrincipalName.
        user: String,
    },
    /// What provisor knows of one user, from its store alone: the Entra
    /// mirror, groups, link and the last known Salesforce state.
    Show {
        #[arg(long)]
        config: PathBuf,
        /// The Entra object id or userPrincipalName.
        user: String,
    },
    /// Compare every managed user with the rules and report the drift
    /// (JSON, CSV and Markdown); `--fix` corrects it.
    Reconcile {
        #[arg(long)]
        config: PathBuf,
        /// Write drift.json, drift.csv and drift.md here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Correct the drift now (a normal cycle, safety guard included).
        #[arg(long)]
        fix: bool,
    },
    /// Active Salesforce users linked to no Entra user, with their licence.
    Orphans {
        #[arg(long)]
        config: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where things stand, from the store alone: the last cycle, who
    /// waits and why, leavers frozen but still active (holding a seat) with
    /// what blocks their deactivation, and the seats freed.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Seats freed over this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leavers between their freeze and their deactivation.
    Leavers {
        #[command(subcommand)]
        command: LeaversCommand,
    },
    /// Deactivations held back by the accidental-deletion threshold.
    Staged {
        #[arg(long)]
        config: PathBuf,
    },
    /// Let staged deactivations go ahead on the next cycle (audited).
    Approve {
        #[arg(long)]
        config: PathBuf,
        /// The batch (the cycle that staged it, see `provisor staged`); all
        /// pending batches when absent.
        batch: Option<String>,
    },
    /// Refuse staged deactivations: those users stay active (audited).
    Reject {
        #[arg(long)]
        config: PathBuf,
        /// The batch; all pending batches when absent.
        batch: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Load a pack as the engine would: manifest, contract version,
    /// settings, compilation and the exports the contract requires.
    Check {
        /// The pack directory (holding pack.toml); several are checked
        /// stacked in order (base first, then overrides).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the pack's test cases (JSON files under PATH/tests/).
    Test {
        path: PathBuf,
        /// Record what the pack returns as the expectations (golden files).
        #[arg(long)]
        bless: bool,
    },
    /// Map one Entra user and print the desired Salesforce user as JSON
    /// (or, with --records, where the leaver's records would go).
    Eval {
        /// Pack directories, stacked in order (base first).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The user as Graph returns it (camelCase JSON), or @FILE.
        #[arg(long)]
        user: String,
        /// A group (display name) the user is a member of; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// What the host API answers (JSON as a test case's `host`), or @FILE.
        #[arg(long)]
        host: Option<String>,
        /// The leaver's open records (JSON array of {object, count,
        /// accounts}), or @FILE: runs `on-leave` instead of `map`.
        #[arg(long)]
        records: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ReviewCommand {
    /// Open and decided reviews.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// One review, with the evidence (the candidates' User records).
    Show {
        #[arg(long)]
        config: PathBuf,
        /// The Entra user (object id).
        user: String,
    },
    /// Link the user to this Salesforce user; the next cycle manages it.
    Link {
        #[arg(long)]
        config: PathBuf,
        user: String,
        /// The Salesforce User Id.
        sf_id: String,
    },
    /// None of the candidates is this user: the next cycle creates one.
    Reject {
        #[arg(long)]
        config: PathBuf,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum LeaversCommand {
    /// Try blocked deactivations at the next cycle, whatever their
    /// back-off (after fixing the org configuration that blocked them).
    Retry {
        #[arg(long)]
        config: PathBuf,
        /// The Entra object id or userPrincipalName; every blocked leaver
        /// when absent.
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeadletterCommand {
    /// List parked users with their last error.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Plan a parked user again on the next cycle, with fresh attempts.
    Retry {
        #[arg(long)]
        config: PathBuf,
        /// The Entra user (object id).
        user: String,
    },
    /// Forget a parked user; it is planned again only when Entra changes it.
    Drop {
        #[arg(long)]
        config: PathBuf,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file: syntax, unknown keys (named with their line),
    /// URLs, the rule pack and that secrets resolve.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print the last N audit rows.
    Tail {
        #[arg(long)]
        config: PathBuf,
        #[arg(short, default_value_t = 20)]
        n: i64,
    },
    /// Verify the audit hash chain.
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8990")]
    listen: SocketAddr,
    /// Users in the generated tenant.
    #[arg(long, default_value_t = 40)]
    users: usize,
    /// Seed of the generated tenant and of random faults.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Latency added to every API request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of enabled members (0.0 to 1.0) who already have a Salesforce
    /// user to match, besides the five the org always has.
    #[arg(long, default_value_t = 0.0)]
    existing_share: f64,
    /// Share of API requests that fail with 503 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Share of Graph requests throttled with 429 and `Retry-After`.
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// `Retry-After` seconds on injected 429s.
    #[arg(long, default_value_t = 1.0)]
    retry_after_secs: f64,
    /// Lifetime of Graph deltaLinks; older ones answer 400 syncStateNotFound.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    delta_token_ttl_secs: u64,
    /// Answer expired deltaLinks with 410 Gone rather than 400 syncStateNotFound.
    #[arg(long)]
    expired_delta_410: bool,
    /// Allow the Salesforce username-password OAuth flow (blocked by default).
    #[arg(long)]
    sf_allow_password_flow: bool,
    /// Allow Salesforce SOAP login() (disabled by default).
    #[arg(long)]
    sf_allow_soap_login: bool,
    /// Salesforce daily API request allocation; beyond it calls answer
    /// 403 REQUEST_LIMIT_EXCEEDED.
    #[arg(long, default_value_t = 1_000_000)]
    sf_daily_limit: u64,
    /// Serve HTTPS with a certificate generated at start-up (for client
    /// libraries that insist on TLS).
    #[arg(long)]
    tls: bool,
    /// With --tls: where to write the certificate (PEM) for clients to trust.
    #[arg(long, default_value = "provisor-sim-cert.pem")]
    tls_cert_out: PathBuf,
    /// Print a provisor config pointing at the emulators and exit.
    #[arg(long)]
    print_config: bool,
    /// Rule pack the printed config uses.
    #[arg(long, default_value = "rules/gallery-defaults")]
    pack: String,
    /// Store URL the printed config uses.
    #[arg(long, default_value = "sqlite://provisor.db?mode=rwc")]
    store: String,
}

#[derive(Debug, Args)]
struct SyncArgs {
    /// Configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Run one cycle and exit (otherwise cycles repeat every --interval).
    #[arg(long)]
    once: bool,
    /// Seconds between cycles when not --once.
    #[arg(long, default_value_t = 300)]
    interval: u64,
    /// Print the cycle report as JSON.
    #[arg(long)]
    json: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Sim(args) => run_sim(args).await,
        Command::Sync(args) => run_sync(args).await,
        Command::Bench { command } => crate::bench::run(command).await,
        Command::TestConnection { config } => {
            let cfg = Config::load(&config)?;
            let engine = engine_from_config(&cfg).await?;
            let checks = crate::connection::test_connection(&engine).await;
            for c in &checks {
                println!(
                    "{} {:<60} {}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
            Ok(if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let cfg = Config::load(&file)?;
            cfg.validate()
                .with_context(|| format!("{} is not usable", file.display()))?;
            Pack::load_stack(&cfg.rules.dirs())?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { command } => run_rules(command),
        Command::Deadletter {
            command: DeadletterCommand::List { config },
        } => {
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let dead = store.dead_letters().await?;
            if dead.is_empty() {
                println!("no parked users");
            }
            for d in dead {
                println!("{}  attempts={}  {}", d.entra_id, d.attempts, d.reason);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { config, out, json } => {
            let cfg = Config::load(&config)?;
            let engine = engine_from_config(&cfg).await?;
            let plan = engine.dry_run(&LogObserver).await?;
            let previews = engine.preview_leavers(&plan).await?;
            if json {
                // The plan's own keys, and where leavers' records would go.
                let mut v = serde_json::to_value(&plan)?;
                v["reassignments"] = serde_json::to_value(&previews)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", plan.render());
                let upn = |id: &str| {
                    plan.actions
                        .iter()
                        .find(|a| a.entra_id == id)
                        .and_then(|a| a.upn.clone())
                        .unwrap_or_else(|| id.to_string())
                };
                print!("{}", crate::engine::render_previews(&previews, &upn));
            }
            if let Some(out) = out {
                std::fs::write(&out, plan.to_file())
                    .with_context(|| format!("cannot write the plan to {}", out.display()))?;
                eprintln!("plan written to {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { config, plan } => {
            let cfg = Config::load(&config)?;
            let text = std::fs::read_to_string(&plan)
                .with_context(|| format!("cannot read the plan {}", plan.display()))?;
            let approved =
                crate::engine::plan::Plan::from_file(&plan.display().to_string(), &text)?;
            let engine = engine_from_config(&cfg).await?;
            let report = engine.apply_approved(&approved, &LogObserver).await?;
            print_summary(&report);
            Ok(ExitCode::SUCCESS)
        }
        Command::Review { command } => run_review(command).await,
        Command::Provision { config, user } => {
            let cfg = Config::load(&config)?;
            let engine = engine_from_config(&cfg).await?;
            let p = engine.provision(&user, &LogObserver).await?;
            let r = &p.report;
            if let Some(u) = &p.user {
                println!(
                    "user:    {} ({})",
                    u.id,
                    u.user_principal_name.as_deref().unwrap_or("no UPN")
                );
                println!("groups:  {}", p.groups.join(", "));
            }
            match &p.configuration_scope {
                Some(why) => println!("scope:   out (configuration: {why})"),
                None => println!("scope:   in (configuration)"),
            }
            match &p.evaluation {
                Some(Ok(e)) => {
                    if let Some(d) = &e.scope {
                        println!(
                            "rules:   {} by the pack{}",
                            if d.in_scope {
                                "in scope"
                            } else {
                                "out of scope"
                            },
                            if d.reason.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", d.reason)
                            }
                        );
                    }
                    let keys: Vec<String> = e
                        .keys
                        .iter()
                        .map(|k| format!("{}={}", k.field, k.value))
                        .collect();
                    println!("match:   keys {}", keys.join(", "));
                    println!("map:     {}", serde_json::to_string(&e.desired)?);
                }
                Some(Err(e)) => println!("rules:   failed: {e}"),
                None => {}
            }
            if r.plan.actions.is_empty() {
                println!("plan:    nothing to do");
            } else {
                println!("plan:");
                for line in r.plan.render().lines() {
                    println!("  {line}");
                }
            }
            for w in &r.waiting_for {
                println!("held:    {w}");
            }
            for f in &r.failures {
                println!("failed:  {f}");
            }
            println!(
                "apply:   created {}, updated {}, deactivated {}, reactivated {}, linked {}, failed {}",
                r.created, r.updated, r.deactivated, r.reactivated, r.linked, r.failed
            );
            Ok(if r.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Reconcile { config, out, fix } => {
            let cfg = Config::load(&config)?;
            let engine = engine_from_config(&cfg).await?;
            let report = engine.reconcile(fix, &LogObserver).await?;
            print!("{}", report.to_markdown());
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                for (name, text) in [
                    ("drift.json", serde_json::to_string_pretty(&report)? + "\n"),
                    ("drift.csv", report.to_csv()),
                    ("drift.md", report.to_markdown()),
                ] {
                    let path = dir.join(name);
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                eprintln!("drift report written to {}", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, days, json } => {
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let status = crate::status::Status::read(&store, days).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Leavers {
            command: LeaversCommand::Retry { config, user },
        } => {
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let id = match &user {
                Some(u) => Some(store.find_user(u).await?.with_context(|| {
                    format!("no Entra user {u:?} in the store (object id or userPrincipalName)")
                })?),
                None => None,
            };
            let n = store.retry_blocked(id.as_deref()).await?;
            store
                .append_audit(
                    "operator",
                    &[crate::audit::AuditEvent {
                        event: "leaver.retry_requested".into(),
                        entra_id: id.clone(),
                        sf_id: None,
                        detail: serde_json::json!({"by": "operator", "leavers": n}),
                    }],
                )
                .await?;
            println!("{n} blocked deactivation(s) will be tried at the next cycle");
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { config, user } => {
            let cfg = Config::load(&config)?;
            let store = crate::store::Store::open_existing(&cfg.store.url).await?;
            let Some(id) = store.find_user(&user).await? else {
                bail!("no Entra user {user:?} in the store (object id or userPrincipalName)");
            };
            let one = store.users_in(std::slice::from_ref(&id)).await?;
            let Some(d) = one.first() else {
                bail!("Entra user {id} vanished from the store while reading it");
            };
            println!(
                "user:       {} ({})",
                d.user.id,
                d.user.user_principal_name.as_deref().unwrap_or("no UPN")
            );
            println!("groups:     {}", d.groups.join(", "));
            println!("entra:      {}", serde_json::to_string_pretty(&d.user)?);
            match store.links_of(std::slice::from_ref(&id)).await?.get(&id) {
                Some(sf) => println!("linked to:  Salesforce user {sf}"),
                None => println!("linked to:  no Salesforce user"),
            }
            match store.sf_user_of(&id).await? {
                Some((sf, data, at)) => println!(
                    "salesforce: {sf} as last seen or set at {at}:\n{}",
                    serde_json::to_string_pretty(&data)?
                ),
                None => println!("salesforce: nothing known yet"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Orphans { config, json } => {
            let cfg = Config::load(&config)?;
            let engine = engine_from_config(&cfg).await?;
            let orphans = engine.orphans().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&orphans)?);
            } else {
                for o in &orphans {
                    println!(
                        "{}  {}  {}  {}",
                        o.id,
                        o.username,
                        o.profile.as_deref().unwrap_or("-"),
                        o.licence.as_deref().unwrap_or("-")
                    );
                }
                println!("{} orphans", orphans.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deadletter {
            command: command @ (DeadletterCommand::Retry { .. } | DeadletterCommand::Drop { .. }),
        } => {
            let (retry, config, user) = match command {
                DeadletterCommand::Retry { config, user } => (true, config, user),
                DeadletterCommand::Drop { config, user } => (false, config, user),
                DeadletterCommand::List { .. } => unreachable!("matched above"),
            };
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            store.release_dead_letter(&user, retry).await?;
            let event = if retry {
                "deadletter.retried"
            } else {
                "deadletter.dropped"
            };
            store
                .append_audit(
                    "operator",
                    &[crate::audit::AuditEvent {
                        event: event.into(),
                        entra_id: Some(user.clone()),
                        sf_id: None,
                        detail: serde_json::json!({"by": "operator"}),
                    }],
                )
                .await?;
            println!(
                "{user}: {}",
                if retry {
                    "planned again on the next cycle"
                } else {
                    "dropped from the dead-letter list"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Staged { config } => {
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let staged = store.staged_deactivations().await?;
            if staged.is_empty() {
                println!("no staged deactivations");
            }
            for s in staged {
                println!(
                    "{}  {}  {}  {}  {}",
                    s.batch,
                    s.status,
                    s.entra_id,
                    s.sf_id.as_deref().unwrap_or("-"),
                    s.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        command @ (Command::Approve { .. } | Command::Reject { .. }) => {
            let (approve, config, batch) = match command {
                Command::Approve { config, batch } => (true, config, batch),
                Command::Reject { config, batch } => (false, config, batch),
                _ => unreachable!("matched above"),
            };
            let cfg = Config::load(&config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let n = store.decide_staged(batch.as_deref(), approve).await?;
            let event = if approve {
                "deactivations.approved"
            } else {
                "deactivations.rejected"
            };
            store
                .append_audit(
                    "operator",
                    &[crate::audit::AuditEvent {
                        event: event.into(),
                        entra_id: None,
                        sf_id: None,
                        detail: serde_json::json!({"batch": batch, "users": n}),
                    }],
                )
                .await?;
            println!(
                "{n} staged deactivations {}",
                if approve {
                    "approved: they run on the next cycle"
                } else {
                    "rejected: those users stay active"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let (config, n) = match &command {
                AuditCommand::Tail { config, n } => (config, Some(*n)),
                AuditCommand::Verify { config } => (config, None),
            };
            let cfg = Config::load(config)?;
            let store = Store::open_existing(&cfg.store.url).await?;
            let rows = store.audit_rows(n).await?;
            if let AuditCommand::Verify { .. } = command {
                match crate::audit::verify(&rows) {
                    Ok(()) => println!("audit chain intact: {} rows", rows.len()),
                    Err(seq) => bail!("audit chain broken at row {seq}"),
                }
            } else {
                for r in rows {
                    println!("{}", r.render());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_review(command: ReviewCommand) -> anyhow::Result<ExitCode> {
    let config = match &command {
        ReviewCommand::List { config }
        | ReviewCommand::Show { config, .. }
        | ReviewCommand::Link { config, .. }
        | ReviewCommand::Reject { config, .. } => config.clone(),
    };
    let cfg = Config::load(&config)?;
    let store = Store::open_existing(&cfg.store.url).await?;
    let audit = |event: &str, user: &str, sf: Option<&str>| crate::audit::AuditEvent {
        event: event.into(),
        entra_id: Some(user.into()),
        sf_id: sf.map(str::to_string),
        detail: serde_json::json!({"by": "operator"}),
    };
    match command {
        ReviewCommand::List { .. } => {
            let reviews = store.reviews().await?;
            if reviews.is_empty() {
                println!("no reviews");
            }
            for r in reviews {
                println!(
                    "{}  {}  candidates={}  {}",
                    r.entra_id,
                    r.status,
                    r.candidates.join(","),
                    r.reason
                );
            }
        }
        ReviewCommand::Show { user, .. } => {
            let r = store.review(&user).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if !r.candidates.is_empty() {
                let engine = engine_from_config(&cfg).await?;
                let ids: Vec<String> = r
                    .candidates
                    .iter()
                    .map(|c| crate::salesforce::soql_quote(c))
                    .collect();
                let rows = engine
                    .salesforce
                    .query(&format!(
                        "SELECT Id, Username, Email, FederationIdentifier, EmployeeNumber, IsActive, LastLoginDate FROM User WHERE Id IN ({})",
                        ids.join(", ")
                    ))
                    .await?;
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
        }
        ReviewCommand::Link { user, sf_id, .. } => {
            store.decide_review(&user, Some(&sf_id)).await?;
            store
                .append_audit("operator", &[audit("review.linked", &user, Some(&sf_id))])
                .await?;
            println!("{user} linked to {sf_id}: the next cycle manages that account");
        }
        ReviewCommand::Reject { user, .. } => {
            store.decide_review(&user, None).await?;
            store
                .append_audit("operator", &[audit("review.rejected", &user, None)])
                .await?;
            println!("{user}: candidates rejected; the next cycle creates a new account");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_rules(command: RulesCommand) -> anyhow::Result<ExitCode> {
    use crate::rules::cases::{self, Outcome};
    match command {
        RulesCommand::Check { paths } => {
            let pack = Pack::load_stack(&paths)?;
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            println!(
                "{}: ok ({} pack {}, contract {})",
                shown.join(" + "),
                match pack.info.engine {
                    crate::rules::EngineKind::Rhai => "Rhai",
                    crate::rules::EngineKind::Wasm => "WASM",
                },
                pack.id(),
                pack.info.contract
            );
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Test { path, bless } => {
            let pack = Pack::load(&path)?;
            let results = cases::run(&pack, bless)?;
            let mut failed = 0;
            for r in &results {
                match &r.outcome {
                    Outcome::Pass => println!("ok      {}", r.name),
                    Outcome::Blessed => println!("blessed {}", r.name),
                    Outcome::Fail(diffs) => {
                        failed += 1;
                        println!("FAIL    {}", r.name);
                        for d in diffs {
                            println!("          {d}");
                        }
                    }
                    Outcome::Error(e) => {
                        failed += 1;
                        println!("ERROR   {}: {e}", r.name);
                    }
                }
            }
            println!(
                "{}: {} cases, {} passed, {failed} failed",
                pack.id(),
                results.len(),
                results.len() - failed
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCommand::Eval {
            paths,
            user,
            groups,
            host,
            records,
        } => {
            let pack = Pack::load_stack(&paths)?;
            let arg = |flag: &str, v: String| -> anyhow::Result<String> {
                match v.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read the {flag} file {file}")),
                    None => Ok(v),
                }
            };
            let user: crate::model::EntraUser = serde_json::from_str(&arg("--user", user)?)
                .context(
                    "--user is not an Entra user as Graph returns it (camelCase JSON with an `id`)",
                )?;
            let fixture: crate::rules::Fixture = match host {
                Some(h) => serde_json::from_str(&arg("--host", h)?)
                    .context("--host is not a host fixture (a test case's `host` object)")?,
                None => crate::rules::Fixture::default(),
            };
            let env = crate::rules::HostEnv::new(std::sync::Arc::new(fixture));
            let out = match records {
                Some(r) => {
                    let records: Vec<crate::rules::OwnedRecords> =
                        serde_json::from_str(&arg("--records", r)?).context(
                            "--records is not a list of {\"object\", \"count\", \"accounts\"}",
                        )?;
                    serde_json::to_string_pretty(&pack.on_leave(&user, &groups, &records, &env)?)?
                }
                None => serde_json::to_string_pretty(&pack.map_with(&user, &groups, &env)?)?,
            };
            for r in env.take_refusals() {
                eprintln!(
                    "refused: {} `{}` asked for {} {:?}",
                    r.pack, r.rule, r.capability, r.target
                );
            }
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_sim(a: SimArgs) -> anyhow::Result<ExitCode> {
    let base = format!("http://{}", a.listen);
    if a.print_config {
        // An absolute pack path keeps the printed config valid wherever it is saved.
        let pack =
            std::fs::canonicalize(&a.pack).map_or(a.pack.clone(), |p| p.display().to_string());
        print!("{}", sim::config_toml(&base, &pack, &a.store));
        return Ok(ExitCode::SUCCESS);
    }
    if !(0.0..=1.0).contains(&a.fail_rate) {
        bail!(
            "--fail-rate must be between 0.0 and 1.0, not {}",
            a.fail_rate
        );
    }
    if !(0.0..=1.0).contains(&a.existing_share) {
        bail!(
            "--existing-share {} is not between 0.0 and 1.0",
            a.existing_share
        );
    }
    let sim = Sim::new(SimOptions {
        users: a.users,
        seed: a.seed,
        existing_share: a.existing_share,
        faults: Faults {
            latency_ms: a.latency_ms,
            fail_rate: a.fail_rate,
            throttle_rate: a.throttle_rate,
            throttle_retry_after_secs: a.retry_after_secs,
            ..Default::default()
        },
    });
    sim.graph().delta_token_ttl = Duration::from_secs(a.delta_token_ttl_secs);
    sim.graph().expired_token_gone = a.expired_delta_410;
    sim.salesforce().password_flow_allowed = a.sf_allow_password_flow;
    sim.salesforce().soap_login_allowed = a.sf_allow_soap_login;
    sim.salesforce().daily_api_limit = a.sf_daily_limit;
    let running = if a.tls {
        let cert = sim::SimCertificate::generate().context("cannot generate a certificate")?;
        std::fs::write(&a.tls_cert_out, &cert.cert_pem).with_context(|| {
            format!(
                "cannot write the certificate to {}",
                a.tls_cert_out.display()
            )
        })?;
        sim.serve_tls(a.listen, &cert).await
    } else {
        sim.serve(a.listen).await
    }
    .with_context(|| format!("cannot listen on {}", a.listen))?;
    let base = running.base_url();
    let tls_note = if a.tls {
        format!(
            "  TLS: self-signed certificate for localhost and 127.0.0.1 written to {}; trust it with `[tls] ca_files = [\"{}\"]`.\n",
            a.tls_cert_out.display(),
            a.tls_cert_out.display()
        )
    } else {
        String::new()
    };
    let banner = format!(
        "provisor sim listening on {base}\n  Entra token:  POST {base}/{tenant}/oauth2/v2.0/token\n    client_id={eid} client_secret={esec}\n  Graph:        GET  {base}/v1.0/users/delta, /v1.0/groups/delta\n  Salesforce:   POST {base}/services/oauth2/token (client_credentials)\n    client_id={sid} client_secret={ssec}\n  Admin:        {base}/_sim/stats, /_sim/faults, /_sim/graph/users ...\n  Tenant: {users} users. `provisor sim --print-config --listen {listen}` prints a ready config.\n{tls_note}",
        tenant = sim::creds::TENANT,
        eid = sim::creds::ENTRA_CLIENT_ID,
        esec = sim::creds::ENTRA_CLIENT_SECRET,
        sid = sim::creds::SF_CLIENT_ID,
        ssec = sim::creds::SF_CLIENT_SECRET,
        users = a.users,
        listen = a.listen,
    );
    // A closed stdout (a parent that stopped reading) must not stop the sim.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the engine a config describes.
pub async fn engine_from_config(cfg: &Config) -> anyhow::Result<Engine> {
    cfg.validate()?;
    let client = http::client_trusting(&cfg.tls.ca_files)?;
    let entra_credential = match (&cfg.entra.client_secret, &cfg.entra.client_certificate) {
        (Some(s), _) => crate::entra::Credential::Secret(s.resolve("entra.client_secret")?),
        (None, Some(c)) => crate::entra::Credential::from_pem(
            c.certificate
                .resolve("entra.client_certificate.certificate")?
                .expose(),
            c.private_key
                .resolve("entra.client_certificate.private_key")?
                .expose(),
        )?,
        (None, None) => {
            bail!("entra: a credential is required (client_secret or client_certificate)")
        }
    };
    let sf_credentials = crate::salesforce::Credentials::from_config(&cfg.salesforce)?;
    let pack = Pack::load_stack(&cfg.rules.dirs())?;
    let store = Store::open(&cfg.store.url).await?;
    let retry = RetryPolicy {
        attempts: cfg.sync.retries,
        base: Duration::from_millis(cfg.sync.retry_base_ms),
        ..RetryPolicy::default()
    };
    Ok(Engine {
        entra: std::sync::Arc::new(EntraClient::new(
            client.clone(),
            cfg.entra.clone(),
            entra_credential,
            retry.clone(),
        )),
        salesforce: std::sync::Arc::new(SalesforceClient::new(
            client,
            cfg.salesforce.clone(),
            sf_credentials,
            retry,
        )),
        store,
        pack: std::sync::Arc::new(crate::rules::PackSlot::stacked(cfg.rules.dirs(), pack)),
        org_tables: std::sync::Arc::new(cfg.rules.tables.clone()),
        metrics: std::sync::Arc::default(),
        safety: cfg.safety.clone(),
        cfg: cfg.sync.clone(),
        scope: crate::engine::scope::Scope::new(&cfg.entra.scope).context("entra.scope")?,
    })
}

async fn run_sync(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(&a.config)?;
    let engine = engine_from_config(&cfg).await?;
    if a.once {
        return match engine.sync_once(&LogObserver).await {
            Ok(report) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_summary(&report);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(anyhow::Error::new(e).context(
                "sync cycle failed; the deltaLink was not advanced past unjournaled changes",
            )),
        };
    }
    if let Some(addr) = &cfg.metrics.listen {
        let bound = engine
            .metrics
            .clone()
            .serve(addr)
            .await
            .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
        eprintln!("metrics: http://{bound}/metrics");
    }
    let n = &cfg.entra.notifications;
    let mut trigger = if n.enabled {
        let state = n
            .client_state
            .as_ref()
            .context("entra.notifications.client_state is required")?
            .resolve("entra.notifications.client_state")?;
        let t = crate::entra::notify::FastTrigger::start(
            &engine.entra,
            &n.listen,
            n.public_url.as_deref(),
            state,
        )
        .await
        .context("cannot set up change notifications")?;
        eprintln!(
            "change notifications: receiver on {}, {} subscriptions",
            t.receiver.addr,
            t.subscriptions.len()
        );
        Some(t)
    } else {
        None
    };
    let json = a.json;
    engine
        .run_forever(
            Duration::from_secs(a.interval),
            trigger.as_mut(),
            |r| match r {
                Ok(report) if json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
                Ok(report) => print_summary(&report),
                // One cycle fails; the service does not. Nothing unjournaled
                // was recorded as done, so the next cycle picks up from here.
                Err(e) => {
                    tracing::error!(error = %e, "sync cycle failed; retrying at the next interval");
                    eprintln!("error: sync cycle failed: {e}");
                }
            },
        )
        .await;
    Ok(ExitCode::SUCCESS)
}

/// One-line-per-count summary for people.
pub fn print_summary(r: &CycleReport) {
    println!(
        "cycle {}: {} Entra changes in {} pages, {} users considered\n  created {} | updated {} | frozen {} | deactivated {} | reactivated {} | unfrozen {} | linked {} | unchanged {} | failed {} (parked {})",
        r.cycle,
        r.entra_changes,
        r.delta_pages,
        r.users_considered,
        r.created,
        r.updated,
        r.frozen,
        r.deactivated,
        r.reactivated,
        r.unfrozen,
        r.linked,
        r.unchanged,
        r.failed,
        r.parked
    );
    if r.waiting > 0 {
        println!(
            "  waiting for a licence: {} (retried every cycle)",
            r.waiting
        );
        for w in r.waiting_for.iter().take(5) {
            println!("    {w}");
        }
    }
    for f in r.failures.iter().take(10) {
        println!("  failed: {f}");
    }
    if r.failures.len() > 10 {
        println!("  ... and {} more failures", r.failures.len() - 10);
    }
}

/// Progress to the log.
pub struct LogObserver;

impl Observer for LogObserver {
    fn on(&self, p: Progress) {
        tracing::info!(?p, "progress");
    }
}

/// Progress as a terminal bar (stderr).
pub struct BarObserver {
    bar: indicatif::ProgressBar,
}

impl BarObserver {
    /// A bar on stderr; hidden when stderr is not a terminal.
    pub fn new() -> Arc<Self> {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("  {spinner} {msg:<32} [{bar:30}] {pos}/{len}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Arc::new(Self { bar })
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for BarObserver {
    fn on(&self, p: Progress) {
        match p {
            Progress::Page { resource, items } => {
                self.bar.inc_length(items as u64);
                self.bar.inc(items as u64);
                self.bar.set_message(format!("reading Entra {resource}"));
            }
            Progress::Planning { users } => {
                self.bar.set_message(format!("planning {users} users"));
            }
            Progress::Applying { writes } => {
                self.bar.set_position(0);
                self.bar.set_length(writes as u64);
                self.bar.set_message("writing to Salesforce");
            }
            Progress::Applied { n } => self.bar.inc(n as u64),
        }
    }
}

/// Finds a directory under `rules/`, from the working directory or above
/// the executable (so `target/debug/provisor demo` works from anywhere).
pub fn find_rules_dir(hint: &Path) -> Option<PathBuf> {
    if hint.is_dir() {
        return Some(hint.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().map(|a| a.join(hint)).find(|p| p.is_dir())
}
