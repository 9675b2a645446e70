//! Builds the static agent runner and hands it to the talon crate, which
//! embeds it (`include_bytes!`): an installed `talon` binary builds its
//! agent image with nothing but Docker and busybox, no toolchain or source
//! tree at run time.
//!
//! The runner is compiled by a nested cargo in its own target directory
//! (`<target>/agent-runner`), statically linked for the host's target, so
//! its flags never touch talon's own build. `TALON_RUNNER_PREBUILT` names a
//! prebuilt static runner to embed instead (packagers, cross builds).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The runner's flags: static (it runs in a `FROM scratch` image) and
/// stripped (it is carried inside talon and copied into every image).
const RUNNER_RUSTFLAGS: &str = "-C target-feature=+crt-static -C strip=symbols";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let embedded = out_dir.join("agent-runner");

    // Packed relative relocations (DT_RELR, glibc 2.36+; an older ld or
    // libc ignores the request): the ~96 000 relocations of a PIE talon
    // take kilobytes instead of a 2.3 MB table the loader reads at every
    // start. The binary stays position independent (ASLR).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }

    println!("cargo:rerun-if-env-changed=TALON_RUNNER_PREBUILT");
    if let Some(prebuilt) = std::env::var_os("TALON_RUNNER_PREBUILT").filter(|v| !v.is_empty()) {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        copy(Path::new(&prebuilt), &embedded);
        return;
    }
    for input in [
        "container/agent-runner/src",
        "container/agent-runner/Cargo.toml",
        "src/messages/wire.rs",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(input).display()
        );
    }

    let target = runner_target();
    // OUT_DIR is <target-dir>[/<triple>]/<profile>/build/<crate>-<hash>/out:
    // the runner's own directory sits beside the profiles, shared by every
    // profile and by clippy, so it is compiled once.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|dir| dir.join("agent-runner"))
        .unwrap_or_else(|| out_dir.join("agent-runner-target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "-p", "talon-agent-runner", "--target"])
        .arg(&target)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", RUNNER_RUSTFLAGS);
    // What the outer cargo passes to build scripts would change (or, for
    // clippy's wrapper, slow) the nested build.
    for inherited in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        build.env_remove(inherited);
    }
    let status = match build.status() {
        Ok(status) => status,
        Err(e) => fail(&format!(
            "could not run cargo to build the agent runner: {e}"
        )),
    };
    if !status.success() {
        fail(&format!(
            "building the agent runner failed ({status}); its errors are above. A static \
             build needs glibc's static libraries (Debian: libc6-dev); or set \
             TALON_RUNNER_PREBUILT to a statically linked agent-runner"
        ));
    }
    let built = target_dir
        .join(&target)
        .join("release")
        .join("agent-runner");
    copy(&built, &embedded);
}

/// The host's target triple: the runner runs on the same machine as talon.
fn runner_target() -> String {
    let target = env("TARGET");
    let host = env("HOST");
    if target != host {
        fail(&format!(
            "talon is being built for {target} on {host}: build a static agent runner for \
             {target} and name it in TALON_RUNNER_PREBUILT"
        ));
    }
    target
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        fail(&format!(
            "could not copy the agent runner {} into the build: {e}",
            from.display()
        ));
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("cargo did not set {name}")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
