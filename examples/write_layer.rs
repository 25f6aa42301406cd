//! Writes the OCI layer tar of an upper layer to stdout:
//! `cargo run --release --example write_layer -- UPPER [LOWER...]`
//! (SOURCE_DATE_EPOCH clamps mtimes). For looking at layers with `tar -tv`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ufsd::image::layer::{LayerOptions, write_layer};

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some((upper, lowers)) = args.split_first() else {
        eprintln!("usage: write_layer UPPER [LOWER...]");
        return ExitCode::FAILURE;
    };
    let opts = match LayerOptions::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("write_layer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = std::io::stdout().lock();
    match write_layer(upper, lowers, out, &opts) {
        Ok(stats) => {
            let _ = std::io::stderr().write_all(format!("{stats:?}\n").as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("write_layer: {e}");
            ExitCode::FAILURE
        }
    }
}
