//! The install path: `make install` into a temp DESTDIR lays out the binaries, the unit, the
//! sysusers/tmpfiles snippets and the example config with the right modes; the example config
//! lists every key the daemon reads with its real default; the Debian package metadata ships
//! the same files; and (where the tools exist) the installed snippets and unit are accepted by
//! systemd-sysusers, systemd-tmpfiles and systemd-analyze.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use octomil_e2e::{bin, run};
use octomil_testkit::skip;

/// What `make install install-cloud PREFIX=/usr` must produce, and nothing else: path under
/// DESTDIR, source in the repository (None for built binaries), mode.
const FILES: &[(&str, Option<&str>, u32)] = &[
    ("usr/bin/octomild", None, 0o755),
    ("usr/bin/octomil", None, 0o755),
    ("usr/bin/octomil-cloud", None, 0o755),
    (
        "usr/lib/systemd/system/octomild.service",
        Some("systemd/octomild.service"),
        0o644,
    ),
    (
        "usr/lib/sysusers.d/octomil.conf",
        Some("systemd/octomil.sysusers"),
        0o644,
    ),
    (
        "usr/lib/tmpfiles.d/octomil.conf",
        Some("systemd/octomil.tmpfiles"),
        0o644,
    ),
    (
        "usr/share/doc/octomild/octomild-plain-credentials.conf",
        Some("systemd/octomild-plain-credentials.conf"),
        0o644,
    ),
    (
        "etc/octomil/octomild.toml.example",
        Some("systemd/octomild.toml.example"),
        0o644,
    ),
];

/// Directories whose mode matters: the config dir is world-readable (nothing in it is secret).
const DIRS: &[(&str, u32)] = &[("etc/octomil", 0o755), ("usr/bin", 0o755)];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    // /proc/self belongs to the effective uid; no libc call needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Every file and symlink under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `make install install-cloud` into a fresh DESTDIR with the binaries cargo built for
/// this test run; None when `make` is missing (reported for `test`, which fails in CI).
fn make_install(test: &str) -> Option<tempfile::TempDir> {
    if !on_path("make") {
        skip::missing_dependency(test, "`make` is not on PATH");
        return None;
    }
    let build_dir = bin("octomild").parent().unwrap().to_owned();
    bin("octomil");
    bin("octomil-cloud");
    let dest = tempfile::tempdir().unwrap();
    let (out, stdout, stderr) = run(Command::new("make")
        .arg("-C")
        .arg(repo())
        .args(["-s", "install", "install-cloud", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", dest.path().display()))
        .arg(format!("BUILD_DIR={}", build_dir.display()))
        // The developer's own settings must not leak into the layout under test.
        .env_remove("MAKEFLAGS")
        .env_remove("SYSCONFDIR")
        .env_remove("BINDIR")
        .env_remove("UNITDIR")
        .env_remove("SYSUSERSDIR")
        .env_remove("TMPFILESDIR")
        .env_remove("DOCDIR")
        .env_remove("INSTALL"));
    assert!(
        out.status.success(),
        "make install failed:\n{stdout}\n{stderr}"
    );
    Some(dest)
}

#[test]
fn make_install_lays_out_the_tree_with_the_right_modes() {
    let Some(dest) = make_install("make_install_lays_out_the_tree_with_the_right_modes") else {
        return;
    };
    let root = dest.path();
    let mut want: Vec<String> = FILES.iter().map(|(p, _, _)| (*p).to_owned()).collect();
    want.sort();
    assert_eq!(tree(root), want, "installed tree");

    for (path, source, want_mode) in FILES {
        let installed = root.join(path);
        let got = mode(&installed);
        assert_eq!(
            got, *want_mode,
            "mode of {path}: {got:o}, want {want_mode:o}"
        );
        if let Some(source) = source {
            assert_eq!(
                std::fs::read(&installed).unwrap(),
                std::fs::read(repo().join(source)).unwrap(),
                "{path} is a copy of {source}"
            );
        }
    }
    for (dir, want_mode) in DIRS {
        let got = mode(&root.join(dir));
        assert_eq!(
            got, *want_mode,
            "mode of {dir}/: {got:o}, want {want_mode:o}"
        );
    }

    // The installed daemon is the one cargo built, and runs.
    let (out, stdout, _) = run(Command::new(root.join("usr/bin/octomild")).arg("--version"));
    assert!(
        out.status.success() && stdout.starts_with("octomild "),
        "{stdout}"
    );

    // The unit starts the binary where the tree put it, on the config the example is for.
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/octomild.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/octomild run --config /etc/octomil/octomild.toml"),
        "ExecStart= line"
    );
    // A core dump would hold the device key: the unit forbids them.
    assert!(unit.lines().any(|l| l == "LimitCORE=0"), "LimitCORE=0 line");
}

/// The keys `config.rs` accepts, read from its `KEYS` table so the two cannot drift.
fn daemon_keys() -> Vec<String> {
    let src = std::fs::read_to_string(repo().join("daemon/src/config.rs")).unwrap();
    let start = src.find("const KEYS: &[&str] = &[").expect("KEYS table");
    let body = &src[start..];
    let body = &body[body.find('[').unwrap() + 1..];
    let body = &body[body.find('[').unwrap() + 1..body.find("];").unwrap()];
    body.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `key = value` lines of the example, commented out or not: key -> (line, active).
fn example_keys(text: &str) -> BTreeMap<String, (String, bool)> {
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let active = !line.starts_with('#');
        let body = line.trim_start_matches('#');
        let Some((key, _)) = body.split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.is_empty() {
            let old = keys.insert(key.to_owned(), (body.to_owned(), active));
            assert!(old.is_none(), "{key} appears twice in the example");
        }
    }
    keys
}

#[test]
fn example_config_lists_every_key_with_its_real_default() {
    use octomild::config::{Env, parse};
    let text = std::fs::read_to_string(repo().join("systemd/octomild.toml.example")).unwrap();
    let keys = example_keys(&text);
    let mut listed: Vec<&String> = keys.keys().collect();
    listed.sort();
    let mut known = daemon_keys();
    known.sort();
    assert!(known.len() >= 16, "read the KEYS table: {known:?}");
    assert_eq!(
        listed,
        known.iter().collect::<Vec<_>>(),
        "the example lists exactly the keys config.rs reads"
    );

    // The group may not exist where the test runs; parse() resolves names through NSS.
    let portable = |line: &str| line.replace("\"octomil-clients\"", "\"root\"");
    let env = Env {
        machine_id: Some("0123456789abcdef0123456789abcdef\n".into()),
    };
    let path = Path::new("/etc/octomil/octomild.toml");
    let as_shipped: String = keys
        .values()
        .filter(|(_, active)| *active)
        .map(|(l, _)| portable(l) + "\n")
        .collect();
    let everything: String = keys.values().map(|(l, _)| portable(l) + "\n").collect();
    let shipped = parse(path, &as_shipped, &env).unwrap_or_else(|e| panic!("{e}"));
    let all = parse(path, &everything, &env).unwrap_or_else(|e| panic!("{e}"));
    // Commented-out lines show the default, except these four, which show an example of a
    // value that has no literal default (derived id, no file, a host-specific group, no cap).
    let all = octomild::config::Config {
        device_id: shipped.device_id.clone(),
        bootstrap_token_file: shipped.bootstrap_token_file.clone(),
        allowed_gids: shipped.allowed_gids.clone(),
        limit_per_uid_share: shipped.limit_per_uid_share,
        ..all
    };
    assert_eq!(
        all, shipped,
        "a commented-out value differs from the default"
    );
}

#[test]
fn debian_package_ships_what_make_install_does() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("daemon/Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let deb = manifest["package"]["metadata"]["deb"].as_table().unwrap();
    let mut shipped = BTreeMap::new();
    for asset in deb["assets"].as_array().unwrap() {
        let a = asset.as_array().unwrap();
        let (src, dest, mode) = (
            a[0].as_str().unwrap(),
            a[1].as_str().unwrap(),
            a[2].as_str().unwrap(),
        );
        let dest = if dest.ends_with('/') {
            format!(
                "{dest}{}",
                Path::new(src).file_name().unwrap().to_str().unwrap()
            )
        } else {
            dest.to_owned()
        };
        if !src.starts_with("target/") {
            assert!(
                repo().join("daemon").join(src).is_file(),
                "asset {src} exists"
            );
        }
        shipped.insert(dest, u32::from_str_radix(mode, 8).unwrap());
    }
    // systemd-sysusers/-tmpfiles in postinst, /bin/kill in ExecReload=.
    let depends = deb["depends"].as_str().unwrap();
    assert!(
        depends.contains("systemd") && depends.contains("procps"),
        "{depends}"
    );
    // The unit comes in through systemd-units (cargo-deb adds it and the enable/start logic).
    let units = deb["systemd-units"].as_table().unwrap();
    assert_eq!(units["unit-name"].as_str(), Some("octomild"));
    let unit_dir = repo()
        .join("daemon")
        .join(units["unit-scripts"].as_str().unwrap());
    assert!(unit_dir.join("octomild.service").is_file());

    // Everything `make install` lays out but the cloud's binaries (not for devices) and the
    // unit (above).
    let want: BTreeMap<String, u32> = FILES
        .iter()
        .filter(|(p, _, _)| {
            !matches!(*p, "usr/bin/octomil" | "usr/bin/octomil-cloud") && !p.ends_with(".service")
        })
        .map(|(p, _, m)| ((*p).to_owned(), *m))
        .collect();
    assert_eq!(shipped, want, "deb assets vs make install");

    // Maintainer scripts: executable, and leave room for cargo-deb's systemd fragment.
    let scripts = repo()
        .join("daemon")
        .join(deb["maintainer-scripts"].as_str().unwrap());
    for name in ["postinst", "postrm"] {
        let p = scripts.join(name);
        assert!(mode(&p) & 0o111 != 0, "{name} is executable");
        let text = std::fs::read_to_string(&p).unwrap();
        // cargo-deb replaces every copy of the token, so one in a comment would splice the
        // fragment into the comment.
        assert_eq!(
            text.matches("#DEBHELPER#").count(),
            1,
            "{name} has #DEBHELPER# once"
        );
        assert!(text.contains("set -e"), "{name} stops on errors");
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("systemd-tmpfiles"));
}

#[test]
fn installed_snippets_and_unit_pass_systemds_own_tools() {
    const TEST: &str = "installed_snippets_and_unit_pass_systemds_own_tools";
    let Some(dest) = make_install(TEST) else {
        return;
    };
    let root = dest.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();

    // sysusers and tmpfiles create root-owned files: as another user they fail on chown.
    if !is_root() {
        skip::missing_dependency(
            TEST,
            "systemd-sysusers/systemd-tmpfiles --root need root (they chown)",
        );
    } else if !on_path("systemd-sysusers") || !on_path("systemd-tmpfiles") {
        skip::missing_dependency(TEST, "systemd-sysusers/systemd-tmpfiles are not installed");
    } else {
        let (out, _, stderr) = run(Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.display()))
            .arg("octomil.conf"));
        assert!(out.status.success(), "systemd-sysusers: {stderr}");
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(
            passwd.lines().any(|l| l.starts_with("octomil:")),
            "{passwd}"
        );
        assert!(
            passwd.contains(":/usr/sbin/nologin") || passwd.contains(":/sbin/nologin"),
            "no login shell: {passwd}"
        );
        assert!(
            group.lines().any(|l| l.starts_with("octomil-clients:")),
            "{group}"
        );

        let (out, _, stderr) = run(Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.display()))
            .args(["--create", "octomil.conf"]));
        assert!(out.status.success(), "systemd-tmpfiles: {stderr}");
        for dir in ["etc/credstore", "etc/credstore.encrypted"] {
            assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
        }
    }

    if !on_path("systemd-analyze") {
        skip::missing_dependency(TEST, "systemd-analyze is not installed");
        return;
    }
    // The same gate CI runs on the cross-built binary (systemd/check.sh), here on this build.
    let build_dir = bin("octomild").parent().unwrap().to_owned();
    let (out, stdout, stderr) = run(Command::new(repo().join("systemd/check.sh"))
        .arg(&build_dir)
        .env_remove("MAKEFLAGS"));
    assert!(
        out.status.success(),
        "systemd/check.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("verify ok (octomild.service)"), "{stdout}");
    assert!(stdout.contains("Overall exposure level"), "{stdout}");
    println!("{stdout}");
}
