//! Cache tests: a counting fake for the store's cache logic, and the real kernel keyring.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::tests::sample;
use super::*;

fn key(b: u8) -> SealKey {
    SealKey::from_bytes([b; 32])
}

/// A cache in memory that counts what the store asks of it.
#[derive(Default)]
pub(super) struct FakeCache {
    pub bytes: Mutex<Option<Vec<u8>>>,
    pub puts: Mutex<u32>,
    pub clears: Mutex<u32>,
}

impl SecretCache for Arc<FakeCache> {
    fn get(&self) -> Option<Vec<u8>> {
        self.bytes.lock().unwrap().clone()
    }
    fn put(&self, bytes: &[u8]) {
        *self.bytes.lock().unwrap() = Some(bytes.to_vec());
        *self.puts.lock().unwrap() += 1;
    }
    fn clear(&self) {
        *self.bytes.lock().unwrap() = None;
        *self.clears.lock().unwrap() += 1;
    }
}

impl FakeCache {
    fn set(&self, bytes: Option<Vec<u8>>) {
        *self.bytes.lock().unwrap() = bytes;
    }
    fn puts(&self) -> u32 {
        *self.puts.lock().unwrap()
    }
}

fn cached_store(dir: &Path) -> (Store, Arc<FakeCache>) {
    let cache = Arc::new(FakeCache::default());
    let store = Store::open(dir, key(1), Box::new(cache.clone())).unwrap();
    (store, cache)
}

#[test]
fn cache_holds_the_disk_record_and_serves_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = cached_store(tmp.path());
    store.save(&sample(1)).unwrap();
    assert_eq!(
        cache.get(),
        store.read_record().unwrap(),
        "sealed record cached"
    );
    let puts = cache.puts();
    assert_eq!(store.load().unwrap(), sample(1));
    assert_eq!(cache.puts(), puts, "a hit does not refill");
    cache.set(None);
    assert_eq!(store.load().unwrap(), sample(1));
    assert_eq!(cache.puts(), puts + 1, "a miss refills");
    assert_eq!(cache.get(), store.read_record().unwrap());
}

#[test]
fn stale_cache_generation_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = cached_store(tmp.path());
    store.save(&sample(1)).unwrap();
    let old = cache.get();
    store.save(&sample(2)).unwrap();
    cache.set(old);
    assert_eq!(store.load().unwrap(), sample(2));
    assert_eq!(cache.get(), store.read_record().unwrap(), "refilled");
}

#[test]
fn garbage_cache_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = cached_store(tmp.path());
    store.save(&sample(1)).unwrap();
    let good = store.read_record().unwrap().unwrap();
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xff; // same header as the disk, ciphertext not authentic
    let mut resealed = seal::seal(&key(1), 1, &sample(9)).unwrap();
    resealed[..seal::HEADER_LEN].copy_from_slice(&good[..seal::HEADER_LEN]); // header swap
    for junk in [
        vec![],
        vec![1, 2, 3],
        vec![0xAA; 4096],
        good[..40].to_vec(),
        forged,
        resealed,
    ] {
        cache.set(Some(junk));
        assert_eq!(store.load().unwrap(), sample(1));
    }
}

#[test]
fn cache_from_a_deleted_store_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = cached_store(tmp.path());
    store.save(&sample(1)).unwrap();
    let left_over = cache.get();
    drop(store);
    fs::remove_file(tmp.path().join(DB_FILE)).unwrap();
    let cache2 = Arc::new(FakeCache::default());
    cache2.set(left_over);
    let store = Store::open(tmp.path(), key(1), Box::new(cache2.clone())).unwrap();
    assert_eq!(store.load().unwrap(), Persisted::default());
    assert_eq!(cache2.get(), None);
    // A new first save (generation 1 again) is not confused with the old generation 1.
    store.save(&sample(5)).unwrap();
    assert_eq!(store.load().unwrap(), sample(5));
}

#[test]
fn wipe_removes_secrets_from_disk_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, cache) = cached_store(tmp.path());
    store.save(&sample(1)).unwrap();
    let revoked = Revoked {
        device_id: "dev-01.test".into(),
        reason: "stolen".into(),
        at: 1_900_000_100,
        seq: Some(7),
    };
    store.wipe_secrets(revoked.clone()).unwrap();
    let want = Persisted {
        identity: None,
        credentials: None,
        revoked: Some(revoked),
        last_revocation_seq: Some(7),
    };
    assert_eq!(store.load().unwrap(), want);
    assert_eq!(*cache.clears.lock().unwrap(), 1);
    let cached = cache.get().unwrap();
    assert_eq!(
        seal::open(&key(1), &cached).unwrap(),
        want,
        "cache holds the wiped state"
    );
    drop(store);
    let store = Store::open(tmp.path(), key(1), Box::new(NoCache)).unwrap();
    assert_eq!(store.load().unwrap(), want, "revocation survives a restart");
}

#[test]
fn concurrent_saves_keep_the_cache_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _cache) = cached_store(tmp.path());
    let store = Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..10 {
                    store.save(&sample(t * 100 + n)).unwrap();
                    store.load().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let record = store.read_record().unwrap().unwrap();
    assert_eq!(Header::parse(&record).unwrap().generation, 40);
    let on_disk = seal::open(&key(1), &record).unwrap();
    assert_eq!(store.load().unwrap(), on_disk);
}

/// Set in the copy of this test binary that runs inside `keyctl session -`.
const IN_SESSION_ENV: &str = "OCTOMILD_TEST_IN_KEYCTL_SESSION";

/// keyutils needs a session keyring. When `keyctl` (Debian `keyutils`) is on PATH the
/// test re-runs itself under `keyctl session -`, in a fresh anonymous session keyring that
/// vanishes with it; otherwise it runs here if the keyring works, and reports a skip if not.
#[test]
fn keyring_cache_round_trip() {
    let name = "keyring_cache_round_trip";
    if std::env::var_os(IN_SESSION_ENV).is_none() && on_path("keyctl") {
        let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
        let out = Command::new("keyctl")
            .args(["session", "-"])
            .arg(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(IN_SESSION_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if !stdout.contains("running 1 test") {
            // keyctl itself failed (say, keyctl(2) blocked by a container's seccomp filter), or
            // could not exec this binary (a foreign-architecture test binary under qemu-user).
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            eprintln!(
                "SKIPPED {name}: `keyctl session -` did not start the test ({why}); under \
                 qemu-user without binfmt_misc the host cannot exec this {} binary",
                std::env::consts::ARCH
            );
            return;
        }
        assert!(out.status.success(), "the keyring test failed under keyctl");
        assert!(stdout.contains("1 passed"), "the test ran under keyctl");
        return;
    }
    run_keyring_round_trip();
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn run_keyring_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = KeyringCache::new(tmp.path());
    if !probe.available() {
        eprintln!("SKIPPED keyring_cache_round_trip: no usable session keyring");
        return;
    }
    assert_eq!(
        probe.get(),
        None,
        "the usability probe leaves nothing behind"
    );
    probe.put(b"probe");
    assert_eq!(probe.get().as_deref(), Some(b"probe".as_slice()));
    probe.clear();
    assert_eq!(probe.get(), None, "clear removes the entry");

    let key = || SealKey::from_bytes([4; 32]);
    let store = Store::open(tmp.path(), key(), Box::new(KeyringCache::new(tmp.path()))).unwrap();
    let state = sample(1);
    store.save(&state).unwrap();
    // Another handle on the same entry (a restarted daemon) sees the sealed record.
    let other = KeyringCache::new(tmp.path());
    let cached = other.get().expect("the save filled the keyring");
    assert_eq!(Some(cached.clone()), store.read_record().unwrap());
    assert!(
        !cached.windows(9).any(|w| w == b"edg_live_"),
        "the keyring holds the sealed record, not plaintext"
    );
    assert_eq!(store.load().unwrap(), state);

    // Stale entry: an older generation in the keyring is ignored and replaced.
    store.save(&sample(2)).unwrap();
    other.put(&cached);
    assert_eq!(store.load().unwrap(), sample(2));
    assert_eq!(other.get(), store.read_record().unwrap(), "refilled");

    // A different state dir is a different entry.
    let tmp2 = tempfile::tempdir().unwrap();
    assert_eq!(KeyringCache::new(tmp2.path()).get(), None);

    // A missing entry is a miss, not a loss.
    other.clear();
    drop(store);
    let store = Store::open(tmp.path(), key(), Box::new(KeyringCache::new(tmp.path()))).unwrap();
    assert_eq!(store.load().unwrap(), sample(2));
    store
        .wipe_secrets(Revoked {
            device_id: "dev-01.test".into(),
            reason: "test".into(),
            at: 1,
            seq: None,
        })
        .unwrap();
    let after: Persisted = store.load().unwrap();
    assert!(after.credentials.is_none() && after.identity.is_none());
    assert_eq!(other.get(), store.read_record().unwrap());
    other.clear();
    eprintln!("keyring_cache_round_trip ran against the kernel keyring");
}
