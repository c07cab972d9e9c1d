use std::process::ExitCode;

// glibc's allocator spent about a quarter of a large cycle's CPU and kept
// freed memory in per-thread arenas (the next chunk is planned on another
// thread); mimalloc is faster here and returns memory to the OS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v3). The -sys crate declares
/// `mi_option_set` only behind a feature whose dependency (`cty`) is not
/// available here, so the one function is declared below.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    /// mimalloc.h: `void mi_option_set(mi_option_t option, long value)`.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

fn main() -> ExitCode {
    // The engine returns freed memory to the OS at once instead of after a
    // second: a large cycle frees one chunk's plan as the next one is made,
    // and the delay kept both resident (about 50 MiB more at peak, no
    // faster). The emulator keeps mimalloc's default: it renders large
    // pages over and over, and purging each at once cost it about 5% per
    // page. An explicit MIMALLOC_PURGE_DELAY wins over both.
    let emulator = std::env::args().nth(1).as_deref() == Some("sim");
    if !emulator && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option, read on mimalloc's next
        // purge; no pointer is involved.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    provisor::cli::main()
}
