//! The host: builds the supervision tree and runs it until told to stop.
//!
//! ```text
//! talon (root supervisor, one-for-one)
//! ├── router
//! ├── scheduler
//! ├── groups (supervisor)  ── queue:<folder> ── container:<name>
//! └── channels (supervisor) ── channel:term, channel:sock, channel:slack, channel:dc
//! ```
//!
//! [`HostContext`] is what every actor shares: the store, the configuration,
//! the Docker client, the provider and the global container slots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::actors::group_queue::{queue_name, GroupQueue, GroupQueueArgs};
use crate::actors::platform::{PlatformArgs, PlatformChannel};
use crate::actors::router::{Router, RouterArgs, RouterMsg, ROUTER};
use crate::actors::scheduler::{Scheduler, SchedulerArgs, SCHEDULER};
use crate::actors::socket::{SocketArgs, SocketChannel};
use crate::actors::supervisor::{
    spawn_supervisor, Backoff, ChildSpec, Intensity, Restart, Strategy, SupervisorMsg,
    SupervisorSpec,
};
use crate::actors::terminal::{TerminalArgs, TerminalChannel};
use crate::actors::token_manager::{
    FromTokenManager, Kind as TokenKind, TokenManager, TokenManagerArgs, TOKEN_MANAGER,
};
use crate::auth::claude::RefreshSettings;
use crate::channels::crash_backoff::{CrashLedger, STABLE_AFTER};
use crate::channels::delivery::DeliveryPolicy;
use crate::channels::discord::{Discord, DiscordSettings};
use crate::channels::slack::{Slack, SlackSettings};
use crate::channels::Platform;
use crate::config::Config;
use crate::container_config::GroupContainerConfig;
use crate::docker::{self, Mount, RunSpec};
use crate::messages::channel::channel_name;
use crate::messages::wire::AgentRuntime;
use crate::messages::RegisteredGroup;
use crate::mount_security;
use crate::paths::Paths;
use crate::provider::{
    AnthropicConfig, AnthropicProvider, OpenAiConfig, OpenAiProvider, Provider, Providers,
    RetryPolicy, RoutingDecision, RoutingLog, SharedCredentials, ANTHROPIC_DEFAULT_BASE_URL,
};
use crate::store::Store;

/// What every actor shares.
pub struct HostContext {
    pub store: Store,
    pub config: Config,
    pub paths: Paths,
    pub docker: Docker,
    pub provider: Arc<dyn Provider>,
    /// `provider` as the HEAVY tier, the LIGHT tier if configured, and the
    /// router that picks between them per batch.
    pub providers: Providers,
    /// Global limit on running containers; waiters are served FIFO.
    pub slots: Arc<Semaphore>,
    /// Global bound on containers' requests in flight (model calls, host
    /// actions): one group's flood can never take what the others need.
    pub inflight: Arc<Semaphore>,
    /// Performs agents' host requests.
    pub actions: Arc<crate::host_actions::HostActions>,
    /// Groups waiting for a slot right now (idle containers yield to them).
    pub slot_waiters: Arc<std::sync::atomic::AtomicUsize>,
    pub timezone: chrono_tz::Tz,
    /// Mounted read-only into main's container, when known.
    pub project_root: Option<PathBuf>,
    pub instance: String,
    /// Claude Code groups' credential proxy (the token manager's credential
    /// on every call); `None` without an Anthropic credential.
    pub claude_proxy: Option<Arc<crate::provider::proxy::MessagesProxy>>,
    /// Images found (or built) since start, so each is checked once.
    images_ready: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

/// Which agent runs `group`'s turns: its own choice, else `[agent] runtime`.
/// A config that does not parse counts as no choice (`run_plan` refuses it).
pub fn runtime_of(group: &RegisteredGroup, config: &Config) -> AgentRuntime {
    GroupContainerConfig::of_group(group.container_config.as_deref())
        .ok()
        .and_then(|c| c.runtime)
        .unwrap_or(config.agent.runtime)
}

/// The image a runtime runs in.
pub fn image_of(runtime: AgentRuntime, config: &Config) -> &str {
    match runtime {
        AgentRuntime::Talon => &config.container.image,
        AgentRuntime::ClaudeCode => &config.agent.claude_image,
    }
}

/// How much of a proxied request or response is carried.
const PROXY_MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
const PROXY_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

fn build_claude_proxy(
    config: &Config,
    log: Arc<RoutingLog>,
) -> Option<Arc<crate::provider::proxy::MessagesProxy>> {
    if crate::auth::credential_in_use(config).0 == TokenKind::None {
        return None;
    }
    let p = &config.provider;
    let proxy_config = crate::provider::proxy::ProxyConfig {
        base_url: p
            .base_url
            .clone()
            .unwrap_or_else(|| ANTHROPIC_DEFAULT_BASE_URL.into())
            .trim_end_matches('/')
            .to_string(),
        request_timeout: p.request_timeout,
        max_request_bytes: PROXY_MAX_REQUEST_BYTES,
        max_response_bytes: PROXY_MAX_RESPONSE_BYTES,
    };
    let credentials: SharedCredentials = Arc::new(FromTokenManager);
    match crate::provider::proxy::MessagesProxy::new(proxy_config, credentials, Some(log)) {
        Ok(proxy) => Some(Arc::new(proxy)),
        Err(error) => {
            tracing::error!(%error, "cannot set up the credential proxy for Claude Code");
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "no model credentials: sign in with `claude` (a Claude subscription, kept in \
         ~/.claude/.credentials.json), or set ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN) in the \
         environment or in {env_file}; for an Anthropic-compatible endpoint also set ANTHROPIC_BASE_URL"
    )]
    NoCredentials { env_file: String },
    #[error("invalid timezone {0:?}")]
    Timezone(String),
    #[error("cannot set up the model provider: {0}")]
    Provider(String),
    #[error("cannot start the actor tree: {0}")]
    Spawn(String),
}

/// What the token manager starts from.
pub fn token_manager_args(config: &Config, store: Store, paths: Paths) -> TokenManagerArgs {
    let s = &config.secrets;
    let a = &config.auth;
    TokenManagerArgs {
        credentials_file: crate::auth::credentials_file(config),
        refresh: RefreshSettings {
            token_url: a.token_url.clone(),
            client_id: a.client_id.clone(),
            scope: a.scope.clone(),
        },
        retry_base: a.refresh_retry_base,
        env_oauth: s.claude_oauth_token.clone(),
        api_key: s.anthropic_api_key.clone(),
        fallback_key: s.anthropic_api_key_fallback.clone(),
        store,
        client: crate::tls::http_client()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default(),
        paths,
        threads: crate::auth::threads::ThreadsSettings {
            base_url: a.threads_url.clone(),
        },
    }
}

/// The provider the configuration asks for. Its credential comes from the
/// token manager for every call.
pub fn build_provider(config: &Config, paths: &Paths) -> Result<Arc<dyn Provider>, HostError> {
    if crate::auth::credential_in_use(config).0 == TokenKind::None {
        return Err(HostError::NoCredentials {
            env_file: paths.env_file().display().to_string(),
        });
    }
    let credential: SharedCredentials = Arc::new(FromTokenManager);
    let p = &config.provider;
    let provider = AnthropicProvider::new(AnthropicConfig {
        base_url: p
            .base_url
            .clone()
            .unwrap_or_else(|| ANTHROPIC_DEFAULT_BASE_URL.into()),
        credential,
        model: p.model.clone(),
        request_timeout: p.request_timeout,
        retry: retry_policy(config),
    })
    .map_err(|e| HostError::Provider(e.message))?;
    Ok(Arc::new(provider))
}

fn retry_policy(config: &Config) -> RetryPolicy {
    let p = &config.provider;
    RetryPolicy {
        max_retries: p.max_retries,
        base: p.retry_base,
        max_delay: p.max_retry_delay,
        unreachable_after: p.unreachable_after,
        probe_interval: p.probe_interval,
    }
}

/// The LIGHT tier the configuration asks for, if any (spec §7): none unless
/// `provider.light_model` is set.
pub fn build_light_provider(config: &Config) -> Result<Option<Arc<dyn Provider>>, HostError> {
    let p = &config.provider;
    let Some(model) = p.light_model.clone() else {
        return Ok(None);
    };
    let provider: Arc<dyn Provider> = match p.light_kind.as_str() {
        "anthropic" => {
            if crate::auth::credential_in_use(config).0 == TokenKind::None {
                return Err(HostError::Provider(
                    "the anthropic LIGHT tier needs ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"
                        .into(),
                ));
            }
            let credential: SharedCredentials = Arc::new(FromTokenManager);
            let base_url = p
                .light_base_url
                .clone()
                .or_else(|| p.base_url.clone())
                .unwrap_or_else(|| ANTHROPIC_DEFAULT_BASE_URL.into());
            Arc::new(
                AnthropicProvider::new(AnthropicConfig {
                    base_url,
                    credential,
                    model,
                    request_timeout: p.request_timeout,
                    retry: retry_policy(config),
                })
                .map_err(|e| HostError::Provider(e.message))?,
            )
        }
        _ => {
            let base_url = p.light_base_url.clone().ok_or_else(|| {
                HostError::Provider(
                    "the openai LIGHT tier needs provider.light_base_url (or COPILOT_API_URL), \
                     e.g. http://localhost:4141"
                        .into(),
                )
            })?;
            Arc::new(
                OpenAiProvider::new(OpenAiConfig {
                    base_url,
                    api_key: config.secrets.light_api_key.clone(),
                    model,
                    request_timeout: p.request_timeout,
                    retry: retry_policy(config),
                    api_key_env: p.light_api_key_env.clone(),
                })
                .map_err(|e| HostError::Provider(e.message))?,
            )
        }
    };
    Ok(Some(provider))
}

impl HostContext {
    pub fn new(
        store: Store,
        config: Config,
        paths: Paths,
        docker: Docker,
        provider: Arc<dyn Provider>,
    ) -> Result<HostContext, HostError> {
        let timezone: chrono_tz::Tz = config
            .assistant
            .timezone
            .parse()
            .map_err(|_| HostError::Timezone(config.assistant.timezone.clone()))?;
        let slots = Arc::new(Semaphore::new(
            config.queue.max_concurrent_containers.max(1),
        ));
        let inflight = Arc::new(Semaphore::new(config.limits.max_inflight.max(1)));
        let instance = docker::instance_id(&paths.home);
        let actions = Arc::new(crate::host_actions::HostActions::new(
            store.clone(),
            config.web.clone(),
            timezone,
        ));
        let routing_log = Arc::new(RoutingLog::new(paths.logs().join("routing-metrics.jsonl")));
        let claude_proxy = build_claude_proxy(&config, routing_log.clone());
        let providers = Providers::new(
            Arc::clone(&provider),
            build_light_provider(&config)?,
            config.router.clone(),
            Some(routing_log),
        );
        Ok(HostContext {
            store,
            config,
            paths,
            docker,
            provider,
            providers,
            slots,
            inflight,
            slot_waiters: Arc::default(),
            actions,
            timezone,
            project_root: None,
            instance,
            claude_proxy,
            images_ready: Default::default(),
        })
    }

    /// Makes sure the image of `runtime` exists, building the Claude Code
    /// image offline the first time it is needed (the talon image is
    /// checked at start). Checked once per image and process.
    pub async fn ensure_runtime_image(&self, runtime: AgentRuntime) -> Result<(), String> {
        if runtime == AgentRuntime::Talon {
            return Ok(());
        }
        let tag = image_of(runtime, &self.config).to_string();
        let mut ready = self.images_ready.lock().await;
        if ready.contains(&tag) {
            return Ok(());
        }
        let mut progress = |line: &str| tracing::info!(image = %tag, "{line}");
        match crate::image::ensure_claude_image(&self.docker, &tag, false, &mut progress).await {
            Ok(_) => {
                ready.insert(tag);
                Ok(())
            }
            Err(error) => Err(format!(
                "cannot run Claude Code: the image {tag} is missing and cannot be built ({error})"
            )),
        }
    }

    /// The provider for one run of `group` with this agent prompt, chosen by
    /// the group's own tier setting and the router, asking for the group's
    /// own model if it sets one, and logged. A group config that does not
    /// parse counts as "no setting" here; `run_plan` refuses it anyway.
    pub fn provider_for_batch(
        &self,
        group: &RegisteredGroup,
        prompt: &str,
    ) -> (Arc<dyn Provider>, RoutingDecision) {
        let choice = GroupContainerConfig::of_group(group.container_config.as_deref())
            .ok()
            .and_then(|config| config.provider)
            .unwrap_or_default();
        self.providers
            .for_batch(&group.folder, choice.tier, choice.model.as_deref(), prompt)
    }

    /// How a container for `group` is made, creating its host directories
    /// (owned by the container's user) on the way. The group's container
    /// config is applied over the defaults; its extra mounts pass the mount
    /// allowlist, read fresh for every run so an edit applies at once.
    pub fn run_plan(
        &self,
        group: &RegisteredGroup,
        now_ms: i64,
    ) -> Result<RunPlan, ActorProcessingErr> {
        let overrides = GroupContainerConfig::of_group(group.container_config.as_deref())
            .map_err(|e| format!("group {}: {e}", group.folder))?;
        let (host_uid, host_gid) = current_ids();
        let run_as = self
            .config
            .container
            .run_as
            .as_deref()
            .and_then(docker::parse_uid_gid);
        let user = docker::run_user(host_uid, host_gid, run_as);
        let group_dir = self.paths.group_dir(&group.folder);
        let session_dir = self.paths.session_dir(&group.folder);
        let global_dir = self.paths.global_dir();
        // These are the mount roots, in host-owned parents; what is inside
        // them is the agent's and is never touched here.
        for dir in [&group_dir, &session_dir, &global_dir] {
            std::fs::create_dir_all(dir)?;
        }
        if host_uid == 0 {
            // A root host runs the agent unprivileged; hand it its folders.
            let mut writable = vec![&group_dir, &session_dir];
            if group.is_main {
                writable.push(&global_dir);
            }
            for dir in writable {
                // The roots only (host-made, in host-owned parents), never
                // anything inside them.
                std::os::unix::fs::chown(dir, Some(user.0), Some(user.1))?;
            }
        }
        let mut mounts = docker::base_mounts(
            group_dir,
            global_dir,
            session_dir,
            self.project_root.clone(),
            group.is_main,
        );
        mounts.extend(self.extra_mounts(group, &overrides));
        let mut env = vec![format!("TZ={}", self.config.assistant.timezone)];
        env.extend(self.named_secrets(group, &overrides));
        let c = &self.config.container;
        let memory_mb = overrides.memory_mb.unwrap_or(c.memory_mb);
        let cpus = overrides.cpus.unwrap_or(c.cpus);
        let spec = RunSpec {
            name: docker::container_name(&group.folder, now_ms),
            image: image_of(runtime_of(group, &self.config), &self.config).to_string(),
            group_folder: group.folder.clone(),
            instance: self.instance.clone(),
            user,
            mounts,
            env,
            memory_bytes: i64::try_from(memory_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX),
            nano_cpus: (cpus * 1e9) as i64,
            pids_limit: c.pids_limit,
            tmpfs_bytes: c.tmpfs_mb.saturating_mul(1 << 20),
            network: overrides.network_or_default().docker_mode().to_string(),
        };
        let hard_timeout =
            docker::hard_timeout(overrides.timeout, c.timeout, c.idle_timeout, c.close_grace);
        Ok(RunPlan { spec, hard_timeout })
    }

    /// The group's extra mounts that the allowlist permits. A missing
    /// allowlist means none; an invalid one means none and an error (fail
    /// closed). talon's own home is never mountable.
    fn extra_mounts(&self, group: &RegisteredGroup, config: &GroupContainerConfig) -> Vec<Mount> {
        if config.additional_mounts.is_empty() {
            return Vec::new();
        }
        let path = self
            .config
            .container
            .mount_allowlist
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(mount_security::default_allowlist_path);
        let allowlist = match mount_security::load_allowlist(&path) {
            Ok(Some(mut allowlist)) => {
                allowlist.protect(&self.paths.home);
                Some(allowlist)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(group = %group.folder, error = %e, "mount allowlist invalid: no extra mounts");
                return Vec::new();
            }
        };
        mount_security::approve_mounts(
            allowlist.as_ref(),
            &config.additional_mounts,
            group.is_main,
            &group.folder,
        )
        .into_iter()
        .map(|m| Mount {
            host: m.host,
            container: m.container,
            read_only: m.read_only,
        })
        .collect()
    }

    /// `NAME=value` for each secret the group's config names, from the
    /// environment or the `.env` file. Values are never logged.
    fn named_secrets(&self, group: &RegisteredGroup, config: &GroupContainerConfig) -> Vec<String> {
        if config.secrets.is_empty() {
            return Vec::new();
        }
        let dotenv = std::fs::read_to_string(self.paths.env_file())
            .map(|text| crate::config::parse_dotenv(&text))
            .unwrap_or_default();
        let light_key_env = self.config.provider.light_api_key_env.as_str();
        config
            .secrets
            .iter()
            .filter_map(|name| {
                // A stored config may predate a rule, or name the LIGHT key's
                // configured variable: the host's own credentials never go in.
                if let Some(why) =
                    crate::container_config::reserved_secret(name, Some(light_key_env))
                {
                    tracing::warn!(group = %group.folder, secret = %name, %why,
                        "a secret the group's config names is refused; not passed");
                    return None;
                }
                let value = std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or_else(|| {
                        dotenv
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    });
                match value {
                    Some(value) => Some(format!("{name}={value}")),
                    None => {
                        tracing::warn!(group = %group.folder, secret = %name,
                            "a secret the group's config names is not set; not passed");
                        None
                    }
                }
            })
            .collect()
    }
}

/// Everything that decides one container run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub spec: RunSpec,
    pub hard_timeout: Duration,
}

fn current_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Removes containers of this instance that no live actor owns (a previous
/// host that was killed). Returns how many were removed.
pub async fn remove_orphans(docker: &Docker, instance: &str) -> usize {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![
            format!("{}=true", docker::LABEL_MANAGED),
            format!("{}={instance}", docker::LABEL_INSTANCE),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let containers = match docker.list_containers(Some(options)).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers to find orphans");
            return 0;
        }
    };
    let mut removed = 0;
    for container in containers {
        let Some(id) = container.id else { continue };
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(container = %id, names = ?container.names, "removed orphan container");
            }
            Err(e) => tracing::warn!(container = %id, error = %e, "cannot remove orphan"),
        }
    }
    removed
}

fn queue_spec(ctx: &Arc<HostContext>, group: RegisteredGroup) -> ChildSpec {
    let ctx = ctx.clone();
    ChildSpec::actor(&queue_name(&group.folder), Restart::Permanent, move || {
        let args = GroupQueueArgs {
            group: group.clone(),
            ctx: ctx.clone(),
        };
        (GroupQueue, args)
    })
}

/// One queue per registered group, as the store has them now.
fn group_children(ctx: &Arc<HostContext>) -> Vec<ChildSpec> {
    match ctx.store.groups() {
        Ok(groups) => groups.into_iter().map(|g| queue_spec(ctx, g)).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the registered groups");
            Vec::new()
        }
    }
}

fn router_spec(ctx: &Arc<HostContext>) -> ChildSpec {
    let store = ctx.store.clone();
    let default_trigger = ctx.config.trigger_pattern();
    ChildSpec::actor(ROUTER, Restart::Permanent, move || {
        let args = RouterArgs {
            store: store.clone(),
            default_trigger: default_trigger.clone(),
        };
        (Router, args)
    })
}

fn token_manager_spec(ctx: &Arc<HostContext>) -> ChildSpec {
    let args = token_manager_args(&ctx.config, ctx.store.clone(), ctx.paths.clone());
    ChildSpec::actor(TOKEN_MANAGER, Restart::Permanent, move || {
        (TokenManager, args.clone())
    })
}

fn scheduler_spec(ctx: &Arc<HostContext>) -> ChildSpec {
    let c = &ctx.config.container;
    let args = SchedulerArgs {
        store: ctx.store.clone(),
        timezone: ctx.timezone,
        // A run may wait for a slot, then take a whole container lifetime.
        run_timeout: 2 * docker::hard_timeout(None, c.timeout, c.idle_timeout, c.close_grace),
        max_sleep: Duration::from_secs(60),
    };
    ChildSpec::actor(SCHEDULER, Restart::Permanent, move || {
        (Scheduler, args.clone())
    })
}

fn terminal_spec(args: TerminalArgs) -> ChildSpec {
    ChildSpec::actor(&channel_name("term"), Restart::Permanent, move || {
        (TerminalChannel, args.clone())
    })
}

fn socket_spec(args: SocketArgs) -> ChildSpec {
    let name = channel_name(crate::messages::socket::SOCKET_PREFIX);
    ChildSpec::actor(&name, Restart::Permanent, move || {
        (SocketChannel, args.clone())
    })
}

/// A platform adapter's child spec. Transient: a crash restarts it (after
/// its persisted crash-loop delay), a refused token stops it for good.
fn platform_spec<P: Platform>(args: PlatformArgs<P>) -> ChildSpec {
    let name = channel_name(args.platform.prefix());
    ChildSpec::actor(&name, Restart::Transient, move || {
        (PlatformChannel::<P>::default(), args.clone())
    })
}

/// The channel actors a host runs; each is optional.
#[derive(Clone, Default)]
pub struct Channels {
    pub terminal: Option<TerminalArgs>,
    pub socket: Option<SocketArgs>,
    pub slack: Option<PlatformArgs<Slack>>,
    pub discord: Option<PlatformArgs<Discord>>,
}

impl Channels {
    /// Only the terminal channel.
    pub fn terminal(args: TerminalArgs) -> Channels {
        Channels {
            terminal: Some(args),
            ..Channels::default()
        }
    }

    /// Names of the channels that will run, for the startup line.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.terminal.is_some() {
            names.push("terminal");
        }
        if self.socket.is_some() {
            names.push("socket");
        }
        if self.slack.is_some() {
            names.push("slack");
        }
        if self.discord.is_some() {
            names.push("discord");
        }
        names
    }

    fn specs(self) -> Vec<ChildSpec> {
        let mut specs: Vec<ChildSpec> = self.terminal.into_iter().map(terminal_spec).collect();
        specs.extend(self.socket.map(socket_spec));
        specs.extend(self.slack.map(platform_spec));
        specs.extend(self.discord.map(platform_spec));
        specs
    }
}

/// A platform adapter with the host's store, crash ledger and the default
/// delivery and stability settings.
pub fn platform_args<P: Platform>(ctx: &HostContext, platform: P) -> PlatformArgs<P> {
    PlatformArgs {
        platform: Arc::new(platform),
        store: ctx.store.clone(),
        ledger: CrashLedger::in_data_dir(&ctx.paths.data()),
        delivery: DeliveryPolicy::default(),
        stable_after: STABLE_AFTER,
    }
}

/// The platform adapters whose tokens are configured (environment or
/// `.env`), ready to start. A platform that cannot even be set up (e.g. no
/// TLS roots) is reported and left out; the others still start.
pub fn platform_channels(
    ctx: &HostContext,
) -> (Option<PlatformArgs<Slack>>, Option<PlatformArgs<Discord>>) {
    let secrets = &ctx.config.secrets;
    let channels = &ctx.config.channels;
    let assistant_name = ctx.config.assistant.name.clone();
    let slack = match (&secrets.slack_bot_token, &secrets.slack_app_token) {
        (Some(bot), Some(app)) => match Slack::new(SlackSettings {
            bot_token: bot.clone(),
            app_token: app.clone(),
            api_url: channels.slack_api_url.clone(),
            assistant_name: assistant_name.clone(),
        }) {
            Ok(slack) => Some(platform_args(ctx, slack)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the slack channel");
                None
            }
        },
        (Some(_), None) | (None, Some(_)) => {
            tracing::warn!(
                "slack needs both SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode); not started"
            );
            None
        }
        (None, None) => None,
    };
    let discord = secrets.discord_bot_token.as_ref().and_then(|token| {
        match Discord::new(DiscordSettings {
            token: token.clone(),
            origin: channels.discord_api_url.clone(),
            assistant_name: assistant_name.clone(),
        }) {
            Ok(discord) => Some(platform_args(ctx, discord)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the discord channel");
                None
            }
        }
    });
    (slack, discord)
}

/// Restart policy shared by the host's subtrees: a few quick restarts are
/// absorbed, a crash loop escalates.
fn default_intensity() -> Intensity {
    Intensity {
        max_restarts: 5,
        within: Duration::from_secs(60),
    }
}

fn default_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
}

/// Starts serving a group just registered in the store: the router reloads
/// its groups and the group's queue starts under the "groups" supervisor.
pub fn serve_new_group(ctx: &Arc<HostContext>, group: RegisteredGroup) -> Result<(), String> {
    if let Some(router) = ractor::registry::where_is(ROUTER) {
        let _ = router.send_message(RouterMsg::ReloadGroups);
    }
    let groups = ractor::registry::where_is("groups")
        .ok_or_else(|| "the groups supervisor is not running".to_string())?;
    let spec = queue_spec(ctx, group);
    groups
        .send_message(SupervisorMsg::StartChild(spec, None))
        .map_err(|e| e.to_string())
}

/// A running host.
pub struct Host {
    pub ctx: Arc<HostContext>,
    pub root: ActorRef<SupervisorMsg>,
    handle: tokio::task::JoinHandle<()>,
    pruning: tokio::task::JoinHandle<()>,
}

/// Starts the tree with the given channel actors.
pub async fn start(ctx: Arc<HostContext>, channels: Channels) -> Result<Host, HostError> {
    let orphans = remove_orphans(&ctx.docker, &ctx.instance).await;
    if orphans > 0 {
        tracing::warn!(orphans, "removed containers left by a previous host");
    }
    let channel_children = channels.specs();
    let groups_ctx = ctx.clone();
    let spec = SupervisorSpec {
        strategy: Strategy::OneForOne,
        intensity: default_intensity(),
        backoff: default_backoff(),
        children: vec![
            token_manager_spec(&ctx),
            router_spec(&ctx),
            scheduler_spec(&ctx),
            // Read from the store at every (re)start, so groups registered
            // at runtime survive a restart of this subtree.
            ChildSpec::supervisor("groups", Restart::Permanent, move || SupervisorSpec {
                strategy: Strategy::OneForOne,
                intensity: default_intensity(),
                backoff: default_backoff(),
                children: group_children(&groups_ctx),
            }),
            ChildSpec::supervisor("channels", Restart::Permanent, move || SupervisorSpec {
                strategy: Strategy::OneForOne,
                // Platform adapters pace their own restarts (the persisted
                // crash-loop delays); this only catches a runaway loop.
                intensity: Intensity {
                    max_restarts: 20,
                    within: Duration::from_secs(600),
                },
                backoff: default_backoff(),
                children: channel_children.clone(),
            }),
        ],
    };
    let (root, handle) = spawn_supervisor("talon", spec, None)
        .await
        .map_err(|e| HostError::Spawn(e.to_string()))?;
    // Groups the agent registers start like those added by the operator.
    // Weak: the context owns the actions, which must not keep it alive.
    let weak = Arc::downgrade(&ctx);
    ctx.actions.set_group_starter(Arc::new(move |group| {
        let ctx = weak
            .upgrade()
            .ok_or_else(|| "talon is stopping".to_string())?;
        serve_new_group(&ctx, group)
    }));
    // Replies recorded but not delivered before the last stop go out now.
    match ctx.store.unsent_outbox() {
        Ok(rows) => {
            for row in rows {
                crate::actors::group_queue::deliver_row(row);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
    }
    // Stale transcripts and run logs go now and every 24 h.
    let pruning = crate::prune::spawn_daily(ctx.paths.clone(), ctx.store.clone());
    tracing::info!("talon is running");
    Ok(Host {
        ctx,
        root,
        handle,
        pruning,
    })
}

impl Host {
    /// Registers a group at runtime and starts its queue.
    pub async fn add_group(&self, group: RegisteredGroup) -> Result<(), String> {
        self.ctx
            .store
            .register_group(&group)
            .map_err(|e| e.to_string())?;
        serve_new_group(&self.ctx, group)
    }

    /// The live actor tree.
    pub async fn dump(&self) -> crate::dump::ActorNode {
        crate::dump::snapshot(self.root.get_cell()).await
    }

    /// Writes the tree to `data/state-dump.json` (atomically) and the log.
    pub async fn write_dump(&self) -> std::io::Result<PathBuf> {
        let tree = self.dump().await;
        let document = serde_json::json!({
            "written_at": chrono::Utc::now().to_rfc3339(),
            "pid": std::process::id(),
            "tree": tree,
        });
        let text = serde_json::to_string_pretty(&document).map_err(std::io::Error::other)?;
        let path = self.ctx.paths.state_dump();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        tracing::info!(dump = %text, "actor tree dumped");
        Ok(path)
    }

    /// Stops the tree, then makes sure no container of ours keeps running.
    /// A clean shutdown also clears the channels' crash counts.
    pub async fn shutdown(self) {
        self.pruning.abort();
        self.root.stop(Some("shutdown".into()));
        if tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .is_err()
        {
            tracing::warn!("the actor tree did not stop within 15 s");
        }
        remove_orphans(&self.ctx.docker, &self.ctx.instance).await;
        CrashLedger::in_data_dir(&self.ctx.paths.data()).reset_all();
        tracing::info!("talon stopped");
    }
}

#[cfg(test)]
mod light_tier_tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(None, "test", &[], &env).unwrap()
    }

    fn error_of(result: Result<Option<Arc<dyn Provider>>, HostError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn no_light_model_means_no_light_tier() {
        let config = config(&[("COPILOT_API_URL", "http://127.0.0.1:4141")]);
        assert!(build_light_provider(&config).unwrap().is_none());
    }

    #[test]
    fn the_copilot_names_make_an_openai_light_tier() {
        let config = config(&[
            ("COPILOT_API_URL", "http://127.0.0.1:4141"),
            ("COPILOT_MODEL", "gpt-4o-mini"),
            ("COPILOT_API_KEY", "dummy"),
        ]);
        let light = build_light_provider(&config)
            .unwrap()
            .expect("a light tier");
        assert_eq!((light.name(), light.model()), ("openai", "gpt-4o-mini"));
    }

    #[test]
    fn an_openai_light_tier_without_a_url_is_a_clear_error() {
        let config = config(&[("COPILOT_MODEL", "gpt-4o-mini")]);
        let message = error_of(build_light_provider(&config));
        assert!(message.contains("light_base_url"), "{message}");
        assert!(message.contains("COPILOT_API_URL"), "{message}");
    }

    #[test]
    fn an_anthropic_light_tier_shares_the_credential_or_says_it_is_missing() {
        let light = [
            ("TALON_PROVIDER_LIGHT_KIND", "anthropic"),
            ("TALON_PROVIDER_LIGHT_MODEL", "claude-haiku-4-5"),
        ];
        let message = error_of(build_light_provider(&config(&light)));
        assert!(message.contains("ANTHROPIC_API_KEY"), "{message}");
        let mut with_key = light.to_vec();
        with_key.push(("ANTHROPIC_API_KEY", "sk-test"));
        let provider = build_light_provider(&config(&with_key))
            .unwrap()
            .expect("a light tier");
        assert_eq!(
            (provider.name(), provider.model()),
            ("anthropic", "claude-haiku-4-5")
        );
    }
}
