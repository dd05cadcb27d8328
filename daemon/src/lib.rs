//! `octomild`: the Octomil Edge device-identity daemon as a library. `main.rs` is a thin shell
//! over [`run::run`]; tests call the same function with their own shutdown token.

pub mod agent;
pub mod answer;
pub mod api;
pub mod cli;
pub mod client;
pub mod client_tls;
pub mod cloud;
pub mod config;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod run;
pub mod schedule;
pub mod socket;
pub mod state;
pub mod store;
