//! `octomild`: the Octomil Edge device-identity daemon as a library; `main.rs` is a thin shell.

pub mod store;
