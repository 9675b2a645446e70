//! The command line: `talon chat | run | image build | groups | dump`.
//!
//! Each command resolves the home, loads the configuration and then does one
//! thing; every failure is one clear line on stderr and a non-zero exit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::actors::terminal::{spawn_input, TerminalArgs, TerminalOutput, TERMINAL_CHAT};
use crate::config::Config;
use crate::host::{self, Channels, Host, HostContext};
use crate::messages::RegisteredGroup;
use crate::paths::Paths;
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(name = "talon", version, about = "A personal AI assistant host")]
pub struct Cli {
    /// Root for data/, groups/ and logs/ [env: TALON_HOME; default: ~/.local/share/talon]
    #[arg(long, global = true)]
    pub home: Option<PathBuf>,
    /// Configuration file [default: <home>/talon.toml]
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat with the assistant in this terminal (scriptable when stdin is piped).
    Chat,
    /// Run the host with its configured channels until stopped.
    Run,
    /// Manage the agent container image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// List or register the chats the assistant serves.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// Ask the running host for its live actor tree and print it.
    Dump,
    /// Is the host running; per group: cursor, pending messages; failed batches; undelivered replies.
    Status,
    /// Remove stale session transcripts and container run logs (older than
    /// 7 days; the current transcripts and archived conversations stay).
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check everything talon needs (Docker, image, credentials, channel
    /// tokens, lock, lag, failures, allowlist); exit 1 if something fails.
    Doctor,
    /// Run talon under systemd.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the systemd user unit for this binary and home
    /// (~/.config/systemd/user/talon.service).
    Install,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the agent image offline: for talon, from container/ (busybox +
    /// the static runner); for claude-code, the same plus the native Claude
    /// Code binary (TALON_CLAUDE_BIN, or `claude` on PATH), bash and their
    /// libraries.
    Build {
        /// Which agent's image to build.
        #[arg(
            long,
            value_name = "talon|claude-code",
            default_value_t = crate::messages::wire::AgentRuntime::Talon,
            value_parser = <crate::messages::wire::AgentRuntime as std::str::FromStr>::from_str
        )]
        runtime: crate::messages::wire::AgentRuntime,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Show the registered groups.
    List,
    /// Register a chat, e.g. `talon groups add slack:C0123 --name Family --folder family`.
    Add {
        /// Chat id with its channel prefix: term:<name>, sock:<name>, slack:<channel>, dc:<channel>.
        chat_id: String,
        #[arg(long)]
        name: String,
        /// Folder under groups/: lowercase letters, digits and '-'.
        #[arg(long)]
        folder: String,
        /// The main group: no trigger needed, may register other groups.
        #[arg(long)]
        main: bool,
        /// Answer every message, not only those starting with the trigger.
        #[arg(long)]
        no_trigger: bool,
        /// A custom trigger regex instead of ^@<assistant name>\b.
        #[arg(long)]
        trigger: Option<String>,
        /// Container settings as JSON, e.g. '{"memory_mb":2048,"network":"bridge"}'
        /// [default: keep the group's current settings, or none].
        #[arg(long, value_name = "JSON")]
        container_config: Option<String>,
    },
    /// Show one group and its container settings.
    Show {
        /// The group's chat id, as in `talon groups list`.
        chat_id: String,
    },
    /// Change a group's container settings, e.g.
    /// `talon groups set slack:C0123 --network bridge --secret THREADS_ACCESS_TOKEN`.
    Set {
        /// The group's chat id, as in `talon groups list`.
        chat_id: String,
        /// Replace the settings with this JSON ('' resets to the defaults);
        /// the flags below then edit it.
        #[arg(long, value_name = "JSON", conflicts_with = "clear_container_config")]
        container_config: Option<String>,
        /// Reset the settings to the defaults (the flags below then edit them).
        #[arg(long)]
        clear_container_config: bool,
        /// Hard timeout of the group's runs, e.g. 1h (1s to 24h).
        #[arg(long, value_name = "DURATION", value_parser = crate::container_config::parse_timeout_flag)]
        timeout: Option<Duration>,
        /// Memory limit in MB (6 to 65536).
        #[arg(long, value_name = "MB")]
        memory_mb: Option<u64>,
        /// CPU limit, e.g. 2 or 0.5 (0.01 to 64).
        #[arg(long)]
        cpus: Option<f64>,
        /// Container network: none (the default) or bridge.
        #[arg(long, value_name = "none|bridge")]
        network: Option<crate::container_config::Network>,
        /// Pass this host environment variable (or .env key) into the
        /// container; repeatable, adds to the list.
        #[arg(long = "secret", value_name = "NAME")]
        secrets: Vec<String>,
        /// An extra mount under /workspace/extra (subject to the mount
        /// allowlist); repeatable, adds to the list.
        #[arg(long = "mount", value_name = "HOST_PATH[:NAME[:rw]]", value_parser = crate::container_config::parse_mount_flag)]
        mounts: Vec<crate::mount_security::RequestedMount>,
        /// The model the group's runs ask for, on whichever tier is chosen
        /// ('' goes back to the tier's configured model).
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
        /// The agent the group runs: talon or claude-code ('' goes back to
        /// `[agent] runtime`).
        #[arg(long, value_name = "talon|claude-code", value_parser = crate::container_config::parse_runtime_flag)]
        runtime: Option<Option<crate::messages::wire::AgentRuntime>>,
    },
}

/// Runs the parsed command; the caller prints the error and exits non-zero.
pub async fn run(cli: Cli) -> Result<()> {
    let paths = Paths::resolve(cli.home.clone());
    match cli.command {
        Command::Chat => chat(&paths, cli.config.as_deref()).await,
        Command::Run => daemon(&paths, cli.config.as_deref()).await,
        Command::Image {
            command: ImageCommand::Build { runtime },
        } => image_build(&paths, cli.config.as_deref(), runtime).await,
        Command::Groups { command } => groups(&paths, cli.config.as_deref(), command),
        Command::Dump => dump(&paths).await,
        Command::Status => status(&paths, cli.config.as_deref()),
        Command::Doctor => doctor(&paths, cli.config.as_deref()).await,
        Command::Prune { dry_run } => prune(&paths, dry_run),
        Command::Service {
            command: ServiceCommand::Install,
        } => service_install(&paths),
    }
}

fn load_config(paths: &Paths, explicit: Option<&std::path::Path>) -> Result<Config> {
    paths
        .ensure()
        .with_context(|| format!("cannot create the talon home {}", paths.home.display()))?;
    Ok(Config::load(paths, explicit)?)
}

/// Everything a host needs, checked in the order a user can fix them:
/// credentials, the singleton lock, Docker, the image, the store.
async fn prepare_host(
    paths: &Paths,
    config: Config,
) -> Result<(Arc<HostContext>, crate::singleton::HostLock)> {
    let provider = host::build_provider(&config, paths)?;
    let lock = crate::singleton::HostLock::acquire(&paths.pid_file())?;
    let docker = crate::docker::connect().await?;
    let mut progress = |line: &str| eprintln!("[image] {line}");
    let built =
        crate::image::ensure_image(&docker, &config.container.image, false, &mut progress).await?;
    if built {
        eprintln!("[image] {} is ready", config.container.image);
    }
    let store = Store::open(&paths.db())?;
    let ctx = HostContext::new(store, config, paths.clone(), docker, provider)?;
    Ok((Arc::new(ctx), lock))
}

/// Makes sure the terminal chat is a registered group: the local main group
/// (or, when another chat is main already, a group that needs no trigger).
fn ensure_terminal_group(store: &Store) -> Result<RegisteredGroup> {
    if let Some(group) = store.group_by_chat(TERMINAL_CHAT)? {
        return Ok(group);
    }
    let groups = store.groups()?;
    let has_main = groups.iter().any(|g| g.is_main);
    let folder_taken = |f: &str| groups.iter().any(|g| g.folder == f);
    let folder = ["main", "terminal", "local"]
        .into_iter()
        .find(|f| !folder_taken(f))
        .ok_or_else(|| anyhow!("no free folder for the terminal chat"))?;
    let group = RegisteredGroup {
        chat_id: TERMINAL_CHAT.into(),
        name: "Terminal".into(),
        folder: folder.into(),
        trigger_pattern: None,
        requires_trigger: false,
        is_main: !has_main,
        container_config: None,
        added_at: crate::store::now_millis(),
    };
    store.register_group(&group)?;
    Ok(group)
}

async fn chat(paths: &Paths, explicit: Option<&std::path::Path>) -> Result<()> {
    let config = load_config(paths, explicit)?;
    let interactive = std::io::stdin().is_terminal();
    let _logs = crate::logging::init(paths, &config.log.level, !interactive)?;
    let mut signals = Signals::install()?;
    let assistant = config.assistant.name.clone();
    let user = config.terminal.user_name.clone();
    let (ctx, _lock) = prepare_host(paths, config).await?;
    let group = ensure_terminal_group(&ctx.store)?;
    // A scriptable chat also answers what a killed run accepted but never
    // answered (the queue recovers it at start) before it may exit.
    let recovered_through = if interactive {
        None
    } else {
        unanswered_through(&ctx.store, &group, &ctx.config.trigger_pattern())?
    };

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<TerminalOutput>();
    let printer = tokio::spawn(async move {
        use std::io::Write;
        while let Some(item) = out_rx.recv().await {
            let mut stdout = std::io::stdout().lock();
            let _ = match (&item, interactive) {
                (TerminalOutput::Reply(text), true) => writeln!(stdout, "{assistant}> {text}"),
                (TerminalOutput::Notice(text), true) => writeln!(stdout, "[talon] {text}"),
                (TerminalOutput::Reply(text) | TerminalOutput::Notice(text), false) => {
                    writeln!(stdout, "{text}")
                }
            };
            let _ = stdout.flush();
        }
    });
    // The recovered messages hold the one permit until they are settled.
    let gate = Arc::new(Semaphore::new(usize::from(recovered_through.is_none())));
    let terminal = TerminalArgs {
        store: ctx.store.clone(),
        chat_id: TERMINAL_CHAT.into(),
        output: out_tx,
        gate: gate.clone(),
        recovered_through,
    };
    let host = host::start(ctx, Channels::terminal(terminal)).await?;
    if interactive {
        eprintln!("talon chat: type a message and press Enter; Ctrl-D or Ctrl-C to quit.");
    }
    let (line_tx, line_rx) = mpsc::channel::<String>(64);
    tokio::spawn(read_stdin_lines(line_tx));
    let (done_tx, done_rx) = oneshot::channel();
    spawn_input(
        line_rx,
        TERMINAL_CHAT.into(),
        user,
        gate,
        !interactive,
        recovered_through.is_some(),
        done_tx,
    );
    let mut done_rx = done_rx;
    serve(&host, &mut signals, Some(&mut done_rx), false).await;
    host.shutdown().await;
    // Every reply was handed to the printer before the host stopped.
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    Ok(())
}

/// The last message of `group` after its cursor that should wake the agent
/// (so the queue will answer it), if any.
fn unanswered_through(
    store: &Store,
    group: &RegisteredGroup,
    configured_trigger: &str,
) -> Result<Option<i64>> {
    let trigger = crate::trigger::group_trigger(group, configured_trigger)
        .with_context(|| format!("invalid trigger pattern of {}", group.chat_id))?;
    let cursor = store.cursor(&group.chat_id)?;
    // As far as the group queue looks for waking messages.
    let pending = store.messages_after(&group.chat_id, cursor, 10_000)?;
    Ok(pending
        .iter()
        .rev()
        .find(|m| crate::trigger::message_wakes_agent(group, &trigger, m))
        .map(|m| m.seq))
}

async fn read_stdin_lines(lines: mpsc::Sender<String>) {
    let mut reader = tokio::io::BufReader::new(tokio::io::stdin());
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer).into_owned();
                if lines.send(line).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stdin read failed");
                break;
            }
        }
    }
}

async fn daemon(paths: &Paths, explicit: Option<&std::path::Path>) -> Result<()> {
    let config = load_config(paths, explicit)?;
    let _logs = crate::logging::init(paths, &config.log.level, false)?;
    // Before anything can say "running": a signal that arrived earlier
    // would meet the default action (SIGHUP and SIGTERM end the process).
    let mut signals = Signals::install()?;
    let (ctx, _lock) = prepare_host(paths, config).await?;
    let interactive = std::io::stdin().is_terminal();
    let (line_tx, line_rx) = mpsc::channel::<String>(64);
    let gate = Arc::new(Semaphore::new(1));
    let mut printer_rx = None;
    let mut terminal = None;
    if interactive {
        ensure_terminal_group(&ctx.store)?;
        let (out_tx, out_rx) = mpsc::unbounded_channel::<TerminalOutput>();
        printer_rx = Some(out_rx);
        terminal = Some(TerminalArgs {
            store: ctx.store.clone(),
            chat_id: TERMINAL_CHAT.into(),
            output: out_tx,
            gate: gate.clone(),
            recovered_through: None,
        });
    }
    let user = ctx.config.terminal.user_name.clone();
    let assistant = ctx.config.assistant.name.clone();
    let channels = daemon_channels(&ctx, terminal.clone());
    let names = channels.names();
    let mut host = host::start(ctx, channels).await?;
    if let Some(mut out_rx) = printer_rx {
        tokio::spawn(async move {
            while let Some(item) = out_rx.recv().await {
                match item {
                    TerminalOutput::Reply(text) => println!("{assistant}> {text}"),
                    TerminalOutput::Notice(text) => println!("[talon] {text}"),
                }
            }
        });
        tokio::spawn(read_stdin_lines(line_tx));
        let (done_tx, _done_rx) = oneshot::channel();
        spawn_input(
            line_rx,
            TERMINAL_CHAT.into(),
            user,
            gate,
            false,
            false,
            done_tx,
        );
    }
    announce_channels(&names, "running");
    let _watchdog = crate::service::ready();
    let _trimmer = crate::memory::spawn_trimmer();
    while let Ended::Reload = serve(&host, &mut signals, None, true).await {
        // The new configuration is checked whole before the running host
        // is touched: a broken file never takes talon down.
        let next = match load_config(paths, explicit) {
            Ok(config) => reload_context(paths, config, &host.ctx).await,
            Err(e) => Err(e),
        };
        match next {
            Ok(ctx) => {
                crate::service::reloading();
                host.shutdown().await;
                let channels = daemon_channels(&ctx, terminal.clone());
                let names = channels.names();
                host = host::start(ctx, channels).await?;
                announce_channels(&names, "configuration reloaded");
                crate::service::reloaded();
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: the configuration is invalid; still running with the previous one");
                eprintln!("talon: configuration not reloaded (still running with the previous one): {e:#}");
            }
        }
    }
    crate::service::stopping();
    host.shutdown().await;
    Ok(())
}

/// The channels `talon run` starts for a host: the terminal (if given),
/// the socket when configured, Slack and Discord when their tokens are.
fn daemon_channels(ctx: &HostContext, terminal: Option<TerminalArgs>) -> Channels {
    let mut channels = Channels {
        terminal,
        ..Channels::default()
    };
    if ctx.config.channels.socket {
        channels.socket = Some(crate::actors::socket::SocketArgs {
            store: ctx.store.clone(),
            path: crate::actors::socket::socket_path(&ctx.paths),
        });
    }
    (channels.slack, channels.discord) = host::platform_channels(ctx);
    channels
}

fn announce_channels(started: &[&str], what: &str) {
    tracing::info!(channels = ?started, "{what}");
    if started.is_empty() {
        eprintln!("talon: {what} with no channels (stdin is not a terminal, the socket channel is off and no platform tokens are configured)");
    } else {
        eprintln!("talon: {what}; channels: {}", started.join(", "));
    }
}

/// A host context for a reloaded configuration, sharing the running one's
/// store and Docker connection.
async fn reload_context(
    paths: &Paths,
    config: Config,
    running: &HostContext,
) -> Result<Arc<HostContext>> {
    let provider = host::build_provider(&config, paths)?;
    let ctx = HostContext::new(
        running.store.clone(),
        config,
        paths.clone(),
        running.docker.clone(),
        provider,
    )?;
    Ok(Arc::new(ctx))
}

/// The signals a host answers, installed once for the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Why [`serve`] returned.
enum Ended {
    Stop,
    Reload,
}

/// Serves until SIGTERM/SIGINT (or `finished`), answering SIGUSR1 with a
/// dump; SIGHUP ends it with [`Ended::Reload`] when `reloadable`.
async fn serve(
    host: &Host,
    signals: &mut Signals,
    mut finished: Option<&mut oneshot::Receiver<()>>,
    reloadable: bool,
) -> Ended {
    loop {
        let done = async {
            match finished.as_mut() {
                Some(rx) => {
                    let _ = (&mut **rx).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = signals.term.recv() => { tracing::info!("SIGTERM: stopping"); return Ended::Stop; }
            _ = signals.int.recv() => { tracing::info!("SIGINT: stopping"); return Ended::Stop; }
            _ = signals.usr1.recv() => {
                match host.write_dump().await {
                    Ok(path) => tracing::info!(path = %path.display(), "state dump written"),
                    Err(e) => tracing::error!(error = %e, "cannot write the state dump"),
                }
            }
            _ = signals.hup.recv() => {
                if reloadable {
                    tracing::info!("SIGHUP: reloading the configuration");
                    return Ended::Reload;
                }
                tracing::warn!("SIGHUP: `talon chat` does not reload; ignored");
            }
            _ = done => { return Ended::Stop; }
        }
    }
}

fn prune(paths: &Paths, dry_run: bool) -> Result<()> {
    let store = Store::open(&paths.db())?;
    let files = crate::prune::prune(paths, &store, dry_run);
    let verb = if dry_run { "would remove" } else { "removed" };
    for file in &files {
        println!("{verb} {}", file.display());
    }
    println!("{verb} {} stale files", files.len());
    Ok(())
}

async fn doctor(paths: &Paths, explicit: Option<&std::path::Path>) -> Result<()> {
    let config = match load_config(paths, explicit) {
        Ok(config) => config,
        Err(e) => {
            println!("FAIL  config       {e:#}");
            std::process::exit(1);
        }
    };
    println!("ok    config       {}", paths.home.display());
    let findings = crate::doctor::run(paths, &config).await;
    print!("{}", crate::doctor::render(&findings));
    let code = crate::doctor::exit_code(&findings);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn service_install(paths: &Paths) -> Result<()> {
    let path = crate::service::install(&paths.home)
        .map_err(|e| anyhow!("cannot write the systemd unit: {e}"))?;
    println!("wrote {}", path.display());
    println!("now: systemctl --user daemon-reload && systemctl --user enable --now talon");
    println!("(and `loginctl enable-linger $USER` to keep it running after you log out)");
    Ok(())
}

async fn image_build(
    paths: &Paths,
    explicit: Option<&std::path::Path>,
    runtime: crate::messages::wire::AgentRuntime,
) -> Result<()> {
    let config = load_config(paths, explicit)?;
    let docker = crate::docker::connect().await?;
    if runtime == crate::messages::wire::AgentRuntime::ClaudeCode {
        let tag = &config.agent.claude_image;
        let started = std::time::Instant::now();
        let context = tokio::task::spawn_blocking(crate::image::prepare_claude_context)
            .await
            .map_err(|e| anyhow!("the image build task stopped unexpectedly: {e}"))??;
        eprintln!(
            "[image] sending a {} MB build context",
            context.content_bytes / 1_000_000
        );
        let mut progress = |line: &str| eprintln!("[image] {line}");
        crate::image::build_claude_image(&docker, tag, context, &mut progress).await?;
        eprintln!("[image] built {tag} in {:.0?}", started.elapsed());
        return Ok(());
    }
    let sources = crate::image::locate_sources()?;
    let context = crate::image::build_context(&sources)?;
    let mut progress = |line: &str| eprintln!("[image] {line}");
    crate::image::build_image(&docker, &config.container.image, context, &mut progress).await?;
    eprintln!("[image] built {}", config.container.image);
    Ok(())
}

fn groups(paths: &Paths, explicit: Option<&std::path::Path>, command: GroupsCommand) -> Result<()> {
    use crate::container_config::GroupContainerConfig;

    let config = load_config(paths, explicit)?;
    let store = Store::open(&paths.db())?;
    let host_running = || crate::singleton::holder(&paths.pid_file()).is_some();
    let trigger_of = |g: &RegisteredGroup| {
        if g.is_main || !g.requires_trigger {
            "(every message)".to_string()
        } else {
            g.trigger_pattern
                .clone()
                .unwrap_or_else(|| config.trigger_pattern())
        }
    };
    let find = |chat_id: &str| -> Result<RegisteredGroup> {
        store.group_by_chat(chat_id)?.ok_or_else(|| {
            anyhow!("no registered group has chat id {chat_id:?} (see `talon groups list`)")
        })
    };
    match command {
        GroupsCommand::List => {
            let groups = store.groups()?;
            if groups.is_empty() {
                println!("no registered groups");
            }
            for g in groups {
                println!(
                    "{:<24} {:<16} {:<20} {}{}",
                    g.chat_id,
                    g.folder,
                    g.name,
                    trigger_of(&g),
                    if g.is_main { "  [main]" } else { "" }
                );
            }
        }
        GroupsCommand::Add {
            chat_id,
            name,
            folder,
            main,
            no_trigger,
            trigger,
            container_config,
        } => {
            if !chat_id.contains(':') {
                bail!("chat id {chat_id:?} needs a channel prefix: term:<name>, sock:<name>, slack:<channel> or dc:<channel>");
            }
            if let Some(pattern) = &trigger {
                crate::trigger::Trigger::new(pattern)
                    .with_context(|| format!("invalid trigger pattern {pattern:?}"))?;
            }
            let existing = store.group_by_chat(&chat_id)?;
            if main {
                if let Some(other) = store
                    .groups()?
                    .into_iter()
                    .find(|g| g.is_main && g.chat_id != chat_id)
                {
                    bail!(
                        "{} is already the main group; only one chat can be main",
                        other.chat_id
                    );
                }
            }
            // Re-adding a chat (e.g. to rename it) keeps its container settings
            // unless new ones are given.
            let container_config = match container_config {
                Some(json) => {
                    let parsed = GroupContainerConfig::of_group(Some(&json))?;
                    (parsed != GroupContainerConfig::default()).then(|| parsed.to_json())
                }
                None => existing.as_ref().and_then(|g| g.container_config.clone()),
            };
            let group = RegisteredGroup {
                chat_id,
                name,
                folder,
                trigger_pattern: trigger,
                requires_trigger: !no_trigger,
                is_main: main,
                container_config,
                added_at: existing
                    .as_ref()
                    .map_or_else(crate::store::now_millis, |g| g.added_at),
            };
            store.register_group(&group)?;
            println!("registered {} as {}", group.chat_id, group.folder);
            if let Some(json) = &group.container_config {
                println!("container config: {json}");
            }
            if host_running() {
                println!("restart talon to start serving it");
            }
        }
        GroupsCommand::Show { chat_id } => {
            let g = find(&chat_id)?;
            let added = chrono::DateTime::from_timestamp_millis(g.added_at)
                .map_or_else(|| g.added_at.to_string(), |t| t.to_rfc3339());
            println!("chat id:    {}", g.chat_id);
            println!("name:       {}", g.name);
            println!("folder:     {}", g.folder);
            println!("main:       {}", if g.is_main { "yes" } else { "no" });
            println!("trigger:    {}", trigger_of(&g));
            println!("registered: {added}");
            // A hand-edited database may hold a config that no longer
            // validates: show the text as stored, then fail with the reason.
            let container = match GroupContainerConfig::of_group(g.container_config.as_deref()) {
                Ok(container) => container,
                Err(e) => {
                    println!(
                        "container config (as stored): {}",
                        g.container_config.as_deref().unwrap_or_default()
                    );
                    bail!(
                        "{e}; fix it with `talon groups set {chat_id} --container-config '<json>'`"
                    );
                }
            };
            if container == GroupContainerConfig::default() {
                println!("container config: {{}} (nothing set: the defaults apply)");
            } else {
                println!("container config:");
                println!("{}", container.to_pretty_json());
            }
            println!("effective container settings:");
            println!("{}", container.effective_summary(&config.container));
        }
        GroupsCommand::Set {
            chat_id,
            container_config,
            clear_container_config,
            timeout,
            memory_mb,
            cpus,
            network,
            secrets,
            mounts,
            model,
            runtime,
        } => {
            let g = find(&chat_id)?;
            let edits_flags = model.is_some()
                || runtime.is_some()
                || timeout.is_some()
                || memory_mb.is_some()
                || cpus.is_some()
                || network.is_some()
                || !secrets.is_empty()
                || !mounts.is_empty();
            if container_config.is_none() && !clear_container_config && !edits_flags {
                bail!("nothing to set: give --container-config '<json>', --clear-container-config, or a flag such as --memory-mb 2048 (see `talon groups set --help`)");
            }
            let mut container = if clear_container_config {
                GroupContainerConfig::default()
            } else if let Some(json) = &container_config {
                GroupContainerConfig::of_group(Some(json))?
            } else {
                GroupContainerConfig::of_group(g.container_config.as_deref()).with_context(|| {
                    format!("the stored container config of {chat_id} is invalid; replace it with --container-config '<json>' or --clear-container-config")
                })?
            };
            if timeout.is_some() {
                container.timeout = timeout;
            }
            if memory_mb.is_some() {
                container.memory_mb = memory_mb;
            }
            if cpus.is_some() {
                container.cpus = cpus;
            }
            if network.is_some() {
                container.network = network;
            }
            for secret in secrets {
                if !container.secrets.contains(&secret) {
                    container.secrets.push(secret);
                }
            }
            for mount in mounts {
                if !container.additional_mounts.contains(&mount) {
                    container.additional_mounts.push(mount);
                }
            }
            if let Some(model) = model {
                let mut choice = container.provider.take().unwrap_or_default();
                choice.model = (!model.is_empty()).then_some(model);
                container.provider = (choice != Default::default()).then_some(choice);
            }
            if let Some(runtime) = runtime {
                container.runtime = runtime;
            }
            container.validate()?;
            let is_default = container == GroupContainerConfig::default();
            store.set_container_config(&chat_id, (!is_default).then_some(&container))?;
            if is_default {
                println!("container config of {chat_id}: {{}} (the defaults apply)");
            } else {
                println!("container config of {chat_id}:");
                println!("{}", container.to_pretty_json());
            }
            if host_running() {
                println!("the running talon applies it from the group's next container start");
            }
        }
    }
    Ok(())
}

fn status(paths: &Paths, explicit: Option<&std::path::Path>) -> Result<()> {
    let config = load_config(paths, explicit)?;
    match crate::singleton::holder(&paths.pid_file()) {
        Some(pid) => println!("talon is running (pid {pid})"),
        None => println!("talon is not running"),
    }
    println!("credential: {}", credential_line(&config));
    if let Some(line) = threads_line(paths) {
        println!("{line}");
    }
    let store = Store::open(&paths.db())?;
    let groups = store.groups()?;
    println!("groups: {}", groups.len());
    for g in &groups {
        let cursor = store.cursor(&g.chat_id)?;
        let pending = store.messages_after(&g.chat_id, cursor, 10_000)?.len();
        println!(
            "  {:<16} {:<24} cursor {:<8} pending {}{}",
            g.folder,
            g.chat_id,
            cursor,
            pending,
            if g.is_main { "  [main]" } else { "" }
        );
    }
    let failed = store.failed_batches(10)?;
    if failed.is_empty() {
        println!("failed batches: none");
    } else {
        println!("failed batches (newest first):");
        for f in failed {
            let when = chrono::DateTime::from_timestamp_millis(f.failed_at)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            println!(
                "  {when} {} messages {}..={} after {} attempts: {}",
                f.group_folder, f.from_seq, f.through_seq, f.attempts, f.reason
            );
        }
    }
    println!("undelivered replies: {}", store.unsent_outbox()?.len());
    Ok(())
}

/// Which model credential is in use and how long it has left; never a token.
fn credential_line(config: &crate::config::Config) -> String {
    use crate::actors::token_manager::{describe_expiry, Kind};
    let (kind, expires_at) = crate::auth::credential_in_use(config);
    match kind {
        Kind::OAuthFile => describe_expiry(expires_at, crate::store::now_millis()),
        Kind::OAuthEnv => "OAuth: CLAUDE_CODE_OAUTH_TOKEN (long-lived)".into(),
        Kind::ApiKey => "Anthropic API key".into(),
        Kind::FallbackKey => "WARN using fallback prepaid key".into(),
        Kind::None => "none configured".into(),
    }
}

/// "Threads token: 41 days left …", when a Threads token is configured.
fn threads_line(paths: &Paths) -> Option<String> {
    use crate::auth::threads;
    threads::ThreadsCredentials::load(paths, &threads::process_env())
        .ok()
        .flatten()?;
    Some(match threads::inspect(paths, crate::store::now_millis()) {
        Ok(status) => status.to_string(),
        Err(e) => format!("Threads token: {e}"),
    })
}

async fn dump(paths: &Paths) -> Result<()> {
    let pid = crate::singleton::holder(&paths.pid_file()).ok_or_else(|| {
        anyhow!(
            "talon is not running (no live host holds {})",
            paths.pid_file().display()
        )
    })?;
    let path = paths.state_dump();
    let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let pid_t = libc::pid_t::try_from(pid).context("invalid pid in the pid file")?;
    // SAFETY: kill(2) with a pid we read from our own lock file; no memory involved.
    if unsafe { libc::kill(pid_t, libc::SIGUSR1) } != 0 {
        bail!(
            "cannot signal talon (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if now.is_some() && now != before {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "talon (pid {pid}) did not write {} within 5 s",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&path)?;
    println!("{text}");
    Ok(())
}
