//! Test helpers that more than one crate's tests need: `octomil-cloud`'s own tests cannot
//! depend on the end-to-end crate (which depends on it), so what both use lives here, as a
//! dev-dependency only.

pub mod mosquitto;
