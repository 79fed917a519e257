//! How long package validation and extraction take. `cargo bench -p workmanager-shared --bench package`
//! prints medians; nothing here asserts a time.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use wm_shared::package::{self, EngineKind, Limits, Target};
use zip::write::SimpleFileOptions;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zw.start_file(name.as_str(), opts).expect("zip entry");
        zw.write_all(bytes).expect("zip entry");
    }
    zw.finish().expect("zip").into_inner()
}

fn nuspec(id: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0"?><package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd"><metadata><id>{id}</id><version>1.0.0</version></metadata></package>"#
    )
    .into_bytes()
}

fn median(mut f: impl FnMut(), runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    let limits = Limits::default();
    let target = Target {
        rid: "linux-x64".into(),
        dotnet_major: Some(8),
    };

    // A native worker: a 4 MiB library (half noise, half zeros, like code plus padding).
    let mut so = noise(2 << 20, 7);
    so.extend(vec![0u8; 2 << 20]);
    let native = zip(&[
        ("echo.nuspec".into(), nuspec("echo")),
        ("runtimes/linux-x64/native/libecho.so".into(), so),
    ]);
    // A .NET worker with 200 sibling DLLs of 64 KiB.
    let mut entries = vec![
        ("W.nuspec".to_string(), nuspec("W")),
        ("lib/net8.0/W.dll".into(), noise(64 << 10, 1)),
    ];
    entries.extend((0..200).map(|i| (format!("lib/net8.0/Dep{i}.dll"), noise(64 << 10, i + 2))));
    let dotnet = zip(&entries);

    let t = median(
        || drop(package::inspect(&native, EngineKind::Native, &target, &limits).expect("valid")),
        21,
    );
    println!(
        "inspect native ({} KiB package, 4 MiB .so): {t:?}",
        native.len() >> 10
    );
    let t = median(
        || drop(package::inspect(&dotnet, EngineKind::DotNet, &target, &limits).expect("valid")),
        21,
    );
    println!(
        "inspect dotnet ({} KiB package, 202 entries): {t:?}",
        dotnet.len() >> 10
    );

    let info = package::inspect(&native, EngineKind::Native, &target, &limits).expect("valid");
    let t = median(
        || {
            let root = tempfile::tempdir().expect("temp dir");
            package::extract(&native, &info, root.path(), &limits).expect("extract");
        },
        21,
    );
    println!("extract native into a fresh root (with fsync): {t:?}");
    let root = tempfile::tempdir().expect("temp dir");
    package::extract(&native, &info, root.path(), &limits).expect("extract");
    let t = median(
        || drop(package::extract(&native, &info, root.path(), &limits).expect("extract")),
        21,
    );
    println!("extract native again (already there): {t:?}");

    let info = package::inspect(&dotnet, EngineKind::DotNet, &target, &limits).expect("valid");
    let t = median(
        || {
            let root = tempfile::tempdir().expect("temp dir");
            package::extract(&dotnet, &info, root.path(), &limits).expect("extract");
        },
        11,
    );
    println!("extract dotnet into a fresh root (202 files, with fsync): {t:?}");

    // A deflate bomb with lying headers under the default limits: the time to refuse it.
    let bomb = zip(&[
        ("echo.nuspec".into(), nuspec("echo")),
        ("bomb".into(), vec![0u8; 64 << 20]),
    ]);
    let t = median(
        || drop(package::inspect(&bomb, EngineKind::Native, &target, &limits).expect_err("bomb")),
        11,
    );
    println!(
        "refuse a 64 MiB-in-{} KiB bomb (honest headers): {t:?}",
        bomb.len() >> 10
    );
}
