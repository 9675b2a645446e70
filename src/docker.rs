//! The Docker edge: connecting to the engine, and the pure decisions about
//! how an agent container is made (name, user, mounts, hardening).
//!
//! The decisions are plain functions over plain data so they are unit tested
//! without an engine; `actors::container` turns a [`RunSpec`] into bollard
//! calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::Docker;

/// Labels that mark a container as talon's (orphans are found by them).
pub const LABEL_MANAGED: &str = "talon.managed";
pub const LABEL_GROUP: &str = "talon.group";
/// Which talon home started the container: two hosts with different homes
/// (tests, several users) never touch each other's containers.
pub const LABEL_INSTANCE: &str = "talon.instance";

/// Where things appear inside the container.
pub const GROUP_MOUNT: &str = "/workspace/group";
pub const GLOBAL_MOUNT: &str = "/workspace/global";
pub const SESSION_MOUNT: &str = "/workspace/session";
pub const PROJECT_MOUNT: &str = "/workspace/project";

/// The unprivileged identity a root host runs containers as.
pub const FALLBACK_UID_GID: (u32, u32) = (1000, 1000);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine ({endpoint}): {reason}. \
         Start it (e.g. `systemctl start docker`) or point DOCKER_HOST at it"
    )]
    Unreachable { endpoint: String, reason: String },
}

/// Connects, negotiates the API version (old engines speak 1.41) and pings,
/// so an unreachable engine is one clear error up front.
pub async fn connect() -> Result<Docker, DockerError> {
    let endpoint =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let unreachable = |reason: String| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(e.to_string()))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    docker
        .ping()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
}

/// The hard timeout: `max(group timeout or container timeout, idle + grace)`
/// (grace 30 s by default). The gap guarantees the graceful close, sent at
/// idle, always gets its chance before the kill.
pub fn hard_timeout(
    group_timeout: Option<Duration>,
    container_timeout: Duration,
    idle_timeout: Duration,
    close_grace: Duration,
) -> Duration {
    group_timeout
        .unwrap_or(container_timeout)
        .max(idle_timeout.saturating_add(close_grace))
}

/// How often a runner should say it is alive: well inside the hard timeout
/// (a quarter of it), at most every 30 s and at least every second.
pub fn heartbeat_interval(hard_timeout: Duration) -> Duration {
    (hard_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// A short, stable id for a talon home directory (the instance label).
pub fn instance_id(home: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(home.as_os_str().as_encoded_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `talon-<folder>-<unix ms>`.
pub fn container_name(folder: &str, now_ms: i64) -> String {
    format!("talon-{folder}-{now_ms}")
}

/// The uid:gid the container runs as: the host user's own, so files the agent
/// writes belong to them; never root, even when the host runs as root.
pub fn run_user(host_uid: u32, host_gid: u32, run_as: Option<(u32, u32)>) -> (u32, u32) {
    if host_uid != 0 {
        return (host_uid, host_gid);
    }
    match run_as {
        Some((uid, gid)) if uid != 0 => (uid, if gid == 0 { uid } else { gid }),
        _ => FALLBACK_UID_GID,
    }
}

/// Parses `uid:gid` (or a bare `uid`).
pub fn parse_uid_gid(text: &str) -> Option<(u32, u32)> {
    match text.split_once(':') {
        Some((u, g)) => Some((u.trim().parse().ok()?, g.trim().parse().ok()?)),
        None => {
            let uid = text.trim().parse().ok()?;
            Some((uid, uid))
        }
    }
}

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl Mount {
    fn bind(&self) -> String {
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("{}:{}:{mode}", self.host.display(), self.container)
    }
}

/// The fixed mounts of a group's container (SPEC §5): its folder rw, the
/// global folder (rw for main only), its session dir rw, and the project
/// root read-only for main only.
pub fn base_mounts(
    group_dir: PathBuf,
    global_dir: PathBuf,
    session_dir: PathBuf,
    project_root: Option<PathBuf>,
    is_main: bool,
) -> Vec<Mount> {
    let mut mounts = vec![
        Mount {
            host: group_dir,
            container: GROUP_MOUNT.into(),
            read_only: false,
        },
        Mount {
            host: global_dir,
            container: GLOBAL_MOUNT.into(),
            read_only: !is_main,
        },
        Mount {
            host: session_dir,
            container: SESSION_MOUNT.into(),
            read_only: false,
        },
    ];
    if let (true, Some(root)) = (is_main, project_root) {
        mounts.push(Mount {
            host: root,
            container: PROJECT_MOUNT.into(),
            read_only: true,
        });
    }
    mounts
}

/// Everything that decides how one agent container is created.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub group_folder: String,
    /// Value of [`LABEL_INSTANCE`].
    pub instance: String,
    pub user: (u32, u32),
    pub mounts: Vec<Mount>,
    /// `KEY=value` pairs; only TZ and what a group's config names.
    pub env: Vec<String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub tmpfs_bytes: u64,
    /// `none` unless the group's config grants network.
    pub network: String,
}

/// The hardened create request for a [`RunSpec`].
pub fn create_body(spec: &RunSpec) -> ContainerCreateBody {
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_GROUP.to_string(), spec.group_folder.clone()),
        (LABEL_INSTANCE.to_string(), spec.instance.clone()),
    ]);
    let tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,size={}", spec.tmpfs_bytes),
    )]);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(format!("{}:{}", spec.user.0, spec.user.1)),
        env: Some(spec.env.clone()),
        labels: Some(labels),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        working_dir: Some(GROUP_MOUNT.into()),
        host_config: Some(HostConfig {
            binds: Some(spec.mounts.iter().map(Mount::bind).collect()),
            network_mode: Some(spec.network.clone()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            pids_limit: Some(spec.pids_limit),
            memory: Some(spec.memory_bytes),
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            init: Some(false),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_well_inside_the_hard_timeout() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat_interval(s(1830)), s(30));
        assert_eq!(heartbeat_interval(s(8)), s(2));
        assert_eq!(heartbeat_interval(Duration::from_millis(1500)), s(1));
    }

    #[test]
    fn the_hard_timeout_always_leaves_room_for_the_graceful_close() {
        let min = Duration::from_secs(60);
        let grace = Duration::from_secs(30);
        let hard_timeout = |g, c, i| hard_timeout(g, c, i, grace);
        // Equal idle and hard timeouts (the seeds' bug) get the 30 s gap.
        assert_eq!(
            hard_timeout(None, 30 * min, 30 * min),
            30 * min + Duration::from_secs(30)
        );
        assert_eq!(hard_timeout(None, 30 * min, 5 * min), 30 * min);
        assert_eq!(hard_timeout(Some(60 * min), 30 * min, 5 * min), 60 * min);
        assert_eq!(
            hard_timeout(Some(min), 30 * min, 5 * min),
            5 * min + Duration::from_secs(30)
        );
    }

    #[test]
    fn names_follow_the_convention() {
        assert_eq!(container_name("main", 1234), "talon-main-1234");
    }

    #[test]
    fn the_container_user_is_never_root() {
        assert_eq!(run_user(1001, 1001, None), (1001, 1001));
        assert_eq!(run_user(0, 0, None), FALLBACK_UID_GID);
        assert_eq!(run_user(0, 0, Some((0, 0))), FALLBACK_UID_GID);
        assert_eq!(run_user(0, 0, Some((2000, 0))), (2000, 2000));
        assert_eq!(run_user(0, 0, Some((2000, 3000))), (2000, 3000));
        assert_eq!(parse_uid_gid("1000:1001"), Some((1000, 1001)));
        assert_eq!(parse_uid_gid("1500"), Some((1500, 1500)));
        assert_eq!(parse_uid_gid("x:1"), None);
    }

    #[test]
    fn only_main_writes_global_and_sees_the_project() {
        let main = base_mounts(
            "/g/main".into(),
            "/g/global".into(),
            "/d/s/main".into(),
            Some("/p".into()),
            true,
        );
        assert_eq!(main.len(), 4);
        assert!(!main[1].read_only);
        assert!(main
            .iter()
            .any(|m| m.container == PROJECT_MOUNT && m.read_only));
        let other = base_mounts(
            "/g/x".into(),
            "/g/global".into(),
            "/d/s/x".into(),
            Some("/p".into()),
            false,
        );
        assert_eq!(other.len(), 3);
        assert!(other[1].read_only);
    }

    #[test]
    fn the_create_request_is_hardened() {
        let spec = RunSpec {
            name: "talon-x-1".into(),
            image: "talon-agent:latest".into(),
            group_folder: "x".into(),
            instance: "i".into(),
            user: (1000, 1000),
            mounts: base_mounts("/g".into(), "/gl".into(), "/s".into(), None, false),
            env: vec!["TZ=UTC".into()],
            memory_bytes: 512 << 20,
            nano_cpus: 1_000_000_000,
            pids_limit: 128,
            tmpfs_bytes: 64 << 20,
            network: "none".into(),
        };
        let body = create_body(&spec);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.pids_limit, Some(128));
        assert!(host
            .security_opt
            .unwrap()
            .contains(&"no-new-privileges:true".to_string()));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            host.binds.unwrap(),
            vec![
                "/g:/workspace/group:rw",
                "/gl:/workspace/global:ro",
                "/s:/workspace/session:rw"
            ]
        );
        assert_eq!(body.labels.unwrap()[LABEL_MANAGED], "true");
    }
}
