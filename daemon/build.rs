//! Records when this binary was built, as a lower bound for a plausible wall clock: a device
//! whose clock reads earlier is waiting for NTP (`waiting_for_clock`). Reproducible builds set
//! `SOURCE_DATE_EPOCH`, which wins.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=OCTOMILD_BUILD_SECS={secs}");
}
