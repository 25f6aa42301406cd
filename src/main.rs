use std::process::ExitCode;

fn main() -> ExitCode {
    ufsd::cli::main()
}
