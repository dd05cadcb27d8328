//! What a test does when it cannot run its real dependency (a tool, a kernel feature, root):
//! in CI it fails, so a machine that lacks the dependency cannot pass by testing nothing;
//! on a developer's machine it prints one `SKIPPED <test>: <why>` line and the test returns.
//!
//! The one exception is the aarch64 test run under qemu-user in `.ci/cross.sh`, which sets
//! [`EMULATED_VAR`]: there the skips that emulation forces ([`emulation_limit`]) are allowed,
//! each listed with its reason in `docs/cross-builds.md`. Every other skip still fails there.

/// Set to `1` by `.ci/cross.sh` for the emulated aarch64 test run.
pub const EMULATED_VAR: &str = "OCTOMIL_TEST_EMULATED";

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false` (CI sets `true`).
pub fn in_ci() -> bool {
    is_ci_value(std::env::var("CI").ok().as_deref())
}

fn is_ci_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Whether this run is the emulated one that `.ci/cross.sh` starts.
pub fn emulated() -> bool {
    std::env::var(EMULATED_VAR).is_ok_and(|v| v == "1")
}

/// `test` cannot run because `why` (say, "mosquitto is not installed"). Panics in CI; prints
/// `SKIPPED test: why` elsewhere, and the caller returns.
#[track_caller]
pub fn missing_dependency(test: &str, why: &str) {
    if in_ci() {
        panic!(
            "{test} cannot run: {why}. In CI (CI is set) a test may not skip: make .ci/run \
             install what it needs"
        );
    }
    println!("SKIPPED {test}: {why} (this fails when CI=true)");
}

/// `test` cannot run under qemu-user emulation because `why` (say, the host kernel cannot
/// exec an aarch64 binary). Skips quietly in the emulated CI run ([`EMULATED_VAR`]=1); anywhere
/// else it is a missing dependency like any other, so a native CI run never skips it.
#[track_caller]
pub fn emulation_limit(test: &str, why: &str) {
    if emulated() {
        println!("SKIPPED {test} (emulated run, {EMULATED_VAR}=1): {why}");
        return;
    }
    missing_dependency(test, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_any_value_but_empty_zero_or_false() {
        assert!(is_ci_value(Some("true")));
        assert!(is_ci_value(Some("1")));
        assert!(is_ci_value(Some("yes")));
        assert!(!is_ci_value(None));
        assert!(!is_ci_value(Some("")));
        assert!(!is_ci_value(Some("0")));
        assert!(!is_ci_value(Some("false")));
        assert!(!is_ci_value(Some("FALSE")));
    }

    #[test]
    fn a_missing_dependency_fails_in_ci_and_skips_elsewhere() {
        // Run the decision in a child copy of this test binary with a chosen environment, so
        // the test does not depend on (or change) whether this run is in CI.
        let child = |ci: Option<&str>, emulated: bool, which: &str| {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", "skip::tests::child_probe", "--nocapture"])
                .env("OCTOMIL_SKIP_PROBE", which)
                .env_remove("CI")
                .env_remove(EMULATED_VAR);
            if let Some(v) = ci {
                cmd.env("CI", v);
            }
            if emulated {
                cmd.env(EMULATED_VAR, "1");
            }
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success(), stdout)
        };

        let (ok, out) = child(None, false, "dependency");
        assert!(ok && out.contains("SKIPPED probe: no tool"), "{out}");
        let (ok, _) = child(Some("true"), false, "dependency");
        assert!(!ok, "CI=true must fail a test whose dependency is missing");
        // The emulated run may skip what emulation cannot do, and nothing else.
        let (ok, out) = child(Some("true"), true, "emulation");
        assert!(ok && out.contains("SKIPPED probe (emulated run"), "{out}");
        let (ok, _) = child(Some("true"), false, "emulation");
        assert!(!ok, "a native CI run must not skip an emulation limit");
        let (ok, _) = child(Some("true"), true, "dependency");
        assert!(!ok, "the emulated run must not skip a missing tool");
    }

    /// Not a test of its own: the child that `a_missing_dependency_fails_in_ci_and_skips_elsewhere`
    /// runs. Does nothing unless that test set `OCTOMIL_SKIP_PROBE`.
    #[test]
    fn child_probe() {
        match std::env::var("OCTOMIL_SKIP_PROBE").as_deref() {
            Ok("dependency") => missing_dependency("probe", "no tool"),
            Ok("emulation") => emulation_limit("probe", "no exec"),
            _ => {}
        }
    }
}
