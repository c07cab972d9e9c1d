use std::process::ExitCode;

fn main() -> ExitCode {
    provisor::cli::main()
}
