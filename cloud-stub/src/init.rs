//! First start: the organization, its Owner, an Owner API key and a bootstrap token, each
//! secret in its own 0600 file. Files are written before the records that hash them are
//! committed, so a crash in between only means the next start provisions again.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use octomil_common::{Secret, token};

use crate::CloudError;
use crate::api::api_keys::new_api_key;
use crate::api::bootstrap_tokens::new_bootstrap_token;
use crate::api::members::new_member;
use crate::files;
use crate::scope::{Role, ScopeSet};
use crate::session;
use crate::store::{Change, Environment, OrgRecord, Settings, Store};

pub const OWNER_API_KEY_FILE: &str = "owner_api_key";
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap_token";
pub const OWNER_PASSWORD_FILE: &str = "owner_password";
pub const OWNER_TOTP_FILE: &str = "owner_totp_secret";
const SESSION_KEY_FILE: &str = "session.key";
const REVOCATION_KEY_FILE: &str = "revocation.key";
const CHALLENGE_KEY_FILE: &str = "challenge.key";

/// Paths of the first-start secrets.
#[derive(Debug, Clone)]
pub struct SecretFiles {
    pub owner_api_key: PathBuf,
    pub bootstrap_token: PathBuf,
    pub owner_password: PathBuf,
    pub owner_totp_secret: PathBuf,
}

impl SecretFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            owner_api_key: dir.join(OWNER_API_KEY_FILE),
            bootstrap_token: dir.join(BOOTSTRAP_TOKEN_FILE),
            owner_password: dir.join(OWNER_PASSWORD_FILE),
            owner_totp_secret: dir.join(OWNER_TOTP_FILE),
        }
    }
}

/// Creates the organization and its first credentials if the store has none.
pub async fn provision(
    store: &Store,
    dir: &Path,
    owner_email: &str,
    environment: Environment,
    now: u64,
) -> Result<(), CloudError> {
    if store.read(|m| m.org.is_some()) {
        return Ok(());
    }
    let paths = SecretFiles::in_dir(dir);
    let org = OrgRecord {
        id: format!("org_{}", token::random_base62(16).expose()),
        name: "default".into(),
        environment,
        created_at: now,
        deleted: false,
        settings: Settings::default(),
    };
    let (owner, password, totp) = new_member(owner_email.to_owned(), Role::Owner, now)
        .map_err(|e| CloudError::Init(e.to_string()))?;
    let (key, api_key) = new_api_key(
        "owner",
        ScopeSet::all(),
        Role::Owner,
        owner_email,
        environment,
        now,
        crate::store::migrate::PROVISIONING,
    );
    let (mut boot, boot_token) = new_bootstrap_token(now, None, None);
    boot.environment = environment;
    files::write_private(&paths.owner_api_key, api_key.expose().as_bytes())?;
    files::write_private(&paths.bootstrap_token, boot_token.expose().as_bytes())?;
    files::write_private(&paths.owner_password, password.expose().as_bytes())?;
    files::write_private(
        &paths.owner_totp_secret,
        session::totp_base32(&totp).as_bytes(),
    )?;
    let pending = store.write(move |_| {
        Ok::<_, CloudError>((
            (),
            vec![
                Change::Member(owner),
                Change::ApiKey(key),
                Change::Bootstrap(boot),
                Change::Org(org),
            ],
        ))
    });
    pending.await?;
    tracing::info!(dir = %dir.display(), "provisioned a new organization; owner credentials are in 0600 files in the state dir");
    Ok(())
}

/// Loads a 32-byte key from `name` in `dir`, creating it on first start.
fn load_or_create_key(dir: &Path, name: &str) -> Result<Secret<Vec<u8>>, CloudError> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let path = dir.join(name);
    if path.exists() {
        let text = files::read_secret_string(&path)?;
        let raw = STANDARD
            .decode(text.expose())
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| {
                CloudError::Init(format!("{} is not a base64 32-byte key", path.display()))
            })?;
        return Ok(Secret::new(raw));
    }
    let mut raw = vec![0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| CloudError::Init(e.to_string()))?;
    files::write_private(&path, STANDARD.encode(&raw).as_bytes())?;
    Ok(Secret::new(raw))
}

pub fn session_key(dir: &Path) -> Result<Secret<Vec<u8>>, CloudError> {
    load_or_create_key(dir, SESSION_KEY_FILE)
}

/// The HMAC key of registration challenges (0600, made on first start).
pub fn challenge_key(dir: &Path) -> Result<Secret<Vec<u8>>, CloudError> {
    load_or_create_key(dir, CHALLENGE_KEY_FILE)
}

pub fn revocation_key(dir: &Path) -> Result<SigningKey, CloudError> {
    let raw = load_or_create_key(dir, REVOCATION_KEY_FILE)?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(raw.expose());
    let key = SigningKey::from_bytes(&seed);
    zeroize::Zeroize::zeroize(&mut seed);
    Ok(key)
}
