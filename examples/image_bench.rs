//! Speed of the image format pieces against the tools they must keep up with:
//! - `write_layer` hashed with sha256, against `tar -c DIR | sha256sum`;
//! - `extract_layer`, against `tar -x`;
//! - `diff` of a 100k-entry upper layer.
//!
//! `cargo run --release --example image_bench -- [WORKDIR] [FILES] [KIB]` (defaults: a new
//! directory under /var/tmp, 10000 files of 105 KiB, about 1 GiB). Every measurement is the
//! best of three runs, with the data in the page cache.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ufsd::image::diff::diff;
use ufsd::image::layer::{ExtractOptions, LayerOptions, extract_layer, write_layer};

/// A writer that hashes what it is given.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn best_of_3(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "{cmd}");
}

/// Deterministic pseudo-random bytes (xorshift), so the data does not compress.
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn make_data(dir: &Path, files: usize, kib: usize) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; kib * 1024];
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        fill(&mut buf, &mut seed);
        fs::write(d.join(format!("f{i:05}")), &buf).unwrap();
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let work = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/ufsd-bench-{}", std::process::id())));
    let files: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let kib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(105);
    let data = work.join("data");
    if !data.exists() {
        eprintln!("writing {files} files of {kib} KiB to {}", data.display());
        make_data(&data, files, kib);
    }
    sh(&format!(
        "cat $(find {} -type f) > /dev/null",
        data.display()
    ));
    let total = (files * kib * 1024) as u64;

    let mut layer_len = 0;
    let ours = best_of_3(|| {
        let mut h = HashWriter(Sha256::new());
        let stats = write_layer(&data, &[], &mut h, &LayerOptions::default()).unwrap();
        layer_len = stats.tar_bytes;
        std::hint::black_box(h.0.finalize());
    });
    let gnu = best_of_3(|| {
        sh(&format!(
            "tar -C {} -c . | sha256sum > /dev/null",
            data.display()
        ))
    });
    let raw = best_of_3(|| {
        write_layer(&data, &[], io::sink(), &LayerOptions::default()).unwrap();
    });
    let tar_only = best_of_3(|| sh(&format!("tar -C {} -c . | cat > /dev/null", data.display())));
    let ossl = best_of_3(|| {
        sh(&format!(
            "tar -C {} -c . | openssl dgst -sha256 > /dev/null",
            data.display()
        ))
    });
    println!(
        "write_layer alone: {raw:.2?}; tar -c | cat: {tar_only:.2?}; \
         tar -c | openssl dgst -sha256: {ossl:.2?} (write_layer | sha256 / this: {:.2})",
        ours.as_secs_f64() / ossl.as_secs_f64()
    );
    println!(
        "write_layer | sha256: {ours:.2?} ({:.0} MiB/s); tar -c | sha256sum: {gnu:.2?} ({:.0} MiB/s); ratio {:.2}",
        mib_s(total, ours),
        mib_s(total, gnu),
        ours.as_secs_f64() / gnu.as_secs_f64()
    );

    let tar_path = work.join("layer.tar");
    let mut f = fs::File::create(&tar_path).unwrap();
    write_layer(&data, &[], &mut f, &LayerOptions::default()).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&tar_path).unwrap().len(), layer_len);
    let mut n = 0;
    let fresh = |n: &mut u32| {
        *n += 1;
        let d = work.join(format!("x{n}"));
        fs::create_dir(&d).unwrap();
        sh("sync");
        d
    };
    let mut ext_times = Vec::new();
    let mut tar_times = Vec::new();
    for _ in 0..3 {
        let d = fresh(&mut n);
        let t = Instant::now();
        let file = fs::File::open(&tar_path).unwrap();
        extract_layer(file, &d, &ExtractOptions::default()).unwrap();
        ext_times.push(t.elapsed());
        let d2 = fresh(&mut n);
        let t = Instant::now();
        sh(&format!(
            "tar -xf {} -C {}",
            tar_path.display(),
            d2.display()
        ));
        tar_times.push(t.elapsed());
        fs::remove_dir_all(&d).unwrap();
        fs::remove_dir_all(&d2).unwrap();
    }
    let (ext, gx) = (
        ext_times.into_iter().min().unwrap_or_default(),
        tar_times.into_iter().min().unwrap_or_default(),
    );
    println!(
        "extract_layer: {ext:.2?}; tar -x: {gx:.2?}; ratio {:.2}",
        ext.as_secs_f64() / gx.as_secs_f64()
    );

    let big = work.join("big");
    if !big.exists() {
        for d in 0..1000 {
            let p = big.join(format!("d{d:04}"));
            fs::create_dir_all(&p).unwrap();
            for f in 0..99 {
                fs::write(p.join(format!("f{f:03}")), b"").unwrap();
            }
        }
    }
    let t = best_of_3(|| {
        std::hint::black_box(diff(&big, &[]).unwrap());
    });
    println!("diff of a 100k-entry upper layer: {t:.2?}");
    if args.is_empty() {
        fs::remove_dir_all(&work).unwrap();
    }
}
