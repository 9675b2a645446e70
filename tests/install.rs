//! An installed talon: the binary alone, copied out of the build, run from
//! a directory that is not the checkout, with no cargo on PATH. It builds
//! its agent image (the runner it carries, busybox, the real engine) and
//! answers; `talon service install` writes a unit that runs that copy.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::fake_anthropic::{FakeAnthropic, Reply};
use support::*;

const LIMIT: Duration = Duration::from_secs(180);

/// `talon` at `exe` with only what an installed binary would have: a
/// system PATH (no cargo), HOME, and the test's own variables.
fn installed(exe: &Path, cwd: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(exe);
    command
        .env_clear()
        .current_dir(cwd)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)));
    for key in ["HOME", "USER", "DOCKER_HOST"] {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_alone_builds_its_image_and_answers() {
    let Some(docker) = docker_or_skip().await else {
        return;
    };
    let tag = format!("talon-agent:install-test-{}", std::process::id());
    remove_image(&docker, &tag).await;

    // The binary copied alone into a directory of its own.
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("talon");
    std::fs::copy(env!("CARGO_BIN_EXE_talon"), &exe).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    let model = FakeAnthropic::start_with(|body| {
        Reply::text(format!(
            "installed: {}",
            last_message_text(&last_user_text(body))
        ))
    })
    .await;
    let home = Home::new();
    let mut env = host_env(home.path(), &model.base_url);
    env.retain(|(k, _)| k != "TALON_CONTAINER_IMAGE");
    env.push(("TALON_CONTAINER_IMAGE".into(), tag.clone()));

    let chat = {
        let (exe, cwd, env) = (exe.clone(), elsewhere.path().to_path_buf(), env.clone());
        tokio::task::spawn_blocking(move || {
            piped(
                installed(&exe, &cwd, &env).arg("chat"),
                b"are you there\n",
                LIMIT,
            )
        })
        .await
        .unwrap()
    };
    let built = talon::image::image_hash(&docker, &tag).await;
    remove_image(&docker, &tag).await;

    let stderr = stderr_of(&chat);
    assert!(chat.status.success(), "stderr: {stderr}");
    assert_eq!(
        stdout_of(&chat),
        "installed: are you there\n",
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("cargo"), "stderr: {stderr}");
    // The image (absent before) was built, labelled with its context's hash.
    let hash = built.expect("inspect the image").expect("the image exists");
    assert_eq!(hash.len(), 64, "{hash}");

    // The unit runs this copy of the binary, with this home.
    let config = tempfile::tempdir().unwrap();
    let mut service_env = env.clone();
    service_env.push((
        "XDG_CONFIG_HOME".into(),
        config.path().display().to_string(),
    ));
    let output = installed(&exe, elsewhere.path(), &service_env)
        .args(["service", "install"])
        .output()
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr_of(&output));
    let unit = std::fs::read_to_string(config.path().join("systemd/user/talon.service")).unwrap();
    let exec = format!(
        "ExecStart=\"{}\" --home \"{}\" run",
        exe.display(),
        home.path().display()
    );
    assert!(unit.contains(&exec), "{unit}");
}

async fn remove_image(docker: &bollard::Docker, tag: &str) {
    let _ = docker
        .remove_image(
            tag,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}
