//! Unit tests of the store: round trips, modes, redaction, keys and corruption.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

const API_KEY: &str = "edg_live_Zq8XkP3vN7mR2tY6wB4cJ9hL1sD5fG0a";
const REFRESH: &str = "edg_refresh_Mn4Bv8Cx2Zl6Kj0Hg3Fd7Sa1Qw5Er9Ty2Ui6Op4As8Df0Gh";
const SEED: [u8; 32] = *b"seed-bytes-that-must-stay-secret";
/// Not a real certificate: the store keeps the text as it is (the answer checks parse it).
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nTUlJQg==\n-----END CERTIFICATE-----\n";

pub(super) fn sample(n: u64) -> Persisted {
    Persisted {
        identity: Some(Identity {
            device_id: "dev-01.test".into(),
            signing_key_seed: Secret::new(SEED),
        }),
        credentials: Some(Credentials {
            api_key: Secret::new(format!("{API_KEY}{n}")),
            refresh_token: Secret::new(format!("{REFRESH}{n}")),
            expires_at: 1_900_000_000 + n,
            issued_at: 1_899_913_600 + n,
            registered_at_ms: 1_899_913_600_000,
            last_refresh: Some(n),
            revocation_public_key: [7; 32],
            mqtt: Some(MqttRecord {
                url: "mqtts://broker.test:8883".into(),
                topic: "octomil/v1/devices/dev-01.test/revocation".into(),
                username: "dev-01.test".into(),
                client_cert: Some(ClientCert {
                    chain_pem: CERT_PEM.into(),
                    issued_at: 1_899_913_600 + n,
                    expires_at: 1_900_000_000 + n,
                }),
            }),
            rate_limits: RateLimits::default(),
            registration_epoch: 9,
        }),
        revoked: None,
        last_revocation_seq: Some(3),
    }
}

/// `sample(n)` as a store of formats 1 to 3 holds it: no client certificate.
fn sample_v3(n: u64) -> Persisted {
    let mut p = sample(n);
    if let Some(m) = p.credentials.as_mut().and_then(|c| c.mqtt.as_mut()) {
        m.client_cert = None;
    }
    p
}

fn key(b: u8) -> SealKey {
    SealKey::from_bytes([b; 32])
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn store_is_shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
}

#[test]
fn round_trip_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(store.load().unwrap(), Persisted::default(), "empty store");
    store.save(&sample(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample(1));
    store.save(&sample(2)).unwrap();
    drop(store);
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample(2));
}

#[test]
fn second_open_of_the_same_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Store::open(tmp.path(), key(1)).unwrap();
    let err = Store::open(tmp.path(), key(1)).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn dir_and_file_modes_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/state");
    let store = Store::open(&dir, key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    assert_eq!(mode(&dir.join(KEYS_FILE)), 0o600);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [KEYS_FILE, DB_FILE]);
}

#[test]
fn loose_existing_modes_are_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    drop(Store::open(&dir, key(1)).unwrap());
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join(DB_FILE), fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(&dir, key(1)).unwrap());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
}

#[test]
fn debug_prints_no_secret() {
    let p = sample(1);
    let shown = format!("{p:?} {p:#?}");
    assert!(!shown.contains("edg_live_"), "{shown}");
    assert!(!shown.contains("edg_refresh_"), "{shown}");
    assert!(!shown.contains("seed-bytes"), "{shown}");
    // Byte arrays print as numbers: look for the seed's first bytes in that form too.
    assert!(!shown.contains("115, 101, 101, 100"), "{shown}");
    assert!(shown.contains("dev-01.test"), "non-secrets still print");
    assert_eq!(format!("{:?}", key(9)), "SealKey(***)");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(9)).unwrap();
    assert!(!format!("{store:?}").contains("9, 9"), "{store:?}");
}

#[test]
fn no_secret_bytes_in_the_database_file() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    for n in 0..5 {
        store.save(&sample(n)).unwrap();
    }
    let bytes = fs::read(store.path()).unwrap();
    assert!(bytes.len() > 1000, "the file was read");
    for needle in [
        API_KEY.as_bytes(),
        REFRESH.as_bytes(),
        &SEED[..],
        b"edg_live_",
        b"edg_refresh_",
    ] {
        assert!(
            !contains(&bytes, needle),
            "{:?} found in {DB_FILE}",
            String::from_utf8_lossy(needle)
        );
    }
    // Sanity: the search does find what really is in the file.
    assert!(contains(&bytes, b"sealed_state"));
}

#[test]
fn wrong_key_is_a_clear_error_and_leaves_the_file_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    let path = store.path().to_path_buf();
    drop(store);
    let before = fs::read(&path).unwrap();
    let err = Store::open(tmp.path(), key(2)).unwrap_err();
    assert!(matches!(err, StoreError::SealKeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot be opened with this seal key (key changed or file corrupt)"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    let after = fs::read(&path).unwrap();
    let diff: Vec<usize> = (0..before.len().max(after.len()))
        .filter(|&i| before.get(i) != after.get(i))
        .collect();
    assert!(
        diff.is_empty(),
        "the file changed at {} offsets, first {:?}",
        diff.len(),
        &diff[..diff.len().min(20)]
    );
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(
        store.load().unwrap(),
        sample(1),
        "the right key still opens it"
    );
}

#[test]
fn garbage_file_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DB_FILE);
    let mut garbage = vec![0u8; 64 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut garbage {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&path, &garbage).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Store::open(tmp.path(), key(1)).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains(DB_FILE), "{err}");
}

#[test]
fn truncated_file_is_an_error_or_the_saved_state_never_silently_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let store = Store::open(&dir, key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    let path = store.path().to_path_buf();
    drop(store);
    let full = fs::read(&path).unwrap();
    for len in [1, 100, 512, 4096, full.len() / 2, full.len() - 1] {
        fs::write(&path, &full[..len]).unwrap();
        match Store::open(&dir, key(1)) {
            Err(e) => eprintln!("truncated to {len}: {e}"),
            Ok(store) => assert_eq!(store.load().unwrap(), sample(1), "truncated to {len}"),
        }
    }
}

#[test]
fn flipped_record_byte_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    let record = store.read_record().unwrap().unwrap();
    let path = store.path().to_path_buf();
    drop(store);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(record.len())
        .position(|w| w == record.as_slice())
        .expect("the record is stored contiguously");
    bytes[at + seal::HEADER_LEN + 3] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = Store::open(tmp.path(), key(1)).unwrap_err();
    eprintln!("flipped ciphertext byte: {err}");
}

#[test]
fn records_bind_generation_and_version() {
    let k = key(1);
    let record = seal::seal(&k, 5, &sample(1)).unwrap();
    assert_eq!(seal::open(&k, &record).unwrap(), sample(1));
    let mut other_gen = record.clone();
    other_gen[1] ^= 1;
    assert_eq!(seal::open(&k, &other_gen), Err(seal::OpenError::Auth));
    let mut other_version = record.clone();
    other_version[0] = 5;
    assert_eq!(
        seal::open(&k, &other_version),
        Err(seal::OpenError::UnknownVersion(5))
    );
    // The version is authenticated: a format-4 record relabelled as format 3 does not open.
    other_version[0] = 3;
    assert_eq!(seal::open(&k, &other_version), Err(seal::OpenError::Auth));
    assert_eq!(
        seal::open(&k, &record[..seal::HEADER_LEN + 3]),
        Err(seal::OpenError::Truncated)
    );
    assert_eq!(seal::open(&key(2), &record), Err(seal::OpenError::Auth));
    let again = seal::seal(&k, 5, &sample(1)).unwrap();
    assert_ne!(record[9..33], again[9..33], "a fresh nonce per seal");
}

#[test]
fn newer_format_on_disk_is_refused_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    let mut record = seal::seal(&key(1), 1, &sample(1)).unwrap();
    record[0] = 9;
    store.put_raw_record(&record);
    let err = store.load().unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found: 9, .. }),
        "{err}"
    );
    assert!(store.save(&sample(2)).is_err());
    assert_eq!(store.read_record().unwrap().unwrap(), record);
}

// ---- seal key ----

#[test]
fn key_file_is_created_0600_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("new/dir/seal.key");
    let (k1, src) = SealKey::load_or_create(None, &key_file).unwrap();
    assert_eq!(src, KeySource::KeyFile(key_file.clone()));
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(key_file.parent().unwrap()), 0o700);
    assert_eq!(fs::read(&key_file).unwrap(), k1.expose());
    let (k2, _) = SealKey::load_or_create(None, &key_file).unwrap();
    assert_eq!(k1.expose(), k2.expose());
    let (k3, _) = SealKey::load_or_create(None, &tmp.path().join("other.key")).unwrap();
    assert_ne!(k1.expose(), k3.expose(), "keys are random");
}

#[test]
fn key_file_in_base64_and_loose_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("seal.key");
    fs::write(&key_file, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
    let (k, _) = SealKey::load_or_create(None, &key_file).unwrap();
    assert_eq!(k.expose(), &[1u8; 32]);
    assert_eq!(mode(&key_file), 0o600, "tightened");
}

#[test]
fn systemd_credential_is_preferred_raw_and_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    fs::create_dir(&creds).unwrap();
    let key_file = tmp.path().join("seal.key");

    fs::write(creds.join(seal::CREDENTIAL_NAME), [3u8; 32]).unwrap();
    let (k, src) = SealKey::load_or_create(Some(&creds), &key_file).unwrap();
    assert_eq!(src, KeySource::SystemdCredential);
    assert_eq!(k.expose(), &[3u8; 32]);
    assert!(
        !key_file.exists(),
        "no key file made when the credential exists"
    );

    // `base64 <<< ...` style: 44 characters and a newline.
    fs::write(
        creds.join(seal::CREDENTIAL_NAME),
        "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\n",
    )
    .unwrap();
    let (k, src) = SealKey::load_or_create(Some(&creds), &key_file).unwrap();
    assert_eq!(src, KeySource::SystemdCredential);
    assert_eq!(k.expose(), &[3u8; 32]);

    // A credentials directory without our credential: the key file it is.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let (_, src) = SealKey::load_or_create(Some(&empty), &key_file).unwrap();
    assert_eq!(src, KeySource::KeyFile(key_file.clone()));
}

#[test]
fn a_symlinked_seal_key_credential_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("creds");
    fs::create_dir(&creds).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::write(&elsewhere, [3u8; 32]).unwrap();
    std::os::unix::fs::symlink(&elsewhere, creds.join(seal::CREDENTIAL_NAME)).unwrap();
    let err = SealKey::load_or_create(Some(&creds), &tmp.path().join("k")).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
}

/// The bootstrap token file is read through the checked descriptor: a group- or
/// other-accessible file, or a symlink, is refused with an error naming it.
#[test]
fn bootstrap_token_file_must_be_private() {
    use crate::agent::BootstrapSource;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bootstrap-token");
    let token = "edg_bootstrap_AAAAbbbbCCCCddddEEEEffffGGGGhhhh";
    fs::write(&file, format!("{token}\n")).unwrap();
    let source = BootstrapSource {
        credentials_dir: None,
        file: Some(file.clone()),
        env: None,
    };
    for loose in [0o644, 0o640, 0o620, 0o602] {
        fs::set_permissions(&file, fs::Permissions::from_mode(loose)).unwrap();
        let err = source.read().unwrap_err();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("group or others"), "{err}");
        assert!(!err.contains(token), "{err}");
    }
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(source.read().unwrap().expose(), token);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(source.read().unwrap().expose(), token);

    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let err = BootstrapSource {
        credentials_dir: None,
        file: Some(link.clone()),
        env: None,
    }
    .read()
    .unwrap_err();
    assert!(err.contains(&link.display().to_string()), "{err}");

    let missing = BootstrapSource {
        credentials_dir: None,
        file: Some(tmp.path().join("gone")),
        env: None,
    };
    assert!(missing.read().unwrap_err().contains("no bootstrap token"));
}

#[test]
fn bad_key_length_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cred = tmp.path().join(seal::CREDENTIAL_NAME);
    for bad in [
        &[1u8; 31][..],
        &[1u8; 33][..],
        b"not base64 at all but 44 characters long!!!",
        b"",
    ] {
        fs::write(&cred, bad).unwrap();
        let err = SealKey::load_or_create(Some(tmp.path()), &tmp.path().join("k")).unwrap_err();
        assert!(matches!(err, StoreError::BadSealKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&cred.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("found {} bytes", bad.len())), "{msg}");
    }
}

/// The postcard plaintext of `sample(1)` as format 1 (today's main before the registration
/// epoch) wrote it.
const V1_HEX: &str = concat!(
    "010b6465762d30312e74657374736565642d62797465732d746861742d6d7573742d737461792d73",
    "6563726574012a6564675f6c6976655f5a7138586b5033764e376d5232745936774234634a39684c",
    "3173443566473061313c6564675f726566726573685f4d6e344276384378325a6c364b6a30486733",
    "4664375361315177354572395479325569364f703441733844663047683181e6fe890781c3f98907",
    "80b8b3dda53701010707070707070707070707070707070707070707070707070707070707070707",
    "01186d717474733a2f2f62726f6b65722e746573743a38383833296f63746f6d696c2f76312f6465",
    "76696365732f6465762d30312e746573742f7265766f636174696f6e0b6465762d30312e74657374",
    "643ce8073c000103",
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `sample(1)` as a format-1 store holds it after migration: no epoch known (0), no
/// certificate.
fn sample_from_v1() -> Persisted {
    let mut p = sample_v3(1);
    if let Some(c) = p.credentials.as_mut() {
        c.registration_epoch = 0;
    }
    p
}

/// Format 1 plus the registration epoch (9) after the rate limits: the plaintext of formats 2
/// and 3 (format 3 changed only the key a record is sealed under).
fn v2_plain() -> Vec<u8> {
    unhex(&V1_HEX.replace("643ce8073c000103", "643ce8073c09000103"))
}

/// The postcard plaintext of `sample(1)` in format 4: format 3's with the client
/// certificate after the MQTT username.
const V4_HEX: &str = concat!(
    "010b6465762d30312e74657374736565642d62797465732d746861742d6d7573742d737461792d73",
    "6563726574012a6564675f6c6976655f5a7138586b5033764e376d5232745936774234634a39684c",
    "3173443566473061313c6564675f726566726573685f4d6e344276384378325a6c364b6a30486733",
    "4664375361315177354572395479325569364f703441733844663047683181e6fe890781c3f98907",
    "80b8b3dda53701010707070707070707070707070707070707070707070707070707070707070707",
    "01186d717474733a2f2f62726f6b65722e746573743a38383833296f63746f6d696c2f76312f6465",
    "76696365732f6465762d30312e746573742f7265766f636174696f6e0b6465762d30312e74657374",
    "013f2d2d2d2d2d424547494e2043455254494649434154452d2d2d2d2d0a54556c4a51673d3d0a2d",
    "2d2d2d2d454e442043455254494649434154452d2d2d2d2d0a81c3f9890781e6fe8907643ce8073c",
    "09000103",
);

/// The postcard layout of format 4, byte for byte. If this fails, a type inside `Persisted`
/// changed: existing stores would no longer decode. Bump `seal::FORMAT_VERSION`, decode the old
/// layout on load (as `v1.rs` and `v3.rs` do), then update this constant.
#[test]
fn format_v4_layout_is_pinned() {
    assert_eq!(seal::FORMAT_VERSION, 4);
    let hex: String = postcard::to_allocvec(&sample(1))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, V4_HEX, "the on-disk format of Persisted changed");
}

/// Formats 2 and 3 decode to today's state without a certificate.
#[test]
fn format_2_and_3_records_open_without_a_certificate() {
    let k = key(1);
    for version in [2, 3] {
        let record = seal::seal_raw_for_tests(&k, version, 4, &v2_plain());
        assert_eq!(seal::open(&k, &record).unwrap(), sample_v3(1), "{version}");
    }
}

#[test]
fn a_format_1_record_opens_as_format_2_with_epoch_zero() {
    let k = key(1);
    let record = seal::seal_raw_for_tests(&k, 1, 4, &unhex(V1_HEX));
    assert_eq!(seal::open(&k, &record).unwrap(), sample_from_v1());
}

/// A `state.redb` exactly as an earlier release leaves it: same table, row, header,
/// associated data and plaintext layout (pinned above), sealed under the seal key alone.
fn previous_release_store(dir: &Path, version: u8, generation: u64, plain: &[u8]) -> Vec<u8> {
    let path = dir.join(DB_FILE);
    let record = seal::seal_raw_for_tests(&key(1), version, generation, plain);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            t.insert(ROW, record.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    record
}

/// Opening a store of an older format keeps every credential, rewrites it in format 3 at the
/// next generation, and leaves no record sealed under the seal key alone in the directory.
fn migrates(version: u8, plain: &[u8], expected: &Persisted) {
    let tmp = tempfile::tempdir().unwrap();
    let old = previous_release_store(tmp.path(), version, 7, plain);
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(&store.load().unwrap(), expected, "format {version}");
    let record = store.read_record().unwrap().unwrap();
    assert_eq!(
        record[0],
        seal::FORMAT_VERSION,
        "format {version} is migrated to the current one on open"
    );
    assert_eq!(
        u64::from_le_bytes(record[1..9].try_into().unwrap()),
        8,
        "the generation continues"
    );
    assert!(
        seal::open(&key(1), &record).is_err(),
        "the current format is not sealed under the seal key"
    );
    for (path, bytes) in raw_files(tmp.path()) {
        assert!(
            !contains(&bytes, &old),
            "the format-{version} record is still in {}",
            path.display()
        );
    }
    store.save(expected).unwrap();
    drop(store);
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(&store.load().unwrap(), expected);
    drop(store);
    // The wrong key is still refused, and leaves the migrated store alone.
    let err = Store::open(tmp.path(), key(2)).unwrap_err();
    assert!(matches!(err, StoreError::SealKeyMismatch { .. }), "{err:?}");
}

#[test]
fn a_format_1_store_opens_and_migrates() {
    migrates(1, &unhex(V1_HEX), &sample_from_v1());
}

#[test]
fn a_format_2_store_opens_and_migrates() {
    migrates(2, &v2_plain(), &sample_v3(1));
}

/// A `state.redb` and `state.keys` exactly as the previous release (format 3) leaves them:
/// the record sealed under a data key of its own, held in its slot wrapped by the seal key.
fn format_3_store(dir: &Path, generation: u64, plain: &[u8]) -> Vec<u8> {
    let dk = datakey::DataKey::generate().unwrap();
    datakey::KeyFile::open_or_create(&dir.join(KEYS_FILE))
        .unwrap()
        .write(&key(1), generation, &dk)
        .unwrap();
    let record = seal::seal_raw_for_tests(&dk, 3, generation, plain);
    let path = dir.join(DB_FILE);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE)
            .unwrap()
            .insert(ROW, record.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    record
}

/// The previous release's store opens with every credential, is rewritten in format 4 at the
/// next generation, and its format-3 record no longer opens with anything the state
/// directory holds (its data key is destroyed like any previous record's). The client
/// certificate comes with the next refresh.
#[test]
fn a_format_3_store_opens_and_migrates() {
    let tmp = tempfile::tempdir().unwrap();
    let old = format_3_store(tmp.path(), 7, &v2_plain());
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample_v3(1));
    let record = store.read_record().unwrap().unwrap();
    assert_eq!(record[0], 4, "format 3 is migrated to 4 on open");
    assert_eq!(Header::parse(&record).unwrap().generation, 8);
    drop(store);
    let data_keys = recoverable_data_keys(tmp.path(), &key(1));
    assert_eq!(data_keys.len(), 1, "only the new record's key is left");
    assert!(seal::open(&data_keys[0], &old).is_err());
    assert!(seal::open(&key(1), &old).is_err());
    // It keeps working as a format-4 store: a certificate saved is a certificate loaded.
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(
        store.load().unwrap(),
        sample_v3(1),
        "opened again: no second migration"
    );
    store.save(&sample(2)).unwrap();
    drop(store);
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample(2));
    drop(store);
    let err = Store::open(tmp.path(), key(2)).unwrap_err();
    assert!(matches!(err, StoreError::SealKeyMismatch { .. }), "{err:?}");
}

/// A migration cut short (the half-built file left behind) changes nothing: the old store
/// opens and migrates next time.
#[test]
fn a_half_built_migration_is_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    previous_release_store(tmp.path(), 2, 7, &v2_plain());
    fs::write(tmp.path().join(MIGRATE_FILE), b"half a database").unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    assert_eq!(store.load().unwrap(), sample_v3(1));
    assert!(!tmp.path().join(MIGRATE_FILE).exists());
}

/// Every file in `dir`, raw.
fn raw_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// A wipe forgets: with the seal key at hand, nothing in any file of the state directory
/// opens to the old secrets, although redb keeps old records in its freed pages.
#[test]
fn a_wipe_leaves_nothing_recoverable_even_with_the_seal_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let store = Store::open(&dir, key(1)).unwrap();
    let mut old_records = Vec::new();
    for n in 1..=4 {
        store.save(&sample(n)).unwrap();
        old_records.push(store.read_record().unwrap().unwrap());
    }
    store
        .wipe_secrets(Revoked {
            device_id: "dev-01.test".into(),
            reason: "test".into(),
            at: 1,
            seq: Some(4),
        })
        .unwrap();
    let wiped = store.load().unwrap();
    assert!(wiped.credentials.is_none() && wiped.identity.is_none());
    // Scanned while the store is still open: what `kill -9` or a power cut right after the
    // wipe would leave (a clean close trims redb's free tail), and again after a clean close.
    let open_files = raw_files(&dir);
    let found: Vec<&Vec<u8>> = old_records
        .iter()
        .filter(|r| open_files.iter().any(|(_, bytes)| contains(bytes, r)))
        .collect();
    assert!(
        !found.is_empty(),
        "redb keeps an old record in a freed page (the premise of this test)"
    );
    drop(store);
    let seal = key(1);
    let data_keys = recoverable_data_keys(&dir, &seal);
    for (path, bytes) in open_files.iter().chain(&raw_files(&dir)) {
        for needle in [API_KEY.as_bytes(), REFRESH.as_bytes(), &SEED[..]] {
            assert!(!contains(bytes, needle), "plaintext in {}", path.display());
        }
    }
    // Every key the files yield with the seal key: the seal key itself and every data key
    // it unwraps from the key file.
    for record in &found {
        assert!(
            seal::open(&seal, record).is_err(),
            "an old record opens with the seal key"
        );
        for dk in &data_keys {
            assert!(
                seal::open(dk, record).is_err(),
                "an old record opens with a data key left in the state directory"
            );
        }
    }
    // And the store still opens, revoked.
    let store = Store::open(&dir, key(1)).unwrap();
    assert_eq!(store.load().unwrap(), wiped);
}
fn recoverable_data_keys(dir: &Path, seal: &SealKey) -> Vec<datakey::DataKey> {
    datakey::KeyFile::open_read_only(&dir.join(KEYS_FILE))
        .unwrap()
        .map(|k| k.recoverable(seal))
        .unwrap_or_default()
}

/// The crash windows of a save: a new key written but its record never committed, or a record
/// committed but the previous key not yet destroyed. Either way the store opens with the
/// committed record and the next open destroys the key nothing references.
#[test]
fn an_unreferenced_data_key_is_destroyed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    store.save(&sample(2)).unwrap();
    let generation = Header::parse(&store.read_record().unwrap().unwrap())
        .unwrap()
        .generation;
    drop(store);
    let keys_path = tmp.path().join(KEYS_FILE);
    for stray in [generation + 1, generation - 1] {
        {
            let keys = datakey::KeyFile::open_or_create(&keys_path).unwrap();
            keys.write(&key(1), stray, &datakey::DataKey::generate().unwrap())
                .unwrap();
            assert_eq!(keys.recoverable(&key(1)).len(), 2, "both slots hold a key");
        }
        let store = Store::open(tmp.path(), key(1)).unwrap();
        assert_eq!(store.load().unwrap(), sample(2));
        drop(store);
        let keys = datakey::KeyFile::open_read_only(&keys_path)
            .unwrap()
            .unwrap();
        assert_eq!(
            keys.recoverable(&key(1)).len(),
            1,
            "only the current record's key is left"
        );
    }
    assert_eq!(
        fs::metadata(&keys_path).unwrap().len(),
        8192,
        "the key file is overwritten in place, never regrown"
    );
}

/// Losing `state.keys` loses the record: a clear error, and the store is left as it was.
#[test]
fn a_missing_key_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), key(1)).unwrap();
    store.save(&sample(1)).unwrap();
    let path = store.path().to_path_buf();
    drop(store);
    let before = fs::read(&path).unwrap();
    fs::remove_file(tmp.path().join(KEYS_FILE)).unwrap();
    let err = Store::open(tmp.path(), key(1)).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(KEYS_FILE), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

/// A symlink planted at `state.keys` is never followed.
#[test]
fn a_symlinked_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    let dir = tmp.path().join("state");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join(KEYS_FILE)).unwrap();
    let err = Store::open(&dir, key(1)).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err:?}");
    assert_eq!(fs::read(&elsewhere).unwrap(), b"");
}
