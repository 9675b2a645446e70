//! talon: a personal AI assistant host.
//!
//! Chat channels (terminal, Slack, Discord) feed a router; each registered
//! group has a queue actor that runs a Claude agent inside a hardened Docker
//! container, one container per group, and delivers its replies back to the
//! chat. Every actor lives under one generic supervisor implementation.
//!
//! Pure decisions (trigger matching, prompt formatting, cursor and retry
//! rules, container specs) live in small modules with unit tests; the actors
//! in [`actors`] receive, decide through them, and act.

pub mod actors;
pub mod auth;
pub mod batch;
pub mod budget;
pub mod channels;
pub mod cli;
pub mod config;
pub mod container_config;
pub mod deadline;
pub mod docker;
pub mod doctor;
pub mod dump;
pub mod host;
pub mod host_actions;
pub mod image;
pub mod lines;
pub mod logging;
pub mod memory;
pub mod messages;
pub mod mount_security;
pub mod outbound;
pub mod paths;
pub mod prompt;
pub mod provider;
pub mod prune;
pub mod retry;
pub mod safe_fs;
pub mod secret;
pub mod service;
pub mod singleton;
pub mod store;
pub mod tls;
pub mod trigger;
