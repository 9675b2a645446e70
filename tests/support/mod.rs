//! Shared test support: the fake Anthropic server, the real Docker engine and
//! agent image, and throwaway talon homes.
#![allow(dead_code)]

pub mod fake_anthropic;
pub mod fake_oauth;
pub mod fake_threads;
pub mod inproc;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bollard::Docker;

/// The image every Docker test uses, built from this checkout.
pub const TEST_IMAGE: &str = "talon-agent:test-image";

/// The engine, or `None` (after a notice) when it is unreachable outside CI.
/// With `CI=true` an unreachable engine fails the test.
pub async fn docker_or_skip() -> Option<Docker> {
    let connected = match Docker::connect_with_unix_defaults() {
        Ok(docker) => docker.negotiate_version().await,
        Err(error) => Err(error),
    };
    let connected = match connected {
        Ok(docker) => docker.ping().await.map(|_| docker),
        Err(e) => Err(e),
    };
    match connected {
        Ok(docker) => Some(docker),
        Err(error) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but the Docker engine is not reachable: {error}");
            }
            eprintln!("NOTICE: skipping a Docker test, the engine is not reachable: {error}");
            None
        }
    }
}

/// Serialises image builds across test threads and test binaries.
pub fn build_lock() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/talon-image.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .expect("open the image build lock");
    fs4::FileExt::lock(&file).expect("take the image build lock");
    file
}

/// The engine with the test image built from the current sources (the
/// runner built into this talon, and busybox), checked once per test binary.
pub async fn docker_with_image() -> Option<Docker> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ENSURED: AtomicBool = AtomicBool::new(false);
    let docker = docker_or_skip().await?;
    let _lock = build_lock();
    if !ENSURED.load(Ordering::SeqCst) {
        let mut progress = |line: &str| eprintln!("[image] {line}");
        talon::image::ensure_image(&docker, TEST_IMAGE, true, &mut progress)
            .await
            .unwrap_or_else(|e| panic!("cannot build the test image: {e}"));
        ENSURED.store(true, Ordering::SeqCst);
    }
    Some(docker)
}

/// The Claude Code image the tests build (never the user's own tag).
pub const CLAUDE_TEST_IMAGE: &str = "talon-agent-claude:test-image";

/// The Claude Code version `.ci/run` caches (from the pinned wheel).
pub const CLAUDE_CI_VERSION: &str = "2.1.332";

/// Where `.ci/run` caches the native Claude Code binary.
pub fn claude_cache_path() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(
        cache
            .join("talon")
            .join(format!("claude-code-{CLAUDE_CI_VERSION}"))
            .join("claude"),
    )
}

/// The native Claude Code binary for the tests: `TALON_CLAUDE_BIN`, else
/// the `.ci/run` cache. Missing, it is `None` after a notice, except under
/// `CI=true`, where that is a failure (never a silent skip).
pub fn claude_bin() -> Option<PathBuf> {
    let from_env = std::env::var_os(talon::image::CLAUDE_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let found = match &from_env {
        Some(path) => path.is_file().then(|| path.clone()),
        None => claude_cache_path().filter(|path| path.is_file()),
    };
    if found.is_none() {
        let looked = match &from_env {
            Some(path) => format!(
                "{}={} is not a file",
                talon::image::CLAUDE_BIN_ENV,
                path.display()
            ),
            None => format!(
                "{} is not set and {} does not exist",
                talon::image::CLAUDE_BIN_ENV,
                claude_cache_path().map_or("the cache path".into(), |p| p.display().to_string())
            ),
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but the Claude Code binary is missing ({looked}); .ci/run fetches it \
                 from the pinned claude-agent-sdk wheel and exports TALON_CLAUDE_BIN"
            );
        }
        eprintln!(
            "NOTICE: skipping a Claude Code image test, no binary ({looked}); run .ci/run or \
             set TALON_CLAUDE_BIN"
        );
    }
    found
}

/// The engine with the Claude Code test image built from the current
/// sources and [`claude_bin`] (checked once per test binary, like
/// [`docker_with_image`]); `None` means skip.
pub async fn docker_with_claude_image() -> Option<Docker> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ENSURED: AtomicBool = AtomicBool::new(false);
    let claude = claude_bin()?;
    let docker = docker_or_skip().await?;
    let _lock = build_lock();
    if !ENSURED.load(Ordering::SeqCst) {
        // The binary the build reads is the one found above.
        std::env::set_var(talon::image::CLAUDE_BIN_ENV, &claude);
        let mut progress = |line: &str| eprintln!("[claude image] {line}");
        talon::image::ensure_claude_image(&docker, CLAUDE_TEST_IMAGE, true, &mut progress)
            .await
            .unwrap_or_else(|e| panic!("cannot build the Claude Code test image: {e}"));
        ENSURED.store(true, Ordering::SeqCst);
    }
    Some(docker)
}

/// A throwaway TALON_HOME.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::Builder::new()
                .prefix("talon-test-")
                .tempdir()
                .expect("create a temp home"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn paths(&self) -> talon::paths::Paths {
        talon::paths::Paths::at(self.path())
    }
}

/// The environment a test host runs with: the fake model, the test image,
/// short retry delays, and nothing inherited that could change the outcome.
pub fn host_env(home: &Path, model_url: &str) -> Vec<(String, String)> {
    [
        ("TALON_HOME", home.display().to_string()),
        ("ANTHROPIC_API_KEY", "sk-ant-test-key".into()),
        ("ANTHROPIC_BASE_URL", model_url.into()),
        ("TALON_CONTAINER_IMAGE", TEST_IMAGE.into()),
        ("TALON_QUEUE_RETRY_BASE", "20ms".into()),
        ("TALON_PROVIDER_RETRY_BASE", "10ms".into()),
        ("TALON_CONTAINER_IDLE_TIMEOUT", "5s".into()),
        // Never the machine's own Claude login: tests choose their credential.
        (
            "TALON_AUTH_CREDENTIALS_FILE",
            home.join("no-claude-login.json").display().to_string(),
        ),
        ("TZ", "UTC".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A `talon` command with a clean environment plus `env`.
pub fn talon(env: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_talon"));
    command.env_clear();
    for key in ["PATH", "HOME", "USER", "DOCKER_HOST"] {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Runs `talon chat` with `input` on a pipe; gives up after `limit`.
pub fn piped_chat(env: &[(String, String)], input: &[u8], limit: Duration) -> Output {
    piped(talon(env).arg("chat"), input, limit)
}

/// Runs `command` with `input` on its stdin (then closed), killed after
/// `limit`; its output.
pub fn piped(command: &mut Command, input: &[u8], limit: Duration) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn talon chat");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let output = child.wait_with_output().expect("wait for talon chat");
    let _ = writer.join();
    drop(watchdog);
    output
}

/// The text of the last `<message>` in an XML prompt (what the user typed).
pub fn last_message_text(prompt: &str) -> String {
    let end = prompt.rfind("</message>").unwrap_or(prompt.len());
    let start = prompt[..end].rfind('>').map_or(0, |i| i + 1);
    prompt[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The last user turn's text of an Anthropic request body.
pub fn last_user_text(body: &serde_json::Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array())
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// Names of running containers of a talon home (by its instance label).
pub fn talon_containers(home: &Path) -> Vec<String> {
    let instance = talon::docker::instance_id(home);
    let output = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=talon.instance={instance}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `tag` offline from the test image plus `dockerfile_tail` (lines
/// after `FROM <test image>`), for runners that misbehave on purpose.
pub async fn derived_image(docker: &Docker, tag: &str, dockerfile_tail: &str) {
    let dockerfile = format!("FROM {TEST_IMAGE}\n{dockerfile_tail}\n");
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .expect("tar the Dockerfile");
    let tar = archive.into_inner().expect("finish the tar");
    let context = talon::image::BuildContext {
        tar,
        hash: "derived".into(),
    };
    let mut progress = |line: &str| eprintln!("[derived image] {line}");
    talon::image::build_image(docker, tag, context, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("cannot build {tag}: {e}"));
}

/// The run logs of a group, oldest first.
pub fn run_logs(home: &Path, folder: &str) -> Vec<String> {
    let dir = home.join("logs").join("containers").join(folder);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The value of `key: value` in a run log.
pub fn log_field<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(": "))
}

/// Waits (bounded) until the home has a container, and returns its name.
pub fn wait_for_container(home: &Path, limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(name) = talon_containers(home).into_iter().next() {
            return name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no container appeared"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `docker inspect` of a running container of the home, retried (bounded)
/// when the container listed goes away before it is inspected (a failed start
/// is retried by the host under a new name).
pub fn inspect_running_container(home: &Path, limit: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let instance = talon::docker::instance_id(home);
        let listed = Command::new("docker")
            .args([
                "ps",
                "--filter",
                &format!("label=talon.instance={instance}"),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .expect("docker ps");
        let names = String::from_utf8_lossy(&listed.stdout).to_string();
        if let Some(name) = names.lines().next() {
            let inspected = Command::new("docker")
                .args(["inspect", name])
                .output()
                .expect("docker inspect");
            if let Ok(info) = serde_json::from_slice::<serde_json::Value>(&inspected.stdout) {
                if info[0].is_object() {
                    return info[0].clone();
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running container to inspect"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `talon run` with no stdin (so no terminal channel), stdout discarded and
/// stderr piped for the test to read.
pub fn spawn_daemon(env: &[(String, String)]) -> std::process::Child {
    talon(env)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn talon run")
}

/// Polls `check` (bounded by `limit`) until it holds.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child's stderr, collected line by line by a thread as it comes.
pub fn collect_stderr(
    child: &mut std::process::Child,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}
