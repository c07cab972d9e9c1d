//! `provisor bench`: whole-path measurements against the emulators, with
//! the emulator in its own process so the figures are the host's alone.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::cli::{engine_from_config, find_rules_dir};
use crate::config::Config;
use crate::engine::Quiet;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Initial read of a large tenant (users and groups delta) into the
    /// mirror, against the Graph emulator with injected latency.
    EntraRead(EntraReadArgs),
    /// Initial load of a large tenant into an empty org: every user
    /// created with one permission set, counting Salesforce API calls at
    /// the emulator against the Collections bound.
    SalesforceCreate(SalesforceCreateArgs),
    /// The initial sync of a large tenant (groups, ~10% of users already in
    /// Salesforce) end to end, against the physical-limit model, then an
    /// incremental cycle with nothing changed, then a naive one-call-per-
    /// user baseline.
    Sync(SyncArgs),
    /// Rule evaluation throughput on one core: the gallery-defaults mapping
    /// as a Rhai script and as a WASM component, over generated users.
    Rules(RulesArgs),
    /// Leaver latency: the engine polls on its interval while users are
    /// disabled in Entra one after another; for each, the time from the
    /// disable to the freeze and to the deactivation (after its open
    /// records moved to the manager), p50 / p99 / max.
    Leavers(LeaversArgs),
    /// One leaver owning many open Opportunities: the cycle that moves
    /// them to the manager, through Bulk API 2.0 and through Collections
    /// (Salesforce calls by kind, wall time).
    Reassign(ReassignArgs),
}

/// Options of `provisor bench reassign`.
#[derive(Debug, Args)]
pub struct ReassignArgs {
    /// Open Opportunities the leaver owns.
    #[arg(long, default_value_t = 5_000)]
    records: usize,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
}

/// Options of `provisor bench leavers`.
#[derive(Debug, Args)]
pub struct LeaversArgs {
    /// Users in the emulated tenant.
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    /// Users disabled, one after another.
    #[arg(long, default_value_t = 200)]
    leavers: usize,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// The engine's poll interval (no change notifications).
    #[arg(long, default_value_t = 2_000)]
    poll_ms: u64,
    /// Time between two disables.
    #[arg(long, default_value_t = 50)]
    spacing_ms: u64,
    /// Open Opportunities each leaver owns (they move to the manager).
    #[arg(long, default_value_t = 2)]
    records: usize,
}

/// Options of `provisor bench rules`.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Users mapped per engine.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Only this engine (`rhai` or `wasm`); both by default.
    #[arg(long, value_parser = ["rhai", "wasm"])]
    engine: Option<String>,
    /// Times over the users, for a longer run under a profiler.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

/// Options of `provisor bench sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Users in the emulated tenant.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Share of enabled members who already have a Salesforce user.
    #[arg(long, default_value_t = 0.1)]
    existing_share: f64,
    /// Users in the naive baseline run (one Salesforce call per user, one
    /// at a time; at 100,000 users and 50 ms it would take hours), 0 to skip.
    #[arg(long, default_value_t = 2_000)]
    naive_users: usize,
    /// `sync.plan_chunk_users` (default: the configuration's default).
    #[arg(long)]
    plan_chunk_users: Option<usize>,
}

/// Options of `provisor bench salesforce-create`.
#[derive(Debug, Args)]
pub struct SalesforceCreateArgs {
    /// Users in the emulated tenant.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// The permission set every user gets.
    #[arg(long, default_value = "Sales_Cloud_User")]
    permission_set: String,
}

/// Options of `provisor bench entra-read`.
#[derive(Debug, Args)]
pub struct EntraReadArgs {
    /// Users in the emulated tenant.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// `Prefer: odata.maxpagesize`.
    #[arg(long, default_value_t = 999)]
    page_size: u32,
}

struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

/// Resident set size of this process now (Linux `VmRSS`), in MiB.
fn rss_mib() -> Option<f64> {
    proc_status_mib("VmRSS:")
}

fn proc_status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::EntraRead(a) => entra_read(a).await,
        BenchCommand::SalesforceCreate(a) => salesforce_create(a).await,
        BenchCommand::Sync(a) => sync(a).await,
        BenchCommand::Rules(a) => rules(a),
        BenchCommand::Leavers(a) => leavers(a).await,
        BenchCommand::Reassign(a) => reassign(a).await,
    }
}

/// Starts `provisor sim` in its own process; returns it, its address and
/// how long it took to generate the tenant and listen.
fn spawn_sim(users: usize, latency_ms: u64) -> anyhow::Result<(SimProcess, String, Duration)> {
    spawn_sim_with(users, latency_ms, &[])
}

/// [`spawn_sim`] with further `provisor sim` arguments.
fn spawn_sim_with(
    users: usize,
    latency_ms: u64,
    extra: &[&str],
) -> anyhow::Result<(SimProcess, String, Duration)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free loopback port")?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe().context("cannot find the provisor binary")?;
    let spawned = Instant::now();
    let mut child = Command::new(&exe)
        .args([
            "sim",
            "--listen",
            &listen,
            "--users",
            &users.to_string(),
            "--latency-ms",
            &latency_ms.to_string(),
            "--seed",
            "1",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start `provisor sim`")?;
    let stdout = child.stdout.take().context("no sim stdout")?;
    let sim = SimProcess(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("the sim did not start")?;
    if !line.contains(&listen) {
        bail!("unexpected sim output: {line}");
    }
    let generated = spawned.elapsed();
    // Keep draining the sim's banner so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Ok((sim, listen, generated))
}

/// A config for the emulator at `listen` with the pack at `pack` and a
/// fresh SQLite store in `dir`.
/// A fresh directory for one run's store and packs.
fn scratch_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("provisor-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `rules/gallery-defaults`, found from the working directory or the binary.
fn gallery_pack() -> anyhow::Result<std::path::PathBuf> {
    find_rules_dir(std::path::Path::new("rules/gallery-defaults"))
        .context("cannot find rules/gallery-defaults")
}

fn bench_config(
    listen: &str,
    pack: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let store = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    Config::parse(&crate::sim::config_toml(
        &format!("http://{listen}"),
        &pack.display().to_string(),
        &store,
    ))
    .map_err(|e| anyhow::anyhow!(e))
}

async fn entra_read(a: EntraReadArgs) -> anyhow::Result<ExitCode> {
    let (sim, listen, generated) = spawn_sim(a.users, a.latency_ms)?;

    let dir = scratch_dir()?;
    let pack = gallery_pack()?;
    let mut cfg = bench_config(&listen, &pack, &dir)?;
    cfg.entra.page_size = a.page_size;
    let engine = engine_from_config(&cfg).await?;
    // The physical limit: the same pages fetched back to back with nothing
    // done but reading each page's nextLink.
    let baseline_started = Instant::now();
    let mut url = engine.entra.users_start(&[]);
    let mut bare_pages = 0usize;
    loop {
        let page = engine
            .entra
            .page(&url)
            .await
            .context("baseline fetch failed")?;
        bare_pages += 1;
        match page.next_link {
            Some(n) if page.delta_link.is_none() => url = n,
            _ => break,
        }
    }
    let baseline = baseline_started.elapsed();
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let users = engine
        .read_resource("users", &Quiet)
        .await
        .context("the users read failed")?;
    let users_wall = started.elapsed();
    let groups_started = Instant::now();
    let groups = engine
        .read_resource("groups", &Quiet)
        .await
        .context("the groups read failed")?;
    let groups_wall = groups_started.elapsed();
    let rss_after = peak_rss_mib();
    drop(sim);
    let (mirror, members) = engine.store.mirror().await?;
    let _ = std::fs::remove_dir_all(&dir);

    let user_pages = a.users.div_ceil(a.page_size as usize);
    let model_ms = user_pages as f64 * a.latency_ms as f64;
    let ratio = users_wall.as_secs_f64() * 1000.0 / model_ms;
    println!(
        "provisor bench entra-read: {} users, {} ms latency, page size {}",
        a.users, a.latency_ms, a.page_size
    );
    println!(
        "  emulator generated the tenant and listened after {:.2} s (separate process)",
        generated.as_secs_f64()
    );
    println!(
        "  users/delta: {} users in {} pages, {:.2} s; model ceil({}/{}) = {} sequential round-trips x {} ms = {:.2} s; ratio {:.3} (target <= 1.2)",
        mirror.len(),
        users.delta_pages,
        users_wall.as_secs_f64(),
        a.users,
        a.page_size,
        user_pages,
        a.latency_ms,
        model_ms / 1000.0,
        ratio
    );
    println!(
        "  baseline: the same {bare_pages} pages fetched back to back without parsing or storing: {:.2} s ({:.1} ms per round-trip); full read / baseline = {:.3}",
        baseline.as_secs_f64(),
        baseline.as_secs_f64() * 1000.0 / bare_pages as f64,
        users_wall.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  groups/delta: {} memberships in {} pages (large groups arrive in slices of 500 members), {:.2} s",
        members.len(),
        groups.delta_pages,
        groups_wall.as_secs_f64()
    );
    match (rss_before, rss_after) {
        (Some(b), Some(p)) => {
            println!("  host peak RSS {p:.1} MiB (before the read {b:.1} MiB; target < 150 MiB)")
        }
        _ => println!("  host peak RSS unavailable (no /proc/self/status)"),
    }
    if mirror.len() != a.users {
        bail!(
            "the mirror holds {} users, the tenant {}",
            mirror.len(),
            a.users
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the emulator's call counters.
async fn sim_stats(listen: &str) -> anyhow::Result<crate::sim::Stats> {
    reqwest::get(format!("http://{listen}/_sim/stats"))
        .await
        .context("cannot read the emulator's stats")?
        .json()
        .await
        .context("malformed emulator stats")
}

/// When each stage of a cycle began, from the engine's progress events.
#[derive(Default)]
struct Phases {
    started: std::sync::OnceLock<Instant>,
    groups: std::sync::OnceLock<Instant>,
    planning: std::sync::OnceLock<Instant>,
    applying: std::sync::OnceLock<Instant>,
    /// Resident MiB when planning and applying began.
    rss_planning: std::sync::OnceLock<f64>,
    rss_applying: std::sync::OnceLock<f64>,
}

impl crate::engine::Observer for Phases {
    fn on(&self, p: crate::engine::Progress) {
        use crate::engine::Progress;
        let now = Instant::now();
        match p {
            Progress::Page {
                resource: "groups", ..
            } => {
                let _ = self.groups.set(now);
            }
            Progress::Page { .. } => {}
            Progress::Planning { .. } => {
                let _ = self.planning.set(now);
                let _ = self.rss_planning.set(rss_mib().unwrap_or(0.0));
            }
            Progress::Applying { .. } => {
                let _ = self.applying.set(now);
                let _ = self.rss_applying.set(rss_mib().unwrap_or(0.0));
            }
            Progress::Applied { .. } => {}
        }
    }
}

impl Phases {
    /// Seconds spent reading users, reading groups, planning and applying.
    fn split(&self, end: Instant) -> [f64; 4] {
        let at = |c: &std::sync::OnceLock<Instant>, or: Instant| c.get().copied().unwrap_or(or);
        let s = at(&self.started, end);
        let g = at(&self.groups, s);
        let p = at(&self.planning, g);
        let a = at(&self.applying, p);
        [
            g.duration_since(s).as_secs_f64(),
            p.duration_since(g).as_secs_f64(),
            a.duration_since(p).as_secs_f64(),
            end.duration_since(a).as_secs_f64(),
        ]
    }
}

/// What one bench sync run measured.
struct SyncRun {
    wall: Duration,
    /// Users read, groups read, planning, applying (seconds).
    phases: [f64; 4],
    /// Resident MiB when planning began, when applying began, at the end.
    rss: [f64; 3],
    report: crate::engine::CycleReport,
    /// Emulator counters over the initial sync.
    first: Counters,
    /// Emulator counters over the following cycle (nothing changed).
    again: Counters,
    concurrency: usize,
    peak_rss_mib: Option<f64>,
}

/// The difference of two emulator stats snapshots.
#[derive(Default)]
struct Counters {
    graph_calls: u64,
    graph_pages: u64,
    sf_calls: u64,
    sf_writes: u64,
    calls_by_kind: std::collections::BTreeMap<String, u64>,
    records_by_kind: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    fn between(a: &crate::sim::Stats, b: &crate::sim::Stats) -> Self {
        let diff = |x: &std::collections::BTreeMap<String, u64>,
                    y: &std::collections::BTreeMap<String, u64>| {
            y.iter()
                .map(|(k, v)| (k.clone(), v - x.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        Self {
            graph_calls: b.graph_calls - a.graph_calls,
            graph_pages: b.graph_delta_pages - a.graph_delta_pages,
            sf_calls: b.sf_api_calls - a.sf_api_calls,
            sf_writes: b.sf_write_calls - a.sf_write_calls,
            calls_by_kind: diff(&a.sf_calls_by_kind, &b.sf_calls_by_kind),
            records_by_kind: diff(&a.sf_records_by_kind, &b.sf_records_by_kind),
        }
    }

    /// The physical-limit Salesforce calls: ceil(records/200) per written
    /// kind, plus ceil(users/2000) pages to read the User table.
    fn model_sf_calls(&self, users: usize) -> u64 {
        let writes: u64 = self.records_by_kind.values().map(|r| r.div_ceil(200)).sum();
        writes + (users as u64).div_ceil(2000)
    }
}

/// One initial sync plus one idle cycle against a fresh emulator.
async fn sync_run(a: &SyncArgs, users: usize, naive: bool) -> anyhow::Result<SyncRun> {
    let share = a.existing_share.to_string();
    let (sim, listen, _) =
        spawn_sim_with(users, a.latency_ms, &["--existing-share", share.as_str()])?;
    let dir = scratch_dir()?;
    let pack = gallery_with_permission_set(&dir, "Sales_Cloud_User")?;
    let mut cfg = bench_config(&listen, &pack, &dir)?;
    if naive {
        cfg.sync.batch_size = 1;
        cfg.sync.concurrency = 1;
    }
    if let Some(n) = a.plan_chunk_users {
        cfg.sync.plan_chunk_users = n.max(1);
    }
    let engine = engine_from_config(&cfg).await?;
    let s0 = sim_stats(&listen).await?;
    let phases = Phases::default();
    let started = Instant::now();
    let _ = phases.started.set(started);
    let report = engine.sync_once(&phases).await.context("the sync failed")?;
    let wall = started.elapsed();
    let rss = [
        phases.rss_planning.get().copied().unwrap_or(0.0),
        phases.rss_applying.get().copied().unwrap_or(0.0),
        rss_mib().unwrap_or(0.0),
    ];
    let phases = phases.split(Instant::now());
    let s1 = sim_stats(&listen).await?;
    engine
        .sync_once(&Quiet)
        .await
        .context("the idle cycle failed")?;
    let s2 = sim_stats(&listen).await?;
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    if report.failed > 0 {
        bail!(
            "{} users failed: {:?}",
            report.failed,
            report.failures.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(SyncRun {
        wall,
        phases,
        rss,
        report,
        first: Counters::between(&s0, &s1),
        again: Counters::between(&s1, &s2),
        concurrency: cfg.sync.concurrency,
        peak_rss_mib: peak_rss_mib(),
    })
}

async fn sync(a: SyncArgs) -> anyhow::Result<ExitCode> {
    let n = a.users;
    let l = a.latency_ms as f64 / 1000.0;
    println!(
        "provisor bench sync: {n} users, {} ms latency, {:.0}% already in Salesforce, gallery defaults + one permission set, planned {} users at a time",
        a.latency_ms,
        a.existing_share * 100.0,
        a.plan_chunk_users
            .unwrap_or_else(|| crate::config::SyncConfig::default().plan_chunk_users)
    );
    let run = sync_run(&a, n, false).await?;
    let r = &run.report;
    let c = &run.first;
    let user_pages = n.div_ceil(999) as u64;
    let model_sf = c.model_sf_calls(n);
    // Graph pages are sequential (each nextLink comes from the page
    // before); Salesforce calls overlap up to the configured concurrency.
    let model_secs = c.graph_pages as f64 * l + model_sf as f64 * l / run.concurrency as f64;
    let time_ratio = run.wall.as_secs_f64() / model_secs;
    let calls_ratio = c.sf_calls as f64 / model_sf as f64;
    println!(
        "  initial sync: {:.2} s; created {}, linked {}, updated {}, permission sets {}, waiting {}, failed {}",
        run.wall.as_secs_f64(),
        r.created,
        r.linked,
        r.updated,
        r.permission_sets_assigned,
        r.waiting,
        r.failed
    );
    let [ru, rg, pl, ap] = run.phases;
    println!(
        "  stages: read Entra (users and groups side by side) {:.2} s, match + rules + plan {pl:.2} s, apply {ap:.2} s",
        ru + rg
    );
    println!(
        "  resident: {:.0} MiB after the read, {:.0} MiB after planning, {:.0} MiB after applying",
        run.rss[0], run.rss[1], run.rss[2]
    );
    println!(
        "  Graph: {} calls, {} delta pages (users need ceil({n}/999) = {user_pages}; the rest are group pages, members in slices)",
        c.graph_calls, c.graph_pages
    );
    println!(
        "  Salesforce: {} calls ({} writes), by kind:",
        c.sf_calls, c.sf_writes
    );
    for (kind, calls) in &c.calls_by_kind {
        match c.records_by_kind.get(kind) {
            Some(recs) => println!(
                "    {kind:<44} {calls:>6} calls, {recs:>7} records (model ceil({recs}/200) = {})",
                recs.div_ceil(200)
            ),
            None => println!("    {kind:<44} {calls:>6} calls"),
        }
    }
    println!(
        "  model: Salesforce {model_sf} calls (writes per kind + ceil({n}/2000) query pages); measured / model = {calls_ratio:.3} (target <= 1.05)"
    );
    println!(
        "  model time: {} Graph pages x {} ms + {model_sf} Salesforce calls x {} ms / {} in flight = {model_secs:.2} s; measured / model = {time_ratio:.2} (target <= 1.5)",
        c.graph_pages, a.latency_ms, a.latency_ms, run.concurrency
    );
    let rss_ok = match run.peak_rss_mib {
        Some(p) => {
            println!("  host peak RSS {p:.1} MiB (target < 256 MiB)");
            p < 256.0
        }
        None => {
            println!("  host peak RSS unavailable (no /proc/self/status)");
            true
        }
    };
    let g = &run.again;
    println!(
        "  idle cycle: {} Graph calls (2 delta links), {} Salesforce calls, {} writes (target: 2 and 0 writes)",
        g.graph_calls, g.sf_calls, g.sf_writes
    );
    let mut ok = calls_ratio <= 1.05
        && time_ratio <= 1.5
        && rss_ok
        && g.graph_calls == 2
        && g.sf_writes == 0;
    if a.naive_users > 0 {
        let m = a.naive_users;
        let naive = sync_run(&a, m, true).await?;
        let batched = sync_run(&a, m, false).await?;
        let nm = naive.first.model_sf_calls(m);
        println!(
            "  naive baseline at {m} users (batch 1, one call in flight): {:.2} s, {} Salesforce calls; the batched engine on the same tenant: {:.2} s, {} calls (model {nm}); naive / batched = {:.1}x time, {:.1}x calls",
            naive.wall.as_secs_f64(),
            naive.first.sf_calls,
            batched.wall.as_secs_f64(),
            batched.first.sf_calls,
            naive.wall.as_secs_f64() / batched.wall.as_secs_f64(),
            naive.first.sf_calls as f64 / batched.first.sf_calls as f64,
        );
        ok &= naive.report.created == batched.report.created;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes the gallery defaults plus one permission set for everyone as a
/// pack under `dir`; returns its path.
fn gallery_with_permission_set(
    dir: &std::path::Path,
    permission_set: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let gallery = gallery_pack()?;
    let pack = dir.join("pack");
    std::fs::create_dir_all(&pack)?;
    let manifest = std::fs::read_to_string(gallery.join("pack.toml"))?;
    let script = std::fs::read_to_string(gallery.join("main.rhai"))?;
    if !script.contains("fn map(") {
        bail!("rules/gallery-defaults/main.rhai has no `fn map(`");
    }
    if manifest.contains("permission_sets") {
        bail!("rules/gallery-defaults/pack.toml already declares permission sets");
    }
    // The pack must declare what it grants.
    std::fs::write(
        pack.join("pack.toml"),
        format!("{manifest}permission_sets = [\"{permission_set}\"]\n"),
    )?;
    std::fs::write(
        pack.join("main.rhai"),
        format!(
            "{}\nfn map(user, settings) {{\n    let d = gallery_map(user, settings);\n    d.permission_sets = [\"{permission_set}\"];\n    d\n}}\n",
            script.replace("fn map(", "fn gallery_map("),
        ),
    )?;
    Ok(pack)
}

async fn salesforce_create(a: SalesforceCreateArgs) -> anyhow::Result<ExitCode> {
    if !crate::model::is_api_name(&a.permission_set) {
        bail!("--permission-set {:?} is not an API name", a.permission_set);
    }
    let (sim, listen, generated) = spawn_sim(a.users, a.latency_ms)?;
    let dir = scratch_dir()?;
    let pack = gallery_with_permission_set(&dir, &a.permission_set)?;
    let cfg = bench_config(&listen, &pack, &dir)?;
    let engine = engine_from_config(&cfg).await?;
    // Read Entra first, so that the counted cycle is Salesforce's alone.
    engine
        .read_entra(&Quiet)
        .await
        .context("the Entra read failed")?;
    let before = sim_stats(&listen).await?;
    let started = Instant::now();
    let report = engine.sync_once(&Quiet).await.context("the sync failed")?;
    let wall = started.elapsed();
    let after = sim_stats(&listen).await?;
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);

    let n = report.created;
    let calls = after.sf_api_calls - before.sf_api_calls;
    let writes = after.sf_write_calls - before.sf_write_calls;
    let reads = calls - writes;
    let bound = n.div_ceil(200) * 2 + n.div_ceil(2000);
    let limit = bound as f64 * 1.05;
    println!(
        "provisor bench salesforce-create: {} tenant users, {} ms latency, permission set {}",
        a.users, a.latency_ms, a.permission_set
    );
    println!(
        "  emulator generated the tenant and org and listened after {:.2} s (separate process)",
        generated.as_secs_f64()
    );
    println!(
        "  created {n} users, assigned {} permission sets, linked {}, failed {}, waiting {}, in {:.2} s",
        report.permission_sets_assigned,
        report.linked,
        report.failed,
        report.waiting,
        wall.as_secs_f64()
    );
    println!(
        "  Salesforce REST calls: {calls} ({writes} writes, {reads} reads incl. lookups), plus {} token requests",
        after.sf_token_calls - before.sf_token_calls
    );
    println!(
        "  bound: ceil({n}/200) x 2 + ceil({n}/2000) = {bound}; x 1.05 = {limit:.1}; measured / bound = {:.3}",
        calls as f64 / bound as f64
    );
    // Linked users (pre-existing in the org) get theirs too.
    if report.failed > 0 || report.permission_sets_assigned < n {
        bail!(
            "{} users failed and {} of {n} permission sets were assigned: {:?}",
            report.failed,
            report.permission_sets_assigned,
            report.failures.iter().take(5).collect::<Vec<_>>()
        );
    }
    // The bound allows a constant for lookups (profiles, licences, roles,
    // permission sets, the User table): 10 calls.
    if calls as f64 > limit + 10.0 {
        bail!("{calls} calls exceed 1.05 x {bound} + 10");
    }
    Ok(ExitCode::SUCCESS)
}

fn rules(a: RulesArgs) -> anyhow::Result<ExitCode> {
    let tenant = crate::sim::seed::tenant(a.users, 1);
    // Group names per member, as the engine hands them to the rules.
    let mut groups: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for g in tenant.groups().filter(|g| !g.removed) {
        for m in &g.members {
            groups
                .entry(m.as_str())
                .or_default()
                .push(g.display_name.clone());
        }
    }
    let users: Vec<(crate::model::EntraUser, Vec<String>)> = tenant
        .users()
        .filter_map(|u| {
            let mut props = u.props.clone();
            props.insert("id".into(), serde_json::Value::String(u.id.clone()));
            let user: crate::model::EntraUser =
                serde_json::from_value(serde_json::Value::Object(props)).ok()?;
            let g = groups.get(u.id.as_str()).cloned().unwrap_or_default();
            Some((user, g))
        })
        .collect();
    if users.len() != a.users {
        bail!(
            "{} of {} generated users could not be read as Entra users",
            a.users - users.len(),
            a.users
        );
    }
    println!(
        "provisor bench rules: gallery-defaults mapping, {} users, one thread",
        users.len()
    );
    let mut ok = true;
    for (engine, dir, target) in [
        ("rhai", "rules/gallery-defaults", 100_000.0),
        ("wasm", "rules/gallery-defaults-wasm", 200_000.0),
    ] {
        if a.engine.as_deref().is_some_and(|e| e != engine) {
            continue;
        }
        let path = find_rules_dir(std::path::Path::new(dir))
            .with_context(|| format!("cannot find {dir}"))?;
        let pack = crate::rules::Pack::load(&path)?;
        // Warm-up: first calls pay for lazy initialisation.
        for (u, g) in users.iter().take(1000) {
            pack.map(u, g)?;
        }
        let rounds = a.rounds.max(1);
        let started = Instant::now();
        for _ in 0..rounds {
            for (u, g) in &users {
                pack.map(u, g)?;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let mapped = (users.len() * rounds) as f64;
        let rate = mapped / secs;
        ok &= rate >= target;
        println!(
            "  {:<28} {:>10.0} users/s  ({:.2} s, {:.1} us per user; target >= {target:.0}/s)",
            pack.id(),
            rate,
            secs,
            secs * 1e6 / mapped
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An emulator, a synced engine and leavers owning open Opportunities.
struct LeaverSetup {
    sim: SimProcess,
    listen: String,
    dir: std::path::PathBuf,
    engine: crate::engine::Engine,
    /// (Entra id, Salesforce id) of each leaver.
    chosen: Vec<(String, String)>,
}

/// Starts the emulator, syncs it and gives `leavers` users (linked, with a
/// linked manager who is not a leaver: the gallery pack hands their
/// records to the manager) `records` open Opportunities each.
async fn leaver_setup(
    users: usize,
    latency_ms: u64,
    leavers: usize,
    records: usize,
    edit: impl FnOnce(&mut Config),
) -> anyhow::Result<LeaverSetup> {
    let (sim, listen, _) = spawn_sim(users, latency_ms)?;
    let dir = scratch_dir()?;
    let pack = gallery_pack()?;
    let mut cfg = bench_config(&listen, &pack, &dir)?;
    edit(&mut cfg);
    let engine = engine_from_config(&cfg).await?;
    engine
        .sync_once(&Quiet)
        .await
        .context("the initial sync failed")?;
    let links = engine.store.links().await?;
    let ids: Vec<String> = links.keys().cloned().collect();
    let mirror = engine.store.users_in(&ids).await?;
    let managers: std::collections::HashSet<String> = mirror
        .iter()
        .filter_map(|d| d.user.manager_id.clone())
        .collect();
    let chosen: Vec<(String, String)> = mirror
        .iter()
        .filter(|d| d.user.account_enabled == Some(true) && !managers.contains(&d.user.id))
        .filter(|d| {
            d.user
                .manager_id
                .as_ref()
                .is_some_and(|m| links.contains_key(m))
        })
        .filter_map(|d| Some((d.user.id.clone(), links.get(&d.user.id)?.clone())))
        .take(leavers)
        .collect();
    if chosen.len() < leavers {
        bail!(
            "only {} users qualify as leavers; give more --users",
            chosen.len()
        );
    }
    let http = reqwest::Client::new();
    for (_, sf) in &chosen {
        for i in 0..records {
            http.post(format!(
                "http://{listen}/_sim/salesforce/records/Opportunity"
            ))
            .json(&serde_json::json!({
                "Name": format!("Deal {i}"), "StageName": "Prospecting",
                "CloseDate": "2027-01-31", "OwnerId": sf,
            }))
            .send()
            .await?
            .error_for_status()?;
        }
    }
    Ok(LeaverSetup {
        sim,
        listen,
        dir,
        engine,
        chosen,
    })
}

/// `provisor bench reassign`.
async fn reassign(a: ReassignArgs) -> anyhow::Result<ExitCode> {
    println!(
        "provisor bench reassign: one leaver owning {} open Opportunities, {} ms latency",
        a.records, a.latency_ms
    );
    let mut ok = true;
    for (name, threshold) in [
        ("Bulk API 2.0", a.records.saturating_sub(1)),
        ("Collections", a.records),
    ] {
        let LeaverSetup {
            sim,
            listen,
            dir,
            engine,
            chosen,
        } = leaver_setup(200, a.latency_ms, 1, a.records, |c| {
            c.sync.reassign_bulk_threshold = threshold;
        })
        .await?;
        let (leaver, _) = chosen.first().cloned().context("no leaver")?;
        reqwest::Client::new()
            .patch(format!("http://{listen}/_sim/graph/users/{leaver}"))
            .json(&serde_json::json!({"accountEnabled": false}))
            .send()
            .await?
            .error_for_status()?;
        let s0 = sim_stats(&listen).await?;
        let started = Instant::now();
        let report = engine
            .sync_once(&Quiet)
            .await
            .context("the leaver's cycle failed")?;
        let wall = started.elapsed();
        let c = Counters::between(&s0, &sim_stats(&listen).await?);
        drop(sim);
        let _ = std::fs::remove_dir_all(&dir);
        ok &= report.records_reassigned == a.records && report.deactivated == 1;
        println!(
            "  {name}: {:.2} s, {} of {} records moved, deactivated {}; {} Salesforce calls:",
            wall.as_secs_f64(),
            report.records_reassigned,
            a.records,
            report.deactivated,
            c.sf_calls
        );
        for (kind, n) in &c.calls_by_kind {
            println!("    {kind:<48} {n:>5}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `provisor bench leavers`.
async fn leavers(a: LeaversArgs) -> anyhow::Result<ExitCode> {
    println!(
        "provisor bench leavers: {} of {} users disabled {} ms apart, {} ms latency, polling every {} ms (no change notifications), {} open Opportunities each",
        a.leavers, a.users, a.spacing_ms, a.latency_ms, a.poll_ms, a.records
    );
    let LeaverSetup {
        sim,
        listen,
        dir,
        engine,
        chosen,
    } = leaver_setup(a.users, a.latency_ms, a.leavers, a.records, |_| {}).await?;
    let http = reqwest::Client::new();
    let looping = engine.clone();
    let poll = Duration::from_millis(a.poll_ms);
    let cycles = tokio::spawn(async move { looping.run_forever(poll, None, |_| {}).await });
    let mut disabled: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for (id, _) in &chosen {
        disabled.insert(id.clone(), chrono::Utc::now());
        http.patch(format!("http://{listen}/_sim/graph/users/{id}"))
            .json(&serde_json::json!({"accountEnabled": false}))
            .send()
            .await?
            .error_for_status()?;
        tokio::time::sleep(Duration::from_millis(a.spacing_ms)).await;
    }
    // Until every leaver is deactivated (or a generous deadline).
    let deadline = Instant::now() + poll * 20 + Duration::from_secs(120);
    let (frozen, deactivated, moved) = loop {
        let rows = engine.store.audit_rows(None).await?;
        let at = |event: &str| -> HashMap<String, chrono::DateTime<chrono::Utc>> {
            rows.iter()
                .filter(|r| r.event == event)
                .filter_map(|r| {
                    let id = r.entra_id.clone()?;
                    let t = chrono::DateTime::parse_from_rfc3339(&r.at).ok()?;
                    disabled
                        .contains_key(&id)
                        .then(|| (id, t.with_timezone(&chrono::Utc)))
                })
                .collect()
        };
        let (f, d) = (at("user.frozen"), at("user.deactivated"));
        let moved = rows
            .iter()
            .filter(|r| r.event == "record.reassigned")
            .count();
        if d.len() == chosen.len() || Instant::now() > deadline {
            break (f, d, moved);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    cycles.abort();
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    let latencies = |done: &HashMap<String, chrono::DateTime<chrono::Utc>>| -> Vec<f64> {
        let mut v: Vec<f64> = done
            .iter()
            .filter_map(|(id, t)| {
                let from = disabled.get(id)?;
                Some((*t - *from).num_milliseconds() as f64 / 1000.0)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let pct = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    for (name, done) in [("frozen", &frozen), ("deactivated", &deactivated)] {
        let v = latencies(done);
        println!(
            "  disable -> {name}: {} of {} leavers; p50 {:.2} s, p99 {:.2} s, max {:.2} s{}",
            v.len(),
            chosen.len(),
            pct(&v, 0.50),
            pct(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            if name == "deactivated" {
                " (target: p99 < 10 s)"
            } else {
                ""
            }
        );
    }
    println!(
        "  open records moved to managers first: {moved} of {}",
        chosen.len() * a.records
    );
    Ok(if deactivated.len() == chosen.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
