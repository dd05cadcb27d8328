//! Whether this test binary can start a copy of itself. It cannot under qemu-user without
//! binfmt_misc (`cargo test --target aarch64-unknown-linux-gnu` on an x86_64 host, as CI runs
//! it): the guest's exec goes to the host kernel, which cannot run an aarch64 binary. Tests
//! that re-run the test binary (as a crash child, or under setpriv) skip there through
//! `octomil_testkit::skip::emulation_limit`, which allows it only in that emulated CI run;
//! natively the probe always succeeds, so nothing is skipped.

use std::process::{Command, Stdio};

/// `Some(reason)` when the host cannot exec this test binary, `None` when it can.
pub fn cannot_exec_self() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let arch = std::env::consts::ARCH;
    let why = |detail: &str| {
        format!(
            "the host cannot exec this {arch} test binary ({detail}); running under qemu-user \
             without binfmt_misc?"
        )
    };
    match Command::new(&exe)
        .args(["--list", "--format=terse"])
        .stdin(Stdio::null())
        .output()
    {
        // ENOEXEC: "Exec format error".
        Err(e) if e.raw_os_error() == Some(8) => Some(why(&e.to_string())),
        Err(_) => None,
        Ok(out) if out.status.success() => None,
        Ok(out) => {
            // Under qemu-user, glibc's posix_spawn cannot report a failed exec to the parent (its
            // vfork is emulated as a fork), so the child just exits 127. Through execvp (setpriv,
            // keyctl) an ENOEXEC file is retried as a shell script, and sh chokes on the ELF.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let foreign = out.status.code() == Some(127)
                || [
                    "Exec format error",
                    "Syntax error",
                    "cannot execute binary file",
                ]
                .iter()
                .any(|s| stderr.contains(s));
            let detail = match stderr.trim() {
                "" => out.status.to_string(),
                s => s.to_owned(),
            };
            foreign.then(|| why(&detail))
        }
    }
}
