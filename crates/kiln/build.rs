//! Links `kiln` with packed relative relocations (`-z pack-relative-relocs`) where the
//! toolchain and the C library support them: a position-independent binary's relocation
//! table otherwise stays resident in every master, about 1.6 MB of its idle memory.
//!
//! Support is probed by linking and running a tiny C program with the flag: binutils 2.38
//! and glibc 2.36 are needed, and a binary linked with it does not start on an older glibc,
//! so the probe runs on the machine that builds (and, for a farm, runs) the master.

use std::path::PathBuf;
use std::process::{Command, Stdio};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host
        || !target.ends_with("-linux-gnu")
        || std::env::var("PROFILE").as_deref() != Ok("release")
    {
        return;
    }
    if probe() {
        println!("cargo::rustc-link-arg-bin=kiln={FLAG}");
    } else {
        println!(
            "cargo::warning=linking kiln without {FLAG} (the C toolchain or glibc here lacks it); it works, with ~1.6 MB more idle memory"
        );
    }
}

fn probe() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let src = out.join("relr_probe.c");
    let bin = out.join("relr_probe");
    // A pointer in initialised data makes a relative relocation for the loader to apply.
    let program = "static int x = 7; int *p = &x; int main(void) { return *p == 7 ? 0 : 1; }\n";
    if std::fs::write(&src, program).is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let linked = Command::new(cc)
        .args(["-fPIE", "-pie", FLAG, "-o"])
        .arg(&bin)
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    linked && Command::new(&bin).status().is_ok_and(|s| s.success())
}
