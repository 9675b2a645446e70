//! Typed messages: what actors say to each other, and the host↔container
//! wire protocol ([`wire`]).

pub mod actor;
pub mod channel;
pub mod socket;
pub mod wire;

pub use actor::*;
