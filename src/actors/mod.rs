//! One actor per file. Each stays thin: receive a message, decide through a
//! pure function, act.

pub mod container;
pub mod group_queue;
pub mod platform;
pub mod router;
pub mod scheduler;
pub mod socket;
pub mod supervisor;
pub mod terminal;
pub mod token_manager;
