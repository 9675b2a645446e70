//! Daily log files with a fixed current name.
//!
//! The file being written always has the plain name (`talon.log`,
//! `routing-metrics.jsonl`). At the first write after local midnight, or at
//! start when the existing file was last written on an earlier day, it is
//! renamed to the day it covers (`talon.2026-12-02.log`) and a new plain
//! file is opened; the [`KEEP`] newest dated files of a log are kept, older
//! ones deleted. Only names of the exact form `<stem>.<YYYY-MM-DD>.<ext>`
//! are ever deleted.
//!
//! Why not tracing-appender's own `rolling`: with daily rotation the file it
//! writes *is* the dated one (`talon.2026-12-02.log`); it has no fixed name
//! for the current file, so `logs/talon.log` (which the README and `talon
//! doctor` point users at) would not exist. It also rotates at UTC midnight
//! rather than local midnight, and its pruning matches by prefix and suffix
//! alone, so `talon` + `log` also counts (and deletes) `talon.error.*.log`
//! files. The rotation decisions here are small pure functions
//! ([`rotation_day`], [`to_prune`], [`next_midnight`]) with the file system
//! work around them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Local, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};

/// Dated files kept per log.
pub const KEEP: usize = 7;

/// A log's file names: `<stem>.<ext>` for the current file,
/// `<stem>.<YYYY-MM-DD>.<ext>` for a day it covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogName {
    stem: String,
    ext: String,
}

impl LogName {
    pub fn new(stem: &str, ext: &str) -> LogName {
        LogName {
            stem: stem.to_string(),
            ext: ext.to_string(),
        }
    }

    /// The log whose current file is `file_name`: the extension is what
    /// follows the last dot (`talon.error.log` is `talon.error` + `log`).
    pub fn of_file(file_name: &str) -> Option<LogName> {
        let (stem, ext) = file_name.rsplit_once('.')?;
        (!stem.is_empty() && !ext.is_empty()).then(|| LogName::new(stem, ext))
    }

    /// The current file's name.
    pub fn current(&self) -> String {
        format!("{}.{}", self.stem, self.ext)
    }

    /// The name of the file that covered `day`.
    pub fn rotated(&self, day: NaiveDate) -> String {
        format!("{}.{}.{}", self.stem, day.format("%Y-%m-%d"), self.ext)
    }

    /// The day a dated file of this log covers, if `file_name` is exactly
    /// one (`talon.error.2026-12-02.log` is not one of `talon`'s).
    pub fn day_of(&self, file_name: &str) -> Option<NaiveDate> {
        let date = file_name
            .strip_prefix(self.stem.as_str())?
            .strip_prefix('.')?
            .strip_suffix(self.ext.as_str())?
            .strip_suffix('.')?;
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        // Only the canonical spelling (no `2026-1-2`, no signs or spaces).
        (day.format("%Y-%m-%d").to_string() == date).then_some(day)
    }
}

/// The day a current file last written on `written` is renamed to when it
/// is opened or written on `today`: `None` while it is still today's (or a
/// clock that went back makes it look like a later day's).
pub fn rotation_day(written: NaiveDate, today: NaiveDate) -> Option<NaiveDate> {
    (written < today).then_some(written)
}

/// The dated files of `log` among `names` to delete so that the `keep`
/// newest stay; every other name is left alone.
pub fn to_prune<'a>(
    log: &LogName,
    names: impl IntoIterator<Item = &'a str>,
    keep: usize,
) -> Vec<String> {
    let mut dated: Vec<(NaiveDate, &str)> = names
        .into_iter()
        .filter_map(|name| Some((log.day_of(name)?, name)))
        .collect();
    dated.sort_unstable_by(|a, b| b.cmp(a));
    dated
        .into_iter()
        .skip(keep)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The start of the day after `now`'s day in its timezone: midnight, or the
/// first quarter hour that exists when a clock change skips midnight.
pub fn next_midnight<Tz: TimeZone>(now: &DateTime<Tz>) -> DateTime<Tz> {
    let tz = now.timezone();
    if let Some(day) = now.date_naive().succ_opt() {
        for quarter in 0..24 * 4 {
            let time = NaiveTime::MIN + TimeDelta::minutes(15 * quarter);
            if let Some(start) = tz.from_local_datetime(&day.and_time(time)).earliest() {
                return start;
            }
        }
    }
    // Unreachable for real zones; a day later is a safe answer.
    now.clone() + TimeDelta::days(1)
}

fn day_in<Tz: TimeZone>(tz: &Tz, at: SystemTime) -> NaiveDate {
    tz.from_utc_datetime(&DateTime::<Utc>::from(at).naive_utc())
        .date_naive()
}

fn midnight_after<Tz: TimeZone>(tz: &Tz, at: SystemTime) -> SystemTime {
    let now = tz.from_utc_datetime(&DateTime::<Utc>::from(at).naive_utc());
    SystemTime::from(next_midnight(&now))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Moves `from` to `to` without ever replacing a file already there: if
/// `to` exists (a restart after the clock went back), `from`'s lines are
/// appended to it.
fn move_into(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => return fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        // A file system without hard links: rename, if nothing is there.
        Err(_) => match fs::symlink_metadata(to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return fs::rename(from, to),
            _ => {}
        },
    }
    // Into a regular file only, never through a link planted there.
    let mut target = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    io::copy(&mut File::open(from)?, &mut target)?;
    fs::remove_file(from)
}

/// Deletes the dated files of `log` in `dir` beyond the `keep` newest;
/// returns the paths deleted. Only regular files are touched.
pub fn prune(dir: &Path, log: &LogName, keep: usize) -> io::Result<Vec<PathBuf>> {
    let names: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    let mut deleted = Vec::new();
    for name in to_prune(log, names.iter().map(String::as_str), keep) {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Renames `dir/<log's current file>` to the day it covers when it was last
/// written on an earlier day (in `tz`) than `now`, then prunes; returns the
/// dated path it was renamed to. A missing or empty file stays as it is.
pub fn rotate_stale<Tz: TimeZone>(
    dir: &Path,
    log: &LogName,
    keep: usize,
    tz: &Tz,
    now: SystemTime,
) -> io::Result<Option<PathBuf>> {
    let current = dir.join(log.current());
    let meta = match fs::symlink_metadata(&current) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let Some(day) = rotation_day(day_in(tz, meta.modified()?), day_in(tz, now)) else {
        return Ok(None);
    };
    let rotated = dir.join(log.rotated(day));
    move_into(&current, &rotated)?;
    prune(dir, log, keep)?;
    Ok(Some(rotated))
}

/// Appends `bytes` to the log file at `path` (named `<stem>.<ext>`), first
/// rotating it (local days, [`KEEP`] kept) when it was last written on an
/// earlier day. For logs written a line at a time by opening the file, as
/// the routing log is; a failed rotation does not stop the write.
pub fn append_rotating(path: &Path, bytes: &[u8]) -> io::Result<()> {
    append_rotating_at(path, bytes, &Local, SystemTime::now())
}

fn append_rotating_at<Tz: TimeZone>(
    path: &Path,
    bytes: &[u8],
    tz: &Tz,
    now: SystemTime,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let log = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(LogName::of_file);
    if let Some(log) = log {
        if let Err(err) = rotate_stale(dir, &log, KEEP, tz, now) {
            tracing::warn!(path = %path.display(), %err, "cannot rotate the log");
        }
    }
    open_append(path)?.write_all(bytes)
}

/// A log file writer that rotates daily (see the module docs). Meant to be
/// wrapped in `tracing_appender::non_blocking`, which writes from its own
/// thread; rotation problems go to stderr (never to tracing, which would
/// write them back here).
pub struct DailyFile<Tz: TimeZone = Local> {
    dir: PathBuf,
    log: LogName,
    keep: usize,
    tz: Tz,
    file: File,
    /// The next local midnight: the first write at or after it rotates.
    rotate_at: SystemTime,
}

impl DailyFile<Local> {
    /// Opens `dir/<log's current file>` for appending (creating `dir`),
    /// rotating a file left from an earlier day first.
    pub fn open(dir: &Path, log: LogName, keep: usize) -> io::Result<DailyFile<Local>> {
        DailyFile::open_in(dir, log, keep, Local, SystemTime::now())
    }
}

impl<Tz: TimeZone> DailyFile<Tz> {
    /// [`DailyFile::open`] with days in `tz`, as of `now`.
    pub fn open_in(
        dir: &Path,
        log: LogName,
        keep: usize,
        tz: Tz,
        now: SystemTime,
    ) -> io::Result<DailyFile<Tz>> {
        fs::create_dir_all(dir)?;
        if let Err(err) = rotate_stale(dir, &log, keep, &tz, now) {
            eprintln!("talon: cannot rotate {}: {err}", log.current());
        }
        if let Err(err) = prune(dir, &log, keep) {
            eprintln!("talon: cannot prune old {} files: {err}", log.current());
        }
        let file = open_append(&dir.join(log.current()))?;
        let rotate_at = midnight_after(&tz, now);
        Ok(DailyFile {
            dir: dir.to_path_buf(),
            log,
            keep,
            tz,
            file,
            rotate_at,
        })
    }

    /// The current file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.log.current())
    }

    /// [`Write::write`] as of `now`.
    pub fn write_at(&mut self, buf: &[u8], now: SystemTime) -> io::Result<usize> {
        if now >= self.rotate_at {
            self.roll(now);
        }
        self.file.write(buf)
    }

    /// At the first write of a new day: the current file goes to its dated
    /// name (unless it is still today's: nothing was written since
    /// midnight, or the clock went back) and a fresh one opens; so does one
    /// when the plain name no longer is the file open here (deleted by
    /// hand). On any failure the old file stays in use: no line is lost.
    fn roll(&mut self, now: SystemTime) {
        self.rotate_at = midnight_after(&self.tz, now);
        if let Err(err) = rotate_stale(&self.dir, &self.log, self.keep, &self.tz, now) {
            eprintln!("talon: cannot rotate {}: {err}", self.log.current());
        }
        if self.is_current() {
            return;
        }
        match open_append(&self.path()) {
            Ok(file) => self.file = file,
            Err(err) => eprintln!("talon: cannot open a new {}: {err}", self.log.current()),
        }
    }

    /// Whether the plain name is the file open here.
    fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), fs::metadata(self.path())) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }
}

impl<Tz: TimeZone> Write for DailyFile<Tz> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(buf, SystemTime::now())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    /// A UTC instant, as a `SystemTime`.
    fn at(text: &str) -> SystemTime {
        let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
        SystemTime::from(Utc.from_utc_datetime(&time))
    }

    fn talon() -> LogName {
        LogName::new("talon", "log")
    }

    fn set_mtime(path: &Path, when: SystemTime) {
        File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn names_current_dated_and_parsed_back_exactly() {
        let log = talon();
        assert_eq!(log.current(), "talon.log");
        assert_eq!(log.rotated(day("2026-12-02")), "talon.2026-12-02.log");
        assert_eq!(log.day_of("talon.2026-12-02.log"), Some(day("2026-12-02")));
        for not_ours in [
            "talon.log",
            "talon.error.2026-12-02.log",
            "talon.2026-12-2.log",
            "talon.2026-13-02.log",
            "talon.+2026-12-02.log",
            "talon.2026-12-02.log.gz",
            "talon.2026-12-02.jsonl",
            "xtalon.2026-12-02.log",
            "talon2026-12-02.log",
            "talon.2026-12-02log",
            "talon. 2026-12-02.log",
        ] {
            assert_eq!(log.day_of(not_ours), None, "{not_ours}");
        }
        let errors = LogName::of_file("talon.error.log").unwrap();
        assert_eq!(errors, LogName::new("talon.error", "log"));
        assert_eq!(
            errors.day_of("talon.error.2026-12-02.log"),
            Some(day("2026-12-02"))
        );
        let routing = LogName::of_file("routing-metrics.jsonl").unwrap();
        assert_eq!(
            routing.rotated(day("2027-01-31")),
            "routing-metrics.2027-01-31.jsonl"
        );
        assert_eq!(LogName::of_file("noext"), None);
        assert_eq!(LogName::of_file(".log"), None);
        assert_eq!(LogName::of_file("talon."), None);
    }

    #[test]
    fn a_file_is_rotated_as_the_day_it_was_last_written_once_that_day_is_over() {
        assert_eq!(
            rotation_day(day("2026-12-02"), day("2026-12-03")),
            Some(day("2026-12-02"))
        );
        // Days without writes in between: still named for the day it covers.
        assert_eq!(
            rotation_day(day("2026-11-28"), day("2026-12-03")),
            Some(day("2026-11-28"))
        );
        assert_eq!(rotation_day(day("2026-12-03"), day("2026-12-03")), None);
        // A clock that went back: never rotated "into the future".
        assert_eq!(rotation_day(day("2026-12-04"), day("2026-12-03")), None);
    }

    #[test]
    fn pruning_keeps_the_newest_dated_files_and_never_touches_other_names() {
        let log = talon();
        let mut names: Vec<String> = (1..=10)
            .map(|d| log.rotated(day(&format!("2026-12-{d:02}"))))
            .collect();
        names.extend(
            [
                "talon.log",
                "talon.error.2026-11-01.log",
                "talon.2026-11-01.log.bak",
                "routing-metrics.2026-11-01.jsonl",
                "notes.txt",
            ]
            .map(String::from),
        );
        // Listing order does not matter.
        names.reverse();
        let mut pruned = to_prune(&log, names.iter().map(String::as_str), KEEP);
        pruned.sort();
        assert_eq!(
            pruned,
            vec![
                "talon.2026-12-01.log",
                "talon.2026-12-02.log",
                "talon.2026-12-03.log"
            ]
        );
        assert!(to_prune(&log, names.iter().map(String::as_str), 20).is_empty());
        assert_eq!(to_prune(&log, ["talon.2026-12-01.log"], 0).len(), 1);
    }

    #[test]
    fn the_next_midnight_is_in_the_local_zone_even_when_a_clock_change_skips_it() {
        let utc = Utc.with_ymd_and_hms(2026, 12, 2, 23, 59, 59).unwrap();
        assert_eq!(
            next_midnight(&utc),
            Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap()
        );
        let seoul = chrono_tz::Asia::Seoul
            .with_ymd_and_hms(2026, 12, 2, 0, 0, 0)
            .unwrap();
        let next = next_midnight(&seoul);
        assert_eq!(next.naive_local().to_string(), "2026-12-03 00:00:00");
        // 15:00 UTC, not 00:00 UTC.
        assert_eq!(next.naive_utc().to_string(), "2026-12-02 15:00:00");
        // São Paulo moved its clocks from 00:00 to 01:00 on 2018-11-04.
        let sao_paulo = chrono_tz::America::Sao_Paulo
            .with_ymd_and_hms(2018, 11, 3, 12, 0, 0)
            .unwrap();
        assert_eq!(
            next_midnight(&sao_paulo).naive_local().to_string(),
            "2018-11-04 01:00:00"
        );
    }

    #[test]
    fn a_file_left_from_an_earlier_day_is_rotated_at_start_and_a_current_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("talon.log");
        fs::write(&current, "from the first\n").unwrap();
        set_mtime(&current, at("2026-12-01 22:00:00"));
        let mut log =
            DailyFile::open_in(dir.path(), talon(), KEEP, Utc, at("2026-12-03 08:00:00")).unwrap();
        log.write_at(b"today\n", at("2026-12-03 08:00:01")).unwrap();
        assert_eq!(names_in(dir.path()), ["talon.2026-12-01.log", "talon.log"]);
        assert_eq!(
            fs::read_to_string(dir.path().join("talon.2026-12-01.log")).unwrap(),
            "from the first\n"
        );
        assert_eq!(fs::read_to_string(&current).unwrap(), "today\n");
        drop(log);

        // Started again the same day: appended to, not rotated.
        set_mtime(&current, at("2026-12-03 08:00:01"));
        let mut log =
            DailyFile::open_in(dir.path(), talon(), KEEP, Utc, at("2026-12-03 09:00:00")).unwrap();
        log.write_at(b"again\n", at("2026-12-03 09:00:00")).unwrap();
        assert_eq!(names_in(dir.path()), ["talon.2026-12-01.log", "talon.log"]);
        assert_eq!(fs::read_to_string(&current).unwrap(), "today\nagain\n");
    }

    #[test]
    fn the_first_write_after_midnight_rotates_and_old_files_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        // Nine dated files from November and things that only look alike.
        for d in 1..=9 {
            fs::write(dir.path().join(format!("talon.2026-11-0{d}.log")), "old\n").unwrap();
        }
        let lookalikes = [
            "talon.error.2026-10-01.log",
            "talon.2026-10-01.log.bak",
            "talon.2026-10-1.log",
            "other.txt",
        ];
        for name in lookalikes {
            fs::write(dir.path().join(name), "keep me\n").unwrap();
        }
        fs::create_dir(dir.path().join("talon.2026-10-02.log")).unwrap();
        std::os::unix::fs::symlink("other.txt", dir.path().join("talon.2026-10-03.log")).unwrap();

        let mut log =
            DailyFile::open_in(dir.path(), talon(), KEEP, Utc, at("2026-12-02 23:59:58")).unwrap();
        // Opening prunes to the seven newest already.
        assert!(!dir.path().join("talon.2026-11-02.log").exists());
        log.write_at(b"before midnight\n", at("2026-12-02 23:59:59"))
            .unwrap();
        set_mtime(&log.path(), at("2026-12-02 23:59:59"));
        log.write_at(b"after midnight\n", at("2026-12-03 00:00:01"))
            .unwrap();
        log.write_at(b"later\n", at("2026-12-03 00:00:02")).unwrap();

        assert_eq!(
            fs::read_to_string(dir.path().join("talon.2026-12-02.log")).unwrap(),
            "before midnight\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("talon.log")).unwrap(),
            "after midnight\nlater\n"
        );
        let dated: Vec<String> = names_in(dir.path())
            .into_iter()
            .filter(|name| talon().day_of(name).is_some())
            .collect();
        assert_eq!(
            dated,
            [
                "talon.2026-10-02.log", // a directory: never pruned
                "talon.2026-10-03.log", // a symlink: never pruned
                "talon.2026-11-04.log",
                "talon.2026-11-05.log",
                "talon.2026-11-06.log",
                "talon.2026-11-07.log",
                "talon.2026-11-08.log",
                "talon.2026-11-09.log",
                "talon.2026-12-02.log",
            ]
        );
        for name in lookalikes {
            assert_eq!(
                fs::read_to_string(dir.path().join(name)).unwrap(),
                "keep me\n"
            );
        }
        assert!(dir.path().join("talon.2026-10-02.log").is_dir());
    }

    #[test]
    fn a_dated_file_already_there_is_appended_to_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("talon.2026-12-01.log"), "first\n").unwrap();
        let current = dir.path().join("talon.log");
        fs::write(&current, "second\n").unwrap();
        set_mtime(&current, at("2026-12-01 12:00:00"));
        let rotated = rotate_stale(dir.path(), &talon(), KEEP, &Utc, at("2026-12-02 00:00:00"))
            .unwrap()
            .unwrap();
        assert_eq!(rotated, dir.path().join("talon.2026-12-01.log"));
        assert_eq!(fs::read_to_string(&rotated).unwrap(), "first\nsecond\n");
        assert!(!current.exists());
    }

    #[test]
    fn a_day_without_writes_rotates_nothing_at_midnight() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            DailyFile::open_in(dir.path(), talon(), KEEP, Utc, at("2026-12-02 10:00:00")).unwrap();
        // Midnight passes with nothing written: the empty file stays current.
        log.write_at(b"first line\n", at("2026-12-03 10:00:00"))
            .unwrap();
        assert_eq!(names_in(dir.path()), ["talon.log"]);
        assert_eq!(fs::read_to_string(log.path()).unwrap(), "first line\n");
    }

    #[test]
    fn a_current_file_deleted_by_hand_is_opened_again_at_midnight() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            DailyFile::open_in(dir.path(), talon(), KEEP, Utc, at("2026-12-02 10:00:00")).unwrap();
        log.write_at(b"lost to rm\n", at("2026-12-02 10:00:01"))
            .unwrap();
        fs::remove_file(log.path()).unwrap();
        log.write_at(b"next day\n", at("2026-12-03 00:00:01"))
            .unwrap();
        assert_eq!(fs::read_to_string(log.path()).unwrap(), "next day\n");
    }

    #[test]
    fn a_line_appended_to_the_routing_log_after_a_day_change_starts_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/routing-metrics.jsonl");
        let now = SystemTime::now();
        append_rotating_at(&path, b"{\"n\":1}\n", &Utc, now).unwrap();
        append_rotating_at(&path, b"{\"n\":2}\n", &Utc, now).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":1}\n{\"n\":2}\n");
        let two_days_ago = now - Duration::from_secs(2 * 86_400);
        set_mtime(&path, two_days_ago);
        append_rotating_at(&path, b"{\"n\":3}\n", &Utc, now).unwrap();
        let dated = LogName::new("routing-metrics", "jsonl").rotated(day_in(&Utc, two_days_ago));
        assert_eq!(
            fs::read_to_string(dir.path().join("logs").join(dated)).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
    }
}
