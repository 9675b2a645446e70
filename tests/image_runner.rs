//! The offline agent image and the agent runner, against the real Docker engine.
//!
//! Builds the image with `talon::image::ensure_image` (under a test tag, so a
//! user's own image is never replaced) and drives the runner inside a real
//! `--network none` container over stdin/stdout, playing the host's part of
//! the wire protocol. Without a reachable engine the tests are skipped with a
//! notice, except under `CI=true`, where that is a failure.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use bollard::Docker;
use talon::image::{self, build_context, ensure_image, image_hash, locate_sources};
use talon::messages::wire::{
    encode_line, ContentBlock, ErrorKind, HostToRunner, ModelFailure, ModelReply, ModelResult,
    Role, RunStatus, RunnerToHost, StartRun, PROTOCOL_VERSION,
};

use support::TEST_IMAGE;
/// Generous: a cold first run on a 2-core machine, not a timing assertion.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets up the engine and the image; `None` means skip.
async fn ready() -> Option<Docker> {
    support::docker_with_image().await
}

/// The agent runner in a real container, with the test playing the host.
struct Container {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Container {
    fn start() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "talon-test-runner-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut child = Command::new("docker")
            .args([
                "run",
                "--rm",
                "-i",
                "--network",
                "none",
                "--name",
                &name,
                TEST_IMAGE,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the docker CLI must be installed to run the container tests");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        // A reader thread, so every read can time out instead of hanging the test.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Container {
            name,
            child,
            stdin,
            lines,
        }
    }

    fn send_raw(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn send(&mut self, message: &HostToRunner) {
        let line = String::from_utf8(encode_line(message).unwrap()).unwrap();
        self.send_raw(&line);
    }

    fn recv(&mut self) -> RunnerToHost {
        let line = self
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no line from the runner within {LINE_TIMEOUT:?}: {e}"));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("runner wrote a bad line {line:?}: {e}"))
    }

    /// Closes stdin and waits for the container to exit.
    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the runner did not exit within {LINE_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // A failed test must not leave a container behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("docker")
                .args(["rm", "-f", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start_line(prompt: &str) -> HostToRunner {
    HostToRunner::Start(StartRun {
        protocol: PROTOCOL_VERSION,
        group_folder: "main".into(),
        chat_id: "term:local".into(),
        is_main: true,
        session_id: None,
        resume_at: None,
        prompt: prompt.into(),
        assistant_name: "Talon".into(),
        timezone: "UTC".into(),
        heartbeat_ms: None,
        runtime: Default::default(),
        model: None,
    })
}

fn expect_request(message: RunnerToHost, prompt: &str) -> u64 {
    match message {
        RunnerToHost::ModelRequest {
            request_id,
            request,
        } => {
            assert!(
                request.system.contains("Talon"),
                "system prompt: {}",
                request.system
            );
            let last = request.messages.last().unwrap();
            assert_eq!(last.role, Role::User);
            assert_eq!(
                last.content,
                vec![ContentBlock::Text {
                    text: prompt.into()
                }]
            );
            request_id
        }
        other => panic!("expected a model request, got {other:?}"),
    }
}

fn reply(text: &str) -> ModelResult {
    ModelResult::Ok(ModelReply {
        id: "msg_test_1".into(),
        content: vec![ContentBlock::Text { text: text.into() }],
        stop_reason: Some("end_turn".into()),
        input_tokens: 10,
        output_tokens: 1,
    })
}

/// Start, one successful "pong" turn, close, exit 0.
fn ping_pong(container: &mut Container) {
    container.send(&start_line("ping"));
    let request_id = expect_request(container.recv(), "ping");
    assert_eq!(request_id, 1);
    container.send(&HostToRunner::ModelResponse {
        request_id,
        result: reply("pong"),
    });
    assert_eq!(
        container.recv(),
        RunnerToHost::Output {
            text: "pong".into()
        }
    );
    match container.recv() {
        RunnerToHost::Result(result) => {
            assert_eq!(result.status, RunStatus::Success);
            // The anchor is the runner's transcript uuid, not the provider's id.
            let anchor = result.last_assistant_id.unwrap_or_default();
            assert!(
                anchor.len() == 32 && anchor.chars().all(|c| c.is_ascii_hexdigit()),
                "last_assistant_id is not a transcript uuid: {anchor:?}"
            );
            assert!(result.session_id.is_some_and(|id| !id.is_empty()));
            assert_eq!(result.error, None);
        }
        other => panic!("expected a result, got {other:?}"),
    }
    container.send(&HostToRunner::Close);
}

#[tokio::test]
async fn image_is_built_labelled_with_its_context_hash_and_not_rebuilt() {
    let Some(docker) = ready().await else { return };
    let _lock = support::build_lock();
    let label = image_hash(&docker, TEST_IMAGE).await.unwrap();
    let expected =
        tokio::task::spawn_blocking(|| build_context(&locate_sources().unwrap()).unwrap().hash)
            .await
            .unwrap();
    assert_eq!(label.as_deref(), Some(expected.as_str()));
    let mut progress = |_: &str| {};
    assert!(!ensure_image(&docker, TEST_IMAGE, true, &mut progress)
        .await
        .unwrap());
    assert!(!ensure_image(&docker, TEST_IMAGE, false, &mut progress)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_stale_image_is_rebuilt_only_when_asked() {
    let Some(docker) = ready().await else { return };
    let _lock = support::build_lock();
    const STALE: &str = "talon-agent:test-stale";
    let mut ctx =
        tokio::task::spawn_blocking(|| build_context(&locate_sources().unwrap()).unwrap())
            .await
            .unwrap();
    let current = ctx.hash.clone();
    ctx.hash = "stale".into();
    let mut progress = |_: &str| {};
    image::build_image(&docker, STALE, ctx, &mut progress)
        .await
        .unwrap();
    assert_eq!(
        image_hash(&docker, STALE).await.unwrap().as_deref(),
        Some("stale")
    );

    assert!(!ensure_image(&docker, STALE, false, &mut progress)
        .await
        .unwrap());
    assert!(ensure_image(&docker, STALE, true, &mut progress)
        .await
        .unwrap());
    assert_eq!(image_hash(&docker, STALE).await.unwrap(), Some(current));

    let _ = docker
        .remove_image(
            STALE,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

#[tokio::test]
async fn missing_image_has_no_hash() {
    let Some(docker) = support::docker_or_skip().await else {
        return;
    };
    let hash = image_hash(&docker, "talon-agent:no-such-tag-for-tests")
        .await
        .unwrap();
    assert_eq!(hash, None);
}

#[tokio::test]
async fn runner_answers_a_model_reply_in_a_real_container() {
    if ready().await.is_none() {
        return;
    }
    let mut container = Container::start();
    ping_pong(&mut container);
    let status = container.finish();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn garbage_and_empty_lines_before_start_are_skipped() {
    if ready().await.is_none() {
        return;
    }
    let mut container = Container::start();
    container.send_raw("this is not json\n\n{\"type\":\"bogus\"}\n");
    ping_pong(&mut container);
    let status = container.finish();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn rate_limited_model_error_becomes_an_error_result() {
    if ready().await.is_none() {
        return;
    }
    let mut container = Container::start();
    container.send(&start_line("ping"));
    let request_id = expect_request(container.recv(), "ping");
    let failure = ModelFailure {
        kind: ErrorKind::RateLimited,
        message: "slow down".into(),
    };
    container.send(&HostToRunner::ModelResponse {
        request_id,
        result: ModelResult::Error(failure),
    });
    match container.recv() {
        RunnerToHost::Result(result) => {
            assert_eq!(result.status, RunStatus::Error);
            assert_eq!(result.error_kind, Some(ErrorKind::RateLimited));
            assert_eq!(result.error.as_deref(), Some("slow down"));
        }
        other => panic!("expected an error result, got {other:?}"),
    }
    container.send(&HostToRunner::Close);
    let status = container.finish();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test]
async fn image_has_a_shell_and_runs_as_uid_1000() {
    if ready().await.is_none() {
        return;
    }
    let output = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            TEST_IMAGE,
        ])
        .args(["-c", "id -u; ls /bin/sh; ls -ld /tmp; pwd; echo $HOME"])
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI must be installed to run the container tests");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "/bin/sh");
    assert!(
        lines[2].starts_with("drwxrwxrwt"),
        "/tmp is not sticky and world-writable: {}",
        lines[2]
    );
    assert_eq!(lines[3], "/workspace/group");
    assert_eq!(lines[4], "/home/talon");
}
