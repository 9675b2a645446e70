//! Per-group container configuration (SPEC §5): what a group's container may
//! have beyond the hardened defaults — a longer or shorter timeout, more
//! memory or CPU, network access, extra mounts and named secrets.
//!
//! It is stored as JSON in `registered_groups.container_config` and checked
//! here on every write (store, CLI) and every read, so a bad value is refused
//! where it is typed, with a message naming the field and the rule, instead of
//! surfacing later as a container that will not start. Mounts are checked only
//! for shape here; the allowlist (`mount_security`) decides at container
//! start whether they are granted.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mount_security::RequestedMount;

/// The shortest hard timeout a group may ask for.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest hard timeout a group may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Docker refuses memory limits below 6 MB.
pub const MIN_MEMORY_MB: u64 = 6;
pub const MAX_MEMORY_MB: u64 = 65_536;
pub const MIN_CPUS: f64 = 0.01;
pub const MAX_CPUS: f64 = 64.0;

/// Credentials the host keeps for its own model calls and channels (SPEC §6:
/// secrets never enter a container), and `TZ`, which the host always passes
/// itself. A group may never name these, whatever its config says.
pub const RESERVED_SECRETS: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_API_KEY_FALLBACK",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_AUTH_TOKEN",
    "DISCORD_BOT_TOKEN",
    "COPILOT_API_KEY",
    "TZ",
];

/// Name prefixes of the host's own credentials: Slack's tokens
/// (`SLACK_BOT_TOKEN`, `SLACK_APP_TOKEN`, any other `SLACK_*`) and every
/// Anthropic and Claude variable (the subscription and its refresh state).
pub const RESERVED_SECRET_PREFIXES: &[&str] = &["SLACK_", "ANTHROPIC_", "CLAUDE_"];

/// Why `name` may never be passed into a container, or `None` when it may.
/// `light_key_env` is the configured name of the LIGHT tier's key variable.
pub fn reserved_secret(name: &str, light_key_env: Option<&str>) -> Option<&'static str> {
    if name == "TZ" {
        return Some("the host always passes TZ itself");
    }
    let reserved = RESERVED_SECRETS.contains(&name)
        || RESERVED_SECRET_PREFIXES.iter().any(|p| name.starts_with(p))
        || light_key_env == Some(name);
    reserved.then_some("it is a credential the host keeps for itself")
}

/// The JSON field names, in the order they are written.
const FIELDS: &[&str] = &[
    "timeout",
    "memory_mb",
    "cpus",
    "network",
    "additional_mounts",
    "secrets",
    "provider",
    "runtime",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupContainerConfig {
    /// Hard timeout for this group's runs (humantime string in JSON, e.g.
    /// "1h"); the host still keeps idle + grace as the floor.
    #[serde(
        default,
        with = "humantime_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// "none" (default) or "bridge".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_mounts: Vec<RequestedMount>,
    /// Names of host environment variables (or .env keys) whose values are
    /// passed into the container, e.g. "THREADS_ACCESS_TOKEN".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The group's model tier and model, e.g. `{"tier": "light"}`; unset:
    /// the router (or HEAVY) decides, with the tier's configured model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<GroupProvider>,
    /// The agent this group runs (`talon` or `claude-code`); unset:
    /// `[agent] runtime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::messages::wire::AgentRuntime>,
}

/// `--runtime` of `talon groups set`: a runtime, or '' for the default.
pub fn parse_runtime_flag(
    value: &str,
) -> Result<Option<crate::messages::wire::AgentRuntime>, String> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        value.parse().map(Some)
    }
}

/// The longest model name a group may set.
pub const MAX_MODEL_CHARS: usize = 200;

/// A group's provider choice (spec §7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupProvider {
    /// `"light"` or `"heavy"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<crate::provider::Tier>,
    /// The model this group's runs ask for, on whichever tier is chosen;
    /// unset: the tier's configured model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The container's network: none unless a group is granted the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Bridge,
}

impl Network {
    /// The value for Docker's `NetworkMode`.
    pub fn docker_mode(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.docker_mode())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Network::None),
            "bridge" => Ok(Network::Bridge),
            _ => Err(format!(
                "network must be \"none\" or \"bridge\", not {text:?}"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerConfigError {
    #[error("container config: invalid JSON: {0}")]
    InvalidJson(String),
    #[error("container config: must be a JSON object such as {{\"memory_mb\": 2048}}, not {0}")]
    NotAnObject(&'static str),
    #[error("container config: unknown field {field:?}; the fields are {}", FIELDS.join(", "))]
    UnknownField { field: String },
    #[error("container config: {field}: {message}")]
    BadValue { field: String, message: String },
    #[error("container config: {field} must be between {min} and {max} (got {got})")]
    OutOfRange {
        field: &'static str,
        min: String,
        max: String,
        got: String,
    },
    #[error(
        "container config: secrets: {name:?} is not a valid name (it must match ^[A-Z][A-Z0-9_]*$)"
    )]
    InvalidSecretName { name: String },
    #[error("container config: secrets: {name:?} is listed twice")]
    DuplicateSecret { name: String },
    #[error("container config: secrets: {name:?} may not be passed into a container ({why})")]
    ReservedSecret { name: String, why: &'static str },
    #[error("container config: additional_mounts: host_path must not be empty")]
    EmptyHostPath,
    #[error(
        "container config: additional_mounts: container_path {path:?} must be a plain name \
         under /workspace/extra ({why})"
    )]
    InvalidContainerPath { path: String, why: &'static str },
}

impl GroupContainerConfig {
    /// Parses and validates: timeout 1 s ..= 24 h; memory_mb 6 ..= 65536;
    /// cpus 0.01 ..= 64; secret names match `^[A-Z][A-Z0-9_]*$`, no
    /// duplicates, and are never one of the model credentials the host keeps
    /// for itself nor TZ; additional_mounts container_path (if given) must be
    /// a plain relative name. Full mount checks happen later against the
    /// allowlist.
    pub fn parse(json: &str) -> Result<GroupContainerConfig, ContainerConfigError> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| ContainerConfigError::InvalidJson(e.to_string()))?;
        let object = match &value {
            serde_json::Value::Object(object) => object,
            serde_json::Value::Null => return Err(ContainerConfigError::NotAnObject("null")),
            serde_json::Value::Bool(_) => {
                return Err(ContainerConfigError::NotAnObject("a boolean"))
            }
            serde_json::Value::Number(_) => {
                return Err(ContainerConfigError::NotAnObject("a number"))
            }
            serde_json::Value::String(_) => {
                return Err(ContainerConfigError::NotAnObject("a string"))
            }
            serde_json::Value::Array(_) => {
                return Err(ContainerConfigError::NotAnObject("an array"))
            }
        };
        if let Some(field) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ContainerConfigError::UnknownField {
                field: field.clone(),
            });
        }
        let config = match serde_json::from_value::<GroupContainerConfig>(value.clone()) {
            Ok(config) => config,
            Err(whole) => return Err(locate_bad_field(object, whole)),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules [`GroupContainerConfig::parse`] enforces, for a
    /// config built in code (e.g. edited by CLI flags).
    pub fn validate(&self) -> Result<(), ContainerConfigError> {
        if let Some(timeout) = self.timeout {
            if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
                return Err(ContainerConfigError::OutOfRange {
                    field: "timeout",
                    min: "1s".into(),
                    max: "24h".into(),
                    got: humantime::format_duration(timeout).to_string(),
                });
            }
        }
        if let Some(memory_mb) = self.memory_mb {
            if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&memory_mb) {
                return Err(ContainerConfigError::OutOfRange {
                    field: "memory_mb",
                    min: MIN_MEMORY_MB.to_string(),
                    max: MAX_MEMORY_MB.to_string(),
                    got: memory_mb.to_string(),
                });
            }
        }
        if let Some(cpus) = self.cpus {
            // `contains` is false for NaN, so NaN is refused too.
            if !(MIN_CPUS..=MAX_CPUS).contains(&cpus) {
                return Err(ContainerConfigError::OutOfRange {
                    field: "cpus",
                    min: MIN_CPUS.to_string(),
                    max: MAX_CPUS.to_string(),
                    got: cpus.to_string(),
                });
            }
        }
        let mut seen = HashSet::new();
        for name in &self.secrets {
            validate_secret_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(ContainerConfigError::DuplicateSecret { name: name.clone() });
            }
        }
        for mount in &self.additional_mounts {
            if mount.host_path.trim().is_empty() {
                return Err(ContainerConfigError::EmptyHostPath);
            }
            if let Some(path) = &mount.container_path {
                validate_container_name(path)?;
            }
        }
        if let Some(model) = self.provider.as_ref().and_then(|p| p.model.as_deref()) {
            validate_model_name(model)?;
        }
        Ok(())
    }

    /// The group's own model, if it sets one.
    pub fn model(&self) -> Option<&str> {
        self.provider.as_ref().and_then(|p| p.model.as_deref())
    }

    /// Compact and stable (fields in declaration order); unset fields are
    /// omitted, so the default config is `{}`.
    pub fn to_json(&self) -> String {
        // Only strings, integers, floats and enums: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Indented JSON, for people.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// The stored form of a group: None/empty text -> default.
    pub fn of_group(stored: Option<&str>) -> Result<GroupContainerConfig, ContainerConfigError> {
        match stored {
            Some(text) if !text.trim().is_empty() => GroupContainerConfig::parse(text),
            _ => Ok(GroupContainerConfig::default()),
        }
    }

    /// The container's network: none unless granted.
    pub fn network_or_default(&self) -> Network {
        self.network.unwrap_or(Network::None)
    }
}

/// Parses the CLI's `--mount HOST_PATH[:NAME[:rw]]`: `NAME` is the name
/// under `/workspace/extra/` (empty or absent: the host path's last
/// component), and `rw` asks for read-write (`ro`, the default, for read-only).
/// The name's shape is checked with the rest of the config.
pub fn parse_mount_flag(text: &str) -> Result<RequestedMount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (host, name, mode) = match parts.as_slice() {
        [host] => (*host, "", "ro"),
        [host, name] => (*host, *name, "ro"),
        [host, name, mode] => (*host, *name, *mode),
        _ => {
            return Err(format!(
                "--mount {text:?}: expected HOST_PATH[:NAME[:rw]] (a host path with ':' cannot be given here; use --container-config)"
            ))
        }
    };
    if host.trim().is_empty() {
        return Err(format!("--mount {text:?}: the host path is empty"));
    }
    let read_write = match mode {
        "rw" => true,
        "ro" => false,
        other => {
            return Err(format!(
                "--mount {text:?}: the mode must be \"rw\" or \"ro\", not {other:?}"
            ))
        }
    };
    Ok(RequestedMount {
        host_path: host.to_string(),
        container_path: (!name.is_empty()).then(|| name.to_string()),
        read_write,
    })
}

/// Parses the CLI's `--timeout` (a humantime duration such as "1h"); the
/// range is checked with the rest of the config.
pub fn parse_timeout_flag(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("timeout must be a duration such as \"1h\" or \"90m\", not {text:?} ({e})")
    })
}

impl GroupContainerConfig {
    /// What a container of this group gets, one setting a line, with the
    /// host's value (marked "default") wherever the group sets none.
    pub fn effective_summary(&self, defaults: &crate::config::ContainerDefaults) -> String {
        fn line<T: fmt::Display>(
            label: &str,
            own: Option<T>,
            default: impl fmt::Display,
        ) -> String {
            match own {
                Some(value) => format!("  {label:<10} {value}"),
                None => format!("  {label:<10} {default} (default)"),
            }
        }
        let mut lines = vec![
            line(
                "timeout",
                self.timeout.map(humantime::format_duration),
                humantime::format_duration(defaults.timeout),
            ),
            format!(
                "  {:<10} {} (host setting; the hard timeout never fires before it plus the close grace)",
                "idle close",
                humantime::format_duration(defaults.idle_timeout)
            ),
            line("memory_mb", self.memory_mb, defaults.memory_mb),
            line("cpus", self.cpus, defaults.cpus),
            line("network", self.network, Network::None),
        ];
        if self.additional_mounts.is_empty() {
            lines.push(format!("  {:<10} none", "mounts"));
        }
        for mount in &self.additional_mounts {
            let name = mount
                .container_path
                .clone()
                .unwrap_or_else(|| "<last part of the host path>".into());
            let mode = if mount.read_write {
                "rw requested"
            } else {
                "ro"
            };
            lines.push(format!(
                "  {:<10} {} -> /workspace/extra/{name} ({mode}; subject to the mount allowlist)",
                "mount", mount.host_path
            ));
        }
        if let Some(tier) = self.provider.as_ref().and_then(|p| p.tier) {
            lines.push(format!("  {:<10} {tier}", "tier"));
        }
        if let Some(model) = self.model() {
            lines.push(format!("  {:<10} {model}", "model"));
        }
        if self.secrets.is_empty() {
            lines.push(format!("  {:<10} none", "secrets"));
        } else {
            lines.push(format!("  {:<10} {}", "secrets", self.secrets.join(", ")));
        }
        lines.join("\n")
    }
}

/// A whole-object deserialisation error does not say which field failed;
/// trying each field alone finds it, so the message can name it.
fn locate_bad_field(
    object: &serde_json::Map<String, serde_json::Value>,
    whole: serde_json::Error,
) -> ContainerConfigError {
    for (field, value) in object {
        let mut alone = serde_json::Map::new();
        alone.insert(field.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<GroupContainerConfig>(alone.into()) {
            return ContainerConfigError::BadValue {
                field: field.clone(),
                message: e.to_string(),
            };
        }
    }
    ContainerConfigError::InvalidJson(whole.to_string())
}

/// A model name goes into request bodies and log lines: it must be
/// non-empty, of bounded length, and free of control characters.
fn validate_model_name(model: &str) -> Result<(), ContainerConfigError> {
    let bad = |message: String| ContainerConfigError::BadValue {
        field: "provider.model".into(),
        message,
    };
    if model.trim().is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let chars = model.chars().count();
    if chars > MAX_MODEL_CHARS {
        return Err(bad(format!(
            "must be at most {MAX_MODEL_CHARS} characters (got {chars})"
        )));
    }
    if model.chars().any(char::is_control) {
        return Err(bad(format!(
            "{model:?} contains a control character; a model name is printable text"
        )));
    }
    if model.trim() != model {
        return Err(bad(format!("{model:?} has leading or trailing whitespace")));
    }
    Ok(())
}

fn validate_secret_name(name: &str) -> Result<(), ContainerConfigError> {
    let mut bytes = name.bytes();
    let well_formed = bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err(ContainerConfigError::InvalidSecretName { name: name.into() });
    }
    if let Some(why) = reserved_secret(name, None) {
        return Err(ContainerConfigError::ReservedSecret {
            name: name.into(),
            why,
        });
    }
    Ok(())
}

/// A mount's name under `/workspace/extra/`: one plain path component, so it
/// can never point elsewhere in the container or smuggle a Docker bind option.
fn validate_container_name(path: &str) -> Result<(), ContainerConfigError> {
    let why = if path.trim().is_empty() {
        Some("it is empty")
    } else if path.contains('/') || path.contains('\\') {
        Some("it must not contain '/'")
    } else if path == "." || path == ".." || path.contains("..") {
        Some("it must not contain '..'")
    } else if path.contains(':') {
        Some("it must not contain ':'")
    } else if path.chars().any(char::is_control) {
        Some("it must not contain control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(ContainerConfigError::InvalidContainerPath {
            path: path.into(),
            why,
        }),
        None => Ok(()),
    }
}

/// `Option<Duration>` as a humantime string ("1h", "90m", "1h 30m").
mod humantime_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => s.collect_str(&humantime::format_duration(*duration)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(text) => text,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "must be a duration string with a unit, such as \"1h\", \"90m\" or \"45s\", not {other}"
                )))
            }
        };
        humantime::parse_duration(text.trim())
            .map(Some)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "must be a duration such as \"1h\", \"90m\" or \"45s\", not {text:?} ({e})"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &str, name: Option<&str>, rw: bool) -> RequestedMount {
        RequestedMount {
            host_path: host.into(),
            container_path: name.map(str::to_string),
            read_write: rw,
        }
    }

    #[test]
    fn valid_configs_parse_to_the_expected_values() {
        let full = GroupContainerConfig {
            timeout: Some(Duration::from_secs(3600)),
            memory_mb: Some(2048),
            cpus: Some(2.5),
            network: Some(Network::Bridge),
            additional_mounts: vec![mount("~/docs", Some("docs"), true)],
            secrets: vec!["THREADS_ACCESS_TOKEN".into()],
            provider: Some(GroupProvider {
                tier: Some(crate::provider::Tier::Heavy),
                model: None,
            }),
            runtime: None,
        };
        let cases: Vec<(&str, GroupContainerConfig)> = vec![
            (
                r#"{"provider":{"tier":"light"}}"#,
                GroupContainerConfig {
                    provider: Some(GroupProvider {
                        tier: Some(crate::provider::Tier::Light),
                        model: None,
                    }),
                    ..Default::default()
                },
            ),
            (
                r#"{"provider":{"model":"special-model"}}"#,
                GroupContainerConfig {
                    provider: Some(GroupProvider {
                        tier: None,
                        model: Some("special-model".into()),
                    }),
                    ..Default::default()
                },
            ),
            ("{}", GroupContainerConfig::default()),
            ("  { }  ", GroupContainerConfig::default()),
            (
                r#"{"timeout":"90m"}"#,
                GroupContainerConfig {
                    timeout: Some(Duration::from_secs(90 * 60)),
                    ..Default::default()
                },
            ),
            (
                r#"{"timeout":"1s","memory_mb":6,"cpus":0.01}"#,
                GroupContainerConfig {
                    timeout: Some(Duration::from_secs(1)),
                    memory_mb: Some(6),
                    cpus: Some(0.01),
                    ..Default::default()
                },
            ),
            (
                r#"{"timeout":"24h","memory_mb":65536,"cpus":64}"#,
                GroupContainerConfig {
                    timeout: Some(Duration::from_secs(86_400)),
                    memory_mb: Some(65_536),
                    cpus: Some(64.0),
                    ..Default::default()
                },
            ),
            (
                r#"{"network":"none","timeout":null}"#,
                GroupContainerConfig {
                    network: Some(Network::None),
                    ..Default::default()
                },
            ),
            (
                r#"{"additional_mounts":[{"host_path":"/srv/data"}],"secrets":["A","B_2"]}"#,
                GroupContainerConfig {
                    additional_mounts: vec![mount("/srv/data", None, false)],
                    secrets: vec!["A".into(), "B_2".into()],
                    ..Default::default()
                },
            ),
            (
                r#"{"timeout":"1h","memory_mb":2048,"cpus":2.5,"network":"bridge",
                    "additional_mounts":[{"host_path":"~/docs","container_path":"docs","read_write":true}],
                    "secrets":["THREADS_ACCESS_TOKEN"],"provider":{"tier":"heavy"}}"#,
                full,
            ),
        ];
        for (json, expected) in cases {
            let parsed =
                GroupContainerConfig::parse(json).unwrap_or_else(|e| panic!("{json} refused: {e}"));
            assert_eq!(parsed, expected, "{json}");
        }
    }

    #[test]
    fn invalid_configs_are_refused_naming_the_field_and_rule() {
        let cases: &[(&str, &[&str])] = &[
            ("{", &["invalid JSON"]),
            ("", &["invalid JSON"]),
            ("[]", &["JSON object", "an array"]),
            ("null", &["JSON object", "null"]),
            (
                r#"{"memory":512}"#,
                &["unknown field", "\"memory\"", "memory_mb"],
            ),
            (
                r#"{"memory_mb":2}"#,
                &["memory_mb must be between 6 and 65536 (got 2)"],
            ),
            (r#"{"memory_mb":65537}"#, &["memory_mb", "65536", "65537"]),
            (r#"{"memory_mb":-5}"#, &["memory_mb:", "-5"]),
            (r#"{"memory_mb":"2048"}"#, &["memory_mb:", "string"]),
            (
                r#"{"cpus":0}"#,
                &["cpus must be between 0.01 and 64 (got 0)"],
            ),
            (r#"{"cpus":65}"#, &["cpus must be between", "65"]),
            (
                r#"{"timeout":"0s"}"#,
                &["timeout must be between 1s and 24h"],
            ),
            (
                r#"{"timeout":"25h"}"#,
                &["timeout must be between", "1day 1h"],
            ),
            (r#"{"timeout":"soon"}"#, &["timeout:", "\"soon\""]),
            (
                r#"{"provider":{"tier":"medium"}}"#,
                &["provider:", "medium"],
            ),
            (r#"{"provider":{"modle":"x"}}"#, &["provider:", "modle"]),
            (r#"{"provider":{"model":""}}"#, &["provider.model", "empty"]),
            (
                r#"{"provider":{"model":"   "}}"#,
                &["provider.model", "empty"],
            ),
            (
                r#"{"provider":{"model":"gpt\n4"}}"#,
                &["provider.model", "control character"],
            ),
            (
                r#"{"provider":{"model":" gpt-4o"}}"#,
                &["provider.model", "whitespace"],
            ),
            (r#"{"provider":{"model":7}}"#, &["provider:", "string"]),
            (r#"{"timeout":3600}"#, &["timeout:", "with a unit", "3600"]),
            (r#"{"network":"host"}"#, &["network:", "host"]),
            (
                r#"{"secrets":["lower"]}"#,
                &["secrets:", "\"lower\"", "^[A-Z]"],
            ),
            (r#"{"secrets":["1ABC"]}"#, &["secrets:", "1ABC"]),
            (r#"{"secrets":["A-B"]}"#, &["secrets:", "A-B"]),
            (r#"{"secrets":[""]}"#, &["secrets:", "not a valid name"]),
            (r#"{"secrets":["TOKEN","TOKEN"]}"#, &["secrets:", "twice"]),
            (
                r#"{"secrets":["ANTHROPIC_API_KEY"]}"#,
                &["secrets:", "ANTHROPIC_API_KEY", "credential the host keeps"],
            ),
            (
                r#"{"secrets":["ANTHROPIC_API_KEY_FALLBACK"]}"#,
                &["credential the host keeps"],
            ),
            (
                r#"{"secrets":["CLAUDE_CODE_OAUTH_TOKEN"]}"#,
                &["credential the host keeps"],
            ),
            (
                r#"{"secrets":["ANTHROPIC_AUTH_TOKEN"]}"#,
                &["credential the host keeps"],
            ),
            (r#"{"secrets":["TZ"]}"#, &["secrets:", "TZ"]),
            // The host's own channel and LIGHT-tier credentials.
            (
                r#"{"secrets":["SLACK_BOT_TOKEN"]}"#,
                &["SLACK_BOT_TOKEN", "credential the host keeps"],
            ),
            (
                r#"{"secrets":["SLACK_APP_TOKEN"]}"#,
                &["credential the host keeps"],
            ),
            (
                r#"{"secrets":["DISCORD_BOT_TOKEN"]}"#,
                &["credential the host keeps"],
            ),
            (
                r#"{"secrets":["COPILOT_API_KEY"]}"#,
                &["credential the host keeps"],
            ),
            (
                r#"{"secrets":["CLAUDE_ANYTHING"]}"#,
                &["credential the host keeps"],
            ),
            (r#"{"secrets":"TOKEN"}"#, &["secrets:", "sequence"]),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","container_path":"a/b"}]}"#,
                &["additional_mounts", "container_path", "\"a/b\"", "'/'"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","container_path":"/abs"}]}"#,
                &["container_path", "'/'"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","container_path":".."}]}"#,
                &["container_path", "'..'"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","container_path":"x:ro"}]}"#,
                &["container_path", "':'"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","container_path":""}]}"#,
                &["container_path", "empty"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":""}]}"#,
                &["additional_mounts", "host_path"],
            ),
            (
                r#"{"additional_mounts":[{"host_path":"~/a","rw":true}]}"#,
                &["additional_mounts:", "rw"],
            ),
        ];
        for (json, needles) in cases {
            let error = match GroupContainerConfig::parse(json) {
                Ok(config) => panic!("{json} accepted as {config:?}"),
                Err(e) => e.to_string(),
            };
            assert!(error.starts_with("container config: "), "{json}: {error}");
            for needle in *needles {
                assert!(error.contains(needle), "{json}: {error:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn to_json_is_compact_stable_and_round_trips() {
        assert_eq!(GroupContainerConfig::default().to_json(), "{}");
        let config = GroupContainerConfig {
            timeout: Some(Duration::from_secs(90 * 60)),
            memory_mb: Some(2048),
            cpus: Some(1.5),
            network: Some(Network::Bridge),
            additional_mounts: vec![mount("~/docs", Some("docs"), false)],
            secrets: vec!["THREADS_ACCESS_TOKEN".into()],
            provider: Some(GroupProvider {
                tier: Some(crate::provider::Tier::Heavy),
                model: None,
            }),
            runtime: None,
        };
        let json = config.to_json();
        assert_eq!(
            json,
            r#"{"timeout":"1h 30m","memory_mb":2048,"cpus":1.5,"network":"bridge","additional_mounts":[{"host_path":"~/docs","container_path":"docs","read_write":false}],"secrets":["THREADS_ACCESS_TOKEN"],"provider":{"tier":"heavy"}}"#
        );
        assert_eq!(GroupContainerConfig::parse(&json).unwrap(), config);
        assert_eq!(
            GroupContainerConfig::parse(&config.to_pretty_json()).unwrap(),
            config
        );
        let only_memory = GroupContainerConfig {
            memory_mb: Some(512),
            ..Default::default()
        };
        assert_eq!(only_memory.to_json(), r#"{"memory_mb":512}"#);
    }

    #[test]
    fn the_field_list_matches_the_struct() {
        // Every FIELDS entry is accepted, and a full config writes exactly FIELDS.
        let config = GroupContainerConfig {
            timeout: Some(Duration::from_secs(60)),
            memory_mb: Some(64),
            cpus: Some(1.0),
            network: Some(Network::None),
            additional_mounts: vec![mount("/x", None, false)],
            secrets: vec!["X".into()],
            provider: Some(GroupProvider {
                tier: Some(crate::provider::Tier::Light),
                model: Some("special-model".into()),
            }),
            runtime: Some(crate::messages::wire::AgentRuntime::ClaudeCode),
        };
        let value: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_fields = FIELDS.to_vec();
        sorted_fields.sort_unstable();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        assert_eq!(sorted_keys, sorted_fields);
    }

    #[test]
    fn a_group_runtime_is_stored_and_the_flag_can_reset_it() {
        let config = GroupContainerConfig::of_group(Some(r#"{"runtime":"claude-code"}"#)).unwrap();
        assert_eq!(
            config.runtime,
            Some(crate::messages::wire::AgentRuntime::ClaudeCode)
        );
        assert!(GroupContainerConfig::of_group(Some(r#"{"runtime":"gpt"}"#)).is_err());
        assert_eq!(parse_runtime_flag(""), Ok(None));
        assert_eq!(
            parse_runtime_flag("talon"),
            Ok(Some(crate::messages::wire::AgentRuntime::Talon))
        );
        assert!(parse_runtime_flag("bogus").is_err());
    }

    #[test]
    fn stored_text_of_a_group() {
        assert_eq!(
            GroupContainerConfig::of_group(None).unwrap(),
            GroupContainerConfig::default()
        );
        assert_eq!(
            GroupContainerConfig::of_group(Some("  ")).unwrap(),
            GroupContainerConfig::default()
        );
        assert_eq!(
            GroupContainerConfig::of_group(Some(r#"{"memory_mb":100}"#))
                .unwrap()
                .memory_mb,
            Some(100)
        );
        assert!(GroupContainerConfig::of_group(Some(r#"{"memory_mb":1}"#)).is_err());
    }

    #[test]
    fn network_modes() {
        assert_eq!(Network::None.docker_mode(), "none");
        assert_eq!(Network::Bridge.docker_mode(), "bridge");
        assert_eq!("Bridge".parse::<Network>(), Ok(Network::Bridge));
        assert_eq!("none".parse::<Network>(), Ok(Network::None));
        assert!("host".parse::<Network>().unwrap_err().contains("\"host\""));
        assert_eq!(
            GroupContainerConfig::default().network_or_default(),
            Network::None
        );
    }

    #[test]
    fn mount_flags() {
        let ok: &[(&str, RequestedMount)] = &[
            ("~/docs", mount("~/docs", None, false)),
            ("/srv/data:data", mount("/srv/data", Some("data"), false)),
            ("/srv/data:data:rw", mount("/srv/data", Some("data"), true)),
            ("/srv/data:data:ro", mount("/srv/data", Some("data"), false)),
            ("/srv/data::rw", mount("/srv/data", None, true)),
        ];
        for (text, expected) in ok {
            assert_eq!(&parse_mount_flag(text).unwrap(), expected, "{text}");
        }
        for bad in ["", ":x", "/a:b:rwx", "/a:b:rw:extra"] {
            assert!(parse_mount_flag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn timeout_flags() {
        assert_eq!(parse_timeout_flag("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout_flag(" 90s "), Ok(Duration::from_secs(90)));
        assert!(parse_timeout_flag("3600").unwrap_err().contains("timeout"));
    }

    #[test]
    fn the_summary_marks_defaults() {
        let defaults = crate::config::ContainerDefaults::default();
        let summary = GroupContainerConfig::default().effective_summary(&defaults);
        assert!(summary.contains("timeout    30m (default)"), "{summary}");
        assert!(summary.contains("memory_mb  1024 (default)"), "{summary}");
        assert!(summary.contains("network    none (default)"), "{summary}");
        assert!(summary.contains("secrets    none"), "{summary}");
        let own = GroupContainerConfig {
            timeout: Some(Duration::from_secs(3600)),
            memory_mb: Some(2048),
            network: Some(Network::Bridge),
            additional_mounts: vec![mount("~/docs", Some("docs"), true)],
            secrets: vec!["A".into(), "B".into()],
            ..Default::default()
        };
        let summary = own.effective_summary(&defaults);
        assert!(summary.contains("timeout    1h\n"), "{summary}");
        assert!(summary.contains("memory_mb  2048\n"), "{summary}");
        assert!(summary.contains("cpus       1 (default)"), "{summary}");
        assert!(summary.contains("network    bridge\n"), "{summary}");
        assert!(
            summary.contains("~/docs -> /workspace/extra/docs (rw requested"),
            "{summary}"
        );
        assert!(summary.contains("secrets    A, B"), "{summary}");
        assert!(!summary.contains("model"), "{summary}");
        let with_model = GroupContainerConfig {
            provider: Some(GroupProvider {
                tier: Some(crate::provider::Tier::Light),
                model: Some("special-model".into()),
            }),
            ..Default::default()
        };
        let summary = with_model.effective_summary(&defaults);
        assert!(summary.contains("tier       light\n"), "{summary}");
        assert!(summary.contains("model      special-model\n"), "{summary}");
    }

    #[test]
    fn model_names_are_bounded_in_length_counting_characters() {
        let with_model = |model: String| GroupContainerConfig {
            provider: Some(GroupProvider {
                tier: None,
                model: Some(model),
            }),
            ..Default::default()
        };
        let longest = with_model("é".repeat(MAX_MODEL_CHARS));
        assert!(longest.validate().is_ok());
        assert_eq!(longest.model().map(|m| m.chars().count()), Some(200));
        let error = with_model("m".repeat(MAX_MODEL_CHARS + 1))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("provider.model"), "{error}");
        assert!(
            error.contains("at most 200 characters (got 201)"),
            "{error}"
        );
        let parsed = GroupContainerConfig::parse(
            r#"{"provider":{"tier":"heavy","model":"org/m:v1 large"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.model(), Some("org/m:v1 large"));
        assert_eq!(GroupContainerConfig::default().model(), None);
    }

    #[test]
    fn validate_catches_configs_built_in_code() {
        let nan_cpus = GroupContainerConfig {
            cpus: Some(f64::NAN),
            ..Default::default()
        };
        assert!(nan_cpus.validate().is_err());
        let reserved = GroupContainerConfig {
            secrets: vec!["CLAUDE_CODE_OAUTH_TOKEN".into()],
            ..Default::default()
        };
        assert!(matches!(
            reserved.validate(),
            Err(ContainerConfigError::ReservedSecret { .. })
        ));
        let short = GroupContainerConfig {
            timeout: Some(Duration::from_millis(999)),
            ..Default::default()
        };
        assert!(short.validate().is_err());
    }
}
