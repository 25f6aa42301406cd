//! Extracts an OCI layer tar from stdin into an empty directory:
//! `cargo run --release --example extract_layer -- DEST < layer.tar`.
//! For trying archives by hand and timing extraction against `tar -x`.

use std::path::PathBuf;
use std::process::ExitCode;

use ufsd::image::layer::{ExtractOptions, extract_layer};

fn main() -> ExitCode {
    let Some(dest) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: extract_layer DEST < layer.tar");
        return ExitCode::FAILURE;
    };
    match extract_layer(std::io::stdin().lock(), &dest, &ExtractOptions::default()) {
        Ok(stats) => {
            eprintln!("{stats:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("extract_layer: {e}");
            ExitCode::FAILURE
        }
    }
}
