#![allow(clippy::unwrap_used)]
//! Crash safety of the store: a child process saving in a tight loop is `kill -9`ed at random
//! instants; after each kill the store must open and hold the last acknowledged save or the
//! one after it (committed, not yet acknowledged), never anything older, never garbage.

mod emulation;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use octomil_common::Secret;
use octomil_common::wire::RateLimits;
use octomil_testkit::skip;
use octomild::store::{Credentials, DB_FILE, Identity, KEYS_FILE, Persisted, SealKey, Store};

/// Set (to the work directory) in the re-executed copy of this binary that plays the child.
const CHILD_ENV: &str = "OCTOMILD_STORE_CRASH_CHILD";
const ROUNDS_ENV: &str = "OCTOMILD_STORE_CRASH_ROUNDS";
const SEED_ENV: &str = "OCTOMILD_STORE_CRASH_SEED";
const DEFAULT_ROUNDS: u32 = 30;
const DEFAULT_SEED: u64 = 0x0C70_D11D_5EED_0001;
/// How long a child may take to show progress before the test gives up on it.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);

/// The state of save number `n`: the counter lives in the secrets themselves.
fn state(n: u64) -> Persisted {
    Persisted {
        identity: Some(Identity {
            device_id: "crash-dev".into(),
            signing_key_seed: Secret::new([9; 32]),
        }),
        credentials: Some(Credentials {
            api_key: Secret::new(format!("edg_test_{n:032}")),
            refresh_token: Secret::new(format!("edg_refresh_{n:048}")),
            expires_at: 2_000_000_000 + n,
            issued_at: 1_999_913_600 + n,
            registered_at_ms: 1,
            last_refresh: Some(n),
            revocation_public_key: [1; 32],
            mqtt: None,
            rate_limits: RateLimits::default(),
            registration_epoch: 1,
        }),
        revoked: None,
        last_revocation_seq: None,
    }
}

fn counter(p: &Persisted) -> u64 {
    p.credentials.as_ref().map_or(0, |c| {
        c.api_key.expose()["edg_test_".len()..].parse().unwrap()
    })
}

struct Work {
    dir: PathBuf,
}

impl Work {
    fn key(&self) -> SealKey {
        SealKey::load_or_create(None, &self.dir.join("seal.key"))
            .unwrap()
            .0
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn progress(&self) -> PathBuf {
        self.dir.join("progress")
    }
    fn open(&self) -> Store {
        Store::open(&self.state_dir(), self.key()).unwrap()
    }
}

/// The last save the child acknowledged: written with one 8-byte `pwrite` after each
/// `save` returns, so a kill leaves either the old or the new value.
fn read_progress(path: &Path) -> u64 {
    fs::read(path)
        .ok()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes)
}

/// The child role. A no-op test in a normal run; the real work happens in the copy of this
/// binary that `crash_torture` starts with `CHILD_ENV` set, and it ends only by SIGKILL.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let work = Work { dir: dir.into() };
    let store = work.open();
    let mut n = counter(&store.load().unwrap());
    let progress = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(work.progress())
        .unwrap();
    loop {
        n += 1;
        store.save(&state(n)).unwrap();
        progress.write_all_at(&n.to_le_bytes(), 0).unwrap();
    }
}

/// splitmix64: a tiny seeded generator, so a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spawn_child(work: &Work) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &work.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Polls the progress file until it reaches `target`; fails if the child dies or stalls.
fn wait_for_progress(child: &mut Child, progress: &Path, target: u64) {
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    while read_progress(progress) < target {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited on its own ({status}) before save {target}");
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the child did not reach save {target} within {PROGRESS_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn crash_torture() {
    if let Some(why) = emulation::cannot_exec_self() {
        skip::emulation_limit(
            "crash_torture",
            &format!("the crash child is a second copy of this binary; {why}"),
        );
        return;
    }
    let rounds: u32 = std::env::var(ROUNDS_ENV)
        .ok()
        .map_or(DEFAULT_ROUNDS, |v| v.parse().unwrap());
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .map_or(DEFAULT_SEED, |v| v.parse().unwrap());
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let work = Work {
        dir: tmp.path().to_path_buf(),
    };
    let (mut acked_only, mut one_ahead, mut early_kills) = (0u32, 0u32, 0u32);
    let mut last = 0u64;
    let started = Instant::now();

    for round in 0..rounds {
        let mut child = spawn_child(&work);
        // One round in five is killed at a random instant from spawn (during exec, open or
        // the first saves); the rest once the child has made 1-20 more saves, plus 0-3 ms.
        if rng.below(5) == 0 {
            early_kills += 1;
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        } else {
            let target = last + 1 + rng.below(20);
            wait_for_progress(&mut child, &work.progress(), target);
            std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let acked = read_progress(&work.progress());
        // Whatever instant the kill hit (a data-key slot half written, a commit, a destroy),
        // the state directory holds the database and the key file, nothing else.
        assert_state_dir(&work.state_dir(), round);
        let store = work.open();
        let loaded = store.load().unwrap();
        drop(store);
        assert_eq!(
            fs::metadata(work.state_dir().join(KEYS_FILE))
                .unwrap()
                .len(),
            8192,
            "round {round}: the key file keeps its two slots, overwritten in place"
        );
        let n = counter(&loaded);
        assert!(
            n == acked || n == acked + 1,
            "round {round} (seed {seed}): store holds save {n}, last acknowledged {acked}"
        );
        assert!(n >= last, "round {round}: went back from {last} to {n}");
        assert_eq!(
            loaded,
            if n == 0 {
                Persisted::default()
            } else {
                state(n)
            }
        );
        if n == acked {
            acked_only += 1;
        } else {
            one_ahead += 1;
        }
        last = n;
        // What the store holds is what the next round counts as acknowledged.
        fs::write(work.progress(), n.to_le_bytes()).unwrap();
    }
    eprintln!(
        "crash_torture: {rounds} kill -9 rounds (seed {seed}, {early_kills} early), {last} saves \
         in {:.1?}; after the kill the store held the last acknowledged save {acked_only} times, \
         the committed-but-unacknowledged next one {one_ahead} times",
        started.elapsed()
    );
    assert!(last > u64::from(rounds), "the children made progress");
}

/// Only the store's own files, never a stray temp file.
fn assert_state_dir(dir: &Path, round: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return; // killed before the directory was made
    };
    for entry in entries {
        let name = entry.unwrap().file_name();
        assert!(
            name == DB_FILE || name == KEYS_FILE,
            "round {round}: unexpected {name:?} in the state directory"
        );
    }
}

/// Not a pass/fail test: prints what a durable save and a load cost on this machine.
#[test]
fn save_and_load_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let work = Work {
        dir: tmp.path().to_path_buf(),
    };
    let store = work.open();
    let mut saves = Vec::new();
    for n in 1..=100 {
        let t = Instant::now();
        store.save(&state(n)).unwrap();
        saves.push(t.elapsed());
    }
    let mut loads = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        store.load().unwrap();
        loads.push(t.elapsed());
    }
    let summary = |v: &mut Vec<Duration>| {
        v.sort();
        format!("p50 {:?}, p99 {:?}", v[v.len() / 2], v[v.len() * 99 / 100])
    };
    eprintln!(
        "store latency (debug build): save {}; load {}",
        summary(&mut saves),
        summary(&mut loads)
    );
}
