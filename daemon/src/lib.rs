//! `octomild`: the Octomil Edge device-identity daemon as a library.

pub mod client;
pub mod socket;
pub mod store;
