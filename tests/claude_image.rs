//! The Claude Code agent image, against the real Docker engine and the real
//! native `claude` binary.
//!
//! Builds `talon-agent-claude:test-image` with
//! `talon::image::ensure_claude_image` (once per test binary) from
//! `TALON_CLAUDE_BIN` or the `.ci/run` cache, then runs commands in it with
//! the hardening talon's containers get. Without an engine or a binary the
//! tests are skipped with a notice, except under `CI=true`, where either is
//! a failure.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use talon::image::{ensure_claude_image, image_hash, prepare_claude_context};

use support::CLAUDE_TEST_IMAGE;

/// Generous: a cold start on a 2-core machine, not a timing assertion.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished container said.
struct Ran {
    code: i64,
    stdout: String,
    stderr: String,
}

/// Runs `entrypoint` in the Claude Code test image as talon runs agents:
/// no network, every capability dropped, no new privileges, a read-only
/// root (with talon's tmpfs `/tmp`), uid 1000.
async fn run(docker: &Docker, entrypoint: &[&str]) -> Ran {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "talon-test-claude-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let body = ContainerCreateBody {
        image: Some(CLAUDE_TEST_IMAGE.into()),
        user: Some("1000:1000".into()),
        entrypoint: Some(entrypoint.iter().map(|s| s.to_string()).collect()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,nosuid,nodev,size=67108864".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker
        .create_container(Some(options), body)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    let ran = tokio::time::timeout(RUN_TIMEOUT, async {
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut code = None;
        let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
        while let Some(item) = wait.next().await {
            match item {
                Ok(response) => code = Some(response.status_code),
                // A non-zero exit arrives as this error.
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                    code = Some(c)
                }
                Err(e) => panic!("wait for {name}: {e}"),
            }
        }
        let mut logs = docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(item) = logs.next().await {
            match item.unwrap_or_else(|e| panic!("logs of {name}: {e}")) {
                bollard::container::LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message))
                }
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message))
                }
                _ => {}
            }
        }
        Ran {
            code: code.expect("the engine reported no exit code"),
            stdout,
            stderr,
        }
    })
    .await;
    // Never leave a container behind, whatever happened.
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    ran.unwrap_or_else(|_| panic!("{entrypoint:?} did not finish within {RUN_TIMEOUT:?}"))
}

#[tokio::test]
async fn claude_version_runs_hardened_without_network() {
    let Some(docker) = support::docker_with_claude_image().await else {
        return;
    };
    let started = Instant::now();
    let ran = run(&docker, &["/usr/local/bin/claude", "--version"]).await;
    assert_eq!(
        ran.code, 0,
        "claude --version failed: stdout {:?} stderr {:?}",
        ran.stdout, ran.stderr
    );
    let version = ran.stdout.trim();
    assert!(
        version.starts_with("2.1."),
        "unexpected version output {version:?} (stderr {:?})",
        ran.stderr
    );
    eprintln!(
        "REPORT: claude --version in the image: {version} ({:.1?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn bash_runs_with_its_libraries_and_sh_is_busybox() {
    let Some(docker) = support::docker_with_claude_image().await else {
        return;
    };
    let ran = run(&docker, &["/bin/bash", "-c", "echo ok"]).await;
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, "ok\n"),
        "stderr {:?}",
        ran.stderr
    );
    // The image's environment: bash as SHELL, the PATH, the user, the
    // workdir; /bin/sh still busybox; claude found on PATH.
    let ran = run(
        &docker,
        &[
            "/bin/bash",
            "-c",
            "echo $SHELL; echo $PATH; id -u; pwd; busybox readlink /bin/sh; command -v claude",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "stderr {:?}", ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{:?}", ran.stdout);
    assert_eq!(lines[0], "/bin/bash");
    for dir in ["/usr/local/bin", "/bin", "/usr/bin"] {
        assert!(lines[1].split(':').any(|d| d == dir), "PATH {}", lines[1]);
    }
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "/workspace/group");
    assert_eq!(lines[4], "busybox");
    assert_eq!(lines[5], "/usr/local/bin/claude");
    let ran = run(&docker, &["/bin/sh", "-c", "echo sh-ok"]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "sh-ok\n"));
}

#[tokio::test]
async fn image_is_hash_labelled_and_a_second_ensure_does_not_rebuild() {
    let Some(docker) = support::docker_with_claude_image().await else {
        return;
    };
    let _lock = support::build_lock();
    let label = image_hash(&docker, CLAUDE_TEST_IMAGE).await.unwrap();
    // The digests are memoised: this does not hash the binary again.
    let started = Instant::now();
    let context = tokio::task::spawn_blocking(|| prepare_claude_context().unwrap())
        .await
        .unwrap();
    let check = started.elapsed();
    assert_eq!(label.as_deref(), Some(context.hash.as_str()));
    assert_eq!(context.hash.len(), 64);

    let mut progress = |line: &str| eprintln!("[claude image] {line}");
    let started = Instant::now();
    assert!(
        !ensure_claude_image(&docker, CLAUDE_TEST_IMAGE, true, &mut progress)
            .await
            .unwrap(),
        "a current image was rebuilt"
    );
    let ensure = started.elapsed();
    assert!(
        !ensure_claude_image(&docker, CLAUDE_TEST_IMAGE, false, &mut progress)
            .await
            .unwrap()
    );
    eprintln!(
        "REPORT: staleness check {check:.1?} (manifest, memoised digests), ensure of a \
         current image {ensure:.1?}, context {} MB",
        context.content_bytes / 1_000_000
    );

    let image = docker.inspect_image(CLAUDE_TEST_IMAGE).await.unwrap();
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels.get("talon.managed").map(String::as_str),
        Some("true")
    );
    let size = image.size.unwrap_or_default();
    eprintln!(
        "REPORT: {CLAUDE_TEST_IMAGE} is {size} bytes ({:.1} MB)",
        size as f64 / 1e6
    );
    // The binary alone is hundreds of MB; the rest is a few MB.
    assert!(
        size as u64 >= context.content_bytes / 2 && size as u64 <= context.content_bytes * 2,
        "image size {size} vs context {}",
        context.content_bytes
    );
}
