//! `ufsd check`: verify the image store and list (or with `--repair` remove) what
//! interrupted commands left behind.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use crate::image::layer::{ExtractOptions, extract_layer};
use crate::image::store::{LayerCheck, RepairReport, Store, VerifyReport};
use crate::mount;

/// Verify every blob, extracted layer, reference and container record of the image store.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd check                 # report; exit 1 if anything is damaged\n  \
    ufsd check --repair        # also remove leftovers of interrupted commands\n  \
    ufsd check --json\n\n\
    Checks: every blob hashes to its name; every reference of index.json (manifests,\n\
    configs, layers, nested indexes) leads to a blob; every extracted layer is a directory\n\
    that an image refers to and, extracted again from its blob, matches entry by entry\n\
    (--no-layers skips that); every container record parses and names an image of the store.\n\
    Leftovers: files and trees in tmp/ (interrupted imports, extractions, removals),\n\
    unreferenced blobs and layers, container directories without a record, and pid files\n\
    of ufsd daemons that are gone. --repair removes those, and extracted layers that do not\n\
    match their blob (they are extracted again when next needed). A corrupt or missing\n\
    blob cannot be repaired: remove the image and import or pull it again.")]
pub struct CheckArgs {
    /// Remove leftovers of interrupted commands and damaged extracted layers.
    #[arg(long)]
    repair: bool,
    /// Do not extract layers again to compare them (faster; blobs are still hashed).
    #[arg(long)]
    no_layers: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    store: VerifyReport,
    layers: Option<LayerCheck>,
    stale_runtime_records: Vec<std::path::PathBuf>,
    repaired: Option<RepairReport>,
    healthy: bool,
}

fn run_checks(store: &Store, layers: bool) -> Result<Report> {
    let verify = store.verify()?;
    let layers = if layers {
        Some(store.verify_layers(|tar, dir| {
            extract_layer(tar, dir, &ExtractOptions::default()).map(drop)
        })?)
    } else {
        None
    };
    let healthy = verify.is_healthy()
        && layers
            .as_ref()
            .is_none_or(|l| l.differ.is_empty() && l.unverifiable.is_empty());
    Ok(Report {
        store: verify,
        layers,
        stale_runtime_records: mount::stale_records(),
        repaired: None,
        healthy,
    })
}

pub fn run(root: &Path, a: CheckArgs) -> Result<ExitCode> {
    if !root.join("oci-layout").is_file() {
        bail!("{}: no image store here (no oci-layout)", root.display());
    }
    let store = Store::open(root)?;
    let mut report = run_checks(&store, !a.no_layers)?;
    if a.repair {
        let damaged: Vec<String> = report
            .layers
            .iter()
            .flat_map(|l| l.differ.iter().map(|(id, _)| id.clone()))
            .collect();
        let repaired = store.repair(&damaged)?;
        for p in &report.stale_runtime_records {
            let _ = std::fs::remove_file(p);
        }
        let mut after = run_checks(&store, !a.no_layers)?;
        after.repaired = Some(repaired);
        report = after;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(root, &report);
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(root: &Path, r: &Report) {
    let s = &r.store;
    println!(
        "blobs: {} hashed ({} bytes), {} corrupt, {} missing",
        s.blobs_checked,
        s.bytes_hashed,
        s.corrupt.len(),
        s.missing.len()
    );
    for (digest, actual) in &s.corrupt {
        println!("  corrupt blob {digest}: its content hashes to {actual}");
    }
    for (digest, who) in &s.missing {
        println!("  missing blob {digest} ({who})");
    }
    match &r.layers {
        Some(l) => {
            println!(
                "layers: {} extracted, {} compared with their blob ({} bytes), {} differ",
                s.layers_present,
                l.verified,
                l.bytes_compared,
                l.differ.len()
            );
            for (id, diffs) in &l.differ {
                println!("  layer {id} differs from its blob: {}", diffs.join("; "));
            }
            for (id, why) in &l.unverifiable {
                println!("  layer {id} cannot be checked: {why}");
            }
        }
        None => println!(
            "layers: {} extracted (not compared: --no-layers)",
            s.layers_present
        ),
    }
    println!("containers: {} records", s.containers_checked);
    for (what, why) in &s.damaged {
        println!("  damaged: {what}: {why}");
    }
    for p in &s.foreign {
        println!("  not ufsd's: {}", p.display());
    }
    let leftovers = s.leftovers.len()
        + s.orphan_containers.len()
        + r.stale_runtime_records.len()
        + s.unreferenced_blobs.len()
        + s.unreferenced_layers.len();
    println!("leftovers: {leftovers}");
    for p in &s.leftovers {
        println!("  temporary: {}", p.display());
    }
    for p in &s.orphan_containers {
        println!("  container directory without a record: {}", p.display());
    }
    for p in &r.stale_runtime_records {
        println!("  record of a daemon that is gone: {}", p.display());
    }
    for b in &s.unreferenced_blobs {
        println!("  unreferenced blob: sha256:{b}");
    }
    for l in &s.unreferenced_layers {
        println!("  unreferenced layer: sha256:{l}");
    }
    if let Some(rep) = &r.repaired {
        println!(
            "repaired: removed {} temporary, {} blobs and {} layers unreferenced ({} bytes), \
             {} container directories, {} damaged layers",
            rep.temp_removed,
            rep.blobs_removed,
            rep.layers_removed,
            rep.bytes_freed,
            rep.orphan_containers_removed,
            rep.damaged_layers_removed
        );
        if let Some(why) = &rep.deferred {
            println!("  garbage collection deferred: {why}");
        }
    } else if leftovers > 0 {
        println!("  (ufsd check --repair removes them)");
    }
    if r.healthy {
        println!("{}: ok", root.display());
    } else {
        println!("{}: DAMAGED", root.display());
    }
}
