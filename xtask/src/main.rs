//! Project tasks that need more than one cargo invocation.
//!
//! `cargo xtask plugins` builds the WASM rule components (they target
//! `wasm32-wasip2`, so a plain `cargo build` of the host can't make them)
//! and copies each into its rule pack directory. `demo` and `test` build
//! the plugins first, then run the demo or the whole test suite.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Plugin crate -> (wasm file name, pack directory it belongs in).
const PLUGINS: &[(&str, &str, &str)] = &[
    (
        "gallery-defaults",
        "gallery_defaults.wasm",
        "rules/gallery-defaults-wasm",
    ),
    // Example override pack: round-robin reassignment of a leaver's records.
    ("round-robin", "round_robin.wasm", "rules/round-robin"),
    // Misbehaves on purpose, for the sandbox tests.
    (
        "misbehaving",
        "misbehaving.wasm",
        "tests/fixtures/packs/misbehaving",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<(), String> {
    let shown = format!("{c:?}");
    let status = c.status().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

/// Installs the wasm32-wasip2 target when the sysroot lacks it (rustup
/// does not always act on rust-toolchain.toml's `targets` by itself).
fn ensure_wasm_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
        return Ok(());
    }
    println!("xtask: installing the wasm32-wasip2 target with rustup");
    let mut c = Command::new("rustup");
    c.args(["target", "add", "wasm32-wasip2"])
        .current_dir(root());
    run(c)
}

fn plugins() -> Result<(), String> {
    ensure_wasm_target()?;
    for (krate, file, pack) in PLUGINS {
        let mut c = cargo();
        c.args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            krate,
        ]);
        run(c).map_err(|e| format!("{e}\nhint: the wasm32-wasip2 target comes from rust-toolchain.toml; `rustup target add wasm32-wasip2` installs it by hand"))?;
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target"));
        let built = target.join("wasm32-wasip2/release").join(file);
        let dest = root().join(pack).join(file);
        std::fs::copy(&built, &dest)
            .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), dest.display()))?;
        println!("xtask: {} -> {}", built.display(), dest.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map(|(t, r)| (t.as_str(), r.to_vec()))
        .unwrap_or(("help", vec![]));
    let result = match task {
        "plugins" => plugins(),
        "demo" => plugins().and_then(|()| {
            let mut c = cargo();
            c.args(["run", "--quiet", "-p", "provisor", "--", "demo"])
                .args(&rest);
            run(c)
        }),
        "test" => plugins().and_then(|()| {
            let mut c = cargo();
            c.args([
                "test",
                "--workspace",
                "--exclude",
                "gallery-defaults",
                "--exclude",
                "misbehaving",
                "--exclude",
                "round-robin",
            ])
            .args(&rest);
            run(c)
        }),
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins|demo|test> [args...]\n  plugins  build the WASM rule components into their packs\n  demo     build plugins, then `provisor demo`\n  test     build plugins, then run every test"
            );
            return if task == "help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
