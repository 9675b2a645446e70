//! Running under systemd (SPEC §12): the unit file, `talon service install`,
//! and the notify protocol (`READY=1` once serving, `WATCHDOG=1` while the
//! message path answers, `STOPPING=1` on the way out).
//!
//! The watchdog is fed only when the router answers within half the
//! watchdog interval, so a wedged host is killed and restarted by systemd
//! instead of sitting there looking alive. Outside systemd (no
//! `NOTIFY_SOCKET`) all of this does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::actors::router::{RouterMsg, ROUTER};

/// The systemd user unit for talon at `exe`, serving the home `home`.
pub fn unit_text(exe: &Path, home: &Path) -> String {
    format!(
        "[Unit]
Description=talon personal assistant host
After=network-online.target docker.service
Wants=network-online.target
# A crash loop of the whole host is paced here; channel adapters also keep
# their own persisted backoff (data/channel-restarts.json).
StartLimitIntervalSec=600
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
ExecStart=\"{exe}\" --home \"{home}\" run
# SIGHUP re-reads the configuration and restarts the actor tree with it;
# an invalid file is reported and the running configuration kept.
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM drains: containers get their close sentinel, then are removed.
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=on-failure
RestartSec=5
# Fed while the router answers; a wedged host is restarted.
WatchdogSec=60
# Sockets to providers and platforms, Docker attach streams, the store: the
# host bounds its in-flight requests ([limits]), and this leaves ample room.
LimitNOFILE=65536

[Install]
WantedBy=default.target
",
        exe = exe.display(),
        home = home.display()
    )
}

/// Where a user unit lives: `$XDG_CONFIG_HOME/systemd/user/talon.service`.
pub fn unit_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("systemd").join("user").join("talon.service"))
}

/// Writes the unit for this binary and `home`; returns where.
pub fn install(home: &Path) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = unit_path()
        .ok_or_else(|| std::io::Error::other("neither XDG_CONFIG_HOME nor HOME is set"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, unit_text(&exe, home))?;
    Ok(path)
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the host is serving, and starts feeding its watchdog if it
/// has one. The returned task ends with the process.
pub fn ready() -> Option<tokio::task::JoinHandle<()>> {
    notify(NotifyState::Ready);
    let interval = sd_notify::watchdog_enabled()?;
    Some(tokio::spawn(feed_watchdog(interval / 2)))
}

/// Tells systemd a reload (SIGHUP) has begun.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // systemd 253+ wants the reload's start time with it.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the reload is done and talon serves again.
pub fn reloaded() {
    notify(NotifyState::Ready);
}

/// Tells systemd the host is stopping (so a slow drain is not a hang).
pub fn stopping() {
    notify(NotifyState::Stopping);
}

async fn feed_watchdog(every: Duration) {
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        if router_answers(every).await {
            notify(NotifyState::Watchdog);
        } else {
            tracing::warn!("the router did not answer; systemd's watchdog is not fed");
        }
    }
}

async fn router_answers(within: Duration) -> bool {
    let Some(cell) = ractor::registry::where_is(ROUTER) else {
        return false;
    };
    let router: ractor::ActorRef<RouterMsg> = cell.into();
    let millis = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
    ractor::call_t!(router, RouterMsg::Inspect, millis).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_talon_as_a_notify_service_with_a_watchdog() {
        let text = unit_text(
            Path::new("/usr/local/bin/talon"),
            Path::new("/home/ann/.local/share/talon"),
        );
        assert!(text.contains("Type=notify\n"));
        assert!(text.contains("WatchdogSec=60\n"));
        assert!(text.contains("Restart=on-failure\n"));
        assert!(text.contains("LimitNOFILE=65536\n"));
        assert!(text.contains(
            "ExecStart=\"/usr/local/bin/talon\" --home \"/home/ann/.local/share/talon\" run\n"
        ));
    }

    #[test]
    fn the_shipped_unit_is_the_generated_one() {
        let shipped = include_str!("../config/talon.service");
        let generated = unit_text(
            Path::new("/usr/local/bin/talon"),
            Path::new("%h/.local/share/talon"),
        );
        assert_eq!(shipped, generated, "regenerate config/talon.service");
    }
}
