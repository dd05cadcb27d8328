//! Test helpers that more than one crate's tests need: `octomil-cloud`'s own tests cannot
//! depend on the end-to-end crate (which depends on it), so what both use lives here, as a
//! dev-dependency only. [`skip`] is how every test reports a missing dependency (it fails in
//! CI); [`mosquitto`] runs a real Mosquitto per test; [`poll`] waits for a condition with a
//! deadline; [`bench`] reads a benchmark's knobs; [`browser`] drives a headless Chromium.

pub mod bench;
pub mod browser;
pub mod mosquitto;
pub mod poll;
pub mod skip;
