//! What the runner does as the container's PID 1, against its own tools.
//!
//! The agent's `bash` tool runs as the runner's uid, so it is treated as an
//! attacker. The runner makes itself not dumpable ([`forbid_dumping`]): a
//! process of the same uid can then neither ptrace it nor open
//! `/proc/1/fd/0` or `/proc/1/fd/1`, the protocol stream to the host.
//!
//! As PID 1 it also inherits every orphan: each `cmd &` a tool leaves behind
//! ends as a zombie of the runner, and zombies fill the pids limit until
//! nothing can fork. [`start_reaper`] runs a thread that reaps them. It must
//! never take a child the runner waits on itself (the bash tool's shell,
//! collected by `std::process::Child`): such children are spawned with
//! [`spawn_own`], which registers the pid under the lock the reaper holds
//! for a whole scan, so the reaper cannot see one before it is registered.
//! The reaper only calls `waitpid(pid, WNOHANG)` on zombies whose parent is
//! the runner and whose pid is not registered; never `waitpid(-1)`.

use std::collections::BTreeSet;
use std::ffi::{c_int, c_ulong};
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

// The runner takes no dependencies beyond serde: std already links libc, so
// declaring the two calls it needs is enough.
extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
}
#[cfg(test)]
const PR_GET_DUMPABLE: c_int = 3;
const PR_SET_DUMPABLE: c_int = 4;
const WNOHANG: c_int = 1;

/// How often the reaper looks for zombies.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Pids of the children the runner waits on itself.
static OWN_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn own_children() -> MutexGuard<'static, BTreeSet<u32>> {
    // A panic while the lock was held cannot leave the set half-changed.
    OWN_CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process not dumpable (see the module doc). It lasts until an
/// `execve`, which the runner never does; the tools it starts are dumpable
/// again, as they should be.
pub fn forbid_dumping() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE) reads integer arguments only; the
    // unused ones are passed as zero, as the man page asks.
    let done = unsafe {
        prctl(
            PR_SET_DUMPABLE,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process is dumpable (`PR_GET_DUMPABLE`).
#[cfg(test)]
pub fn is_dumpable() -> bool {
    // SAFETY: as in `forbid_dumping`.
    unsafe {
        prctl(
            PR_GET_DUMPABLE,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
            0 as c_ulong,
        ) != 0
    }
}

/// The registration of a child the runner waits on itself. Dropping it
/// unregisters the pid, so keep it until the child has been waited; a child
/// given up on unwaited is then left to the reaper.
#[derive(Debug)]
pub struct OwnChild {
    pid: u32,
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        own_children().remove(&self.pid);
    }
}

/// Spawns `command` as a child the reaper leaves alone. The lock is held
/// across the spawn: a child that exits at once is a zombie before `spawn`
/// returns, and the reaper must not take it in between.
pub fn spawn_own(command: &mut Command) -> io::Result<(Child, OwnChild)> {
    let mut own = own_children();
    let child = command.spawn()?;
    let pid = child.id();
    own.insert(pid);
    Ok((child, OwnChild { pid }))
}

/// Starts the reaper thread; only meant for PID 1, where orphans land.
pub fn start_reaper() -> io::Result<()> {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            std::thread::sleep(REAP_EVERY);
            reap_orphans();
        })
        .map(drop)
}

/// What the reaper reads from a `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: u8,
    pub ppid: u32,
}

/// Parses `pid (comm) state ppid …`. The comm is whatever name the process
/// gave itself, spaces, `)` and non-UTF-8 bytes included, so it ends at the
/// line's last `)`; the fields after it are plain ASCII.
pub fn parse_stat(line: &[u8]) -> Option<ProcStat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(&line[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut rest = std::str::from_utf8(&line[close + 1..])
        .ok()?
        .split_ascii_whitespace();
    let state = match rest.next()?.as_bytes() {
        [state] => *state,
        _ => return None,
    };
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat { pid, state, ppid })
}

/// The pids to reap: zombies whose parent is `me`, except the children the
/// runner waits on itself.
pub fn orphans_to_reap(
    stats: impl IntoIterator<Item = ProcStat>,
    me: u32,
    own: &BTreeSet<u32>,
) -> Vec<u32> {
    stats
        .into_iter()
        .filter(|s| s.state == b'Z' && s.ppid == me && s.pid != 0 && !own.contains(&s.pid))
        .map(|s| s.pid)
        .collect()
}

/// One scan of `/proc`: reaps the zombies [`orphans_to_reap`] picks and
/// returns how many were reaped. Holds the registry's lock throughout, so
/// no child can be registered while it decides.
pub fn reap_orphans() -> usize {
    let own = own_children();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let stats = entries.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
    });
    let mut reaped = 0;
    for pid in orphans_to_reap(stats, std::process::id(), &own) {
        // Only a positive pid names one child: 0 and -1 would take any.
        let Ok(pid) = c_int::try_from(pid) else {
            continue;
        };
        let mut status: c_int = 0;
        // SAFETY: waitpid writes one int through a pointer to a live local.
        if unsafe { waitpid(pid, &mut status, WNOHANG) } == pid {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn stat(pid: u32, state: u8, ppid: u32) -> ProcStat {
        ProcStat { pid, state, ppid }
    }

    #[test]
    fn stat_lines_parse_whatever_the_comm_holds() {
        assert_eq!(
            parse_stat(b"42 (sh) Z 1 42 42 0 -1 4194308 0 0\n"),
            Some(stat(42, b'Z', 1))
        );
        // Spaces, parentheses and a fake field list inside the name.
        assert_eq!(
            parse_stat(b"7 (a b) S 99 (x) ) R 1 2 3\n"),
            Some(stat(7, b'R', 1))
        );
        let mut odd = b"8 (\xff\xfe".to_vec();
        odd.extend_from_slice(b") Z 1 8 8\n");
        assert_eq!(parse_stat(&odd), Some(stat(8, b'Z', 1)));
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"x (sh) Z 1"), None);
        assert_eq!(parse_stat(b"9 (sh) Z"), None);
        assert_eq!(parse_stat(b"9 (sh) ZZ 1"), None);
        assert_eq!(parse_stat(b"9 )sh( Z 1"), None);
    }

    #[test]
    fn only_unregistered_zombie_children_are_reaped() {
        let own: BTreeSet<u32> = [20].into_iter().collect();
        let stats = [
            stat(10, b'Z', 1), // an orphan's zombie: reaped
            stat(11, b'S', 1), // still running
            stat(12, b'Z', 5), // someone else's child
            stat(20, b'Z', 1), // the bash tool's shell: its Child waits for it
            stat(0, b'Z', 1),  // never a real child
            stat(13, b'Z', 1),
        ];
        assert_eq!(orphans_to_reap(stats, 1, &own), vec![10, 13]);
    }

    fn state_of(pid: u32) -> Option<u8> {
        parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?).map(|s| s.state)
    }

    fn wait_for_zombie(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state_of(pid) != Some(b'Z') {
            assert!(Instant::now() < deadline, "{pid} never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_reaper_takes_orphans_but_never_a_registered_child() {
        // An unregistered child left unwaited, as an orphan is.
        let stray = Command::new("true").spawn().unwrap();
        let stray_pid = stray.id();
        drop(stray);
        let (mut own, registration) = spawn_own(&mut Command::new("true")).unwrap();
        wait_for_zombie(stray_pid);
        wait_for_zombie(own.id());
        assert!(reap_orphans() >= 1);
        assert_eq!(state_of(stray_pid), None, "the orphan was reaped");
        // The registered child is still there for its own wait.
        assert!(own.wait().unwrap().success());
        drop(registration);
        assert!(!own_children().contains(&own.id()));
    }

    #[test]
    fn forbidding_dumps_hides_the_runner_from_its_tools() {
        forbid_dumping().unwrap();
        assert!(!is_dumpable());
        let ctx = crate::tools::ToolContext {
            workdir: std::env::temp_dir(),
            ..crate::tools::ToolContext::container()
        };
        let probe = crate::tools::run_local(
            &ctx,
            "bash",
            &serde_json::json!({
                "command": "id -u; ls /proc/$PPID/fd >/dev/null 2>&1 && echo open || echo closed"
            }),
        );
        let lines: Vec<&str> = probe.content.lines().collect();
        // Root keeps CAP_SYS_PTRACE here; the container's user is never root.
        if lines.first() != Some(&"0") {
            assert_eq!(lines.get(1), Some(&"closed"), "{probe:?}");
        }
    }
}
