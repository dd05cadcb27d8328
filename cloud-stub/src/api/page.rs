//! Paging for every list of the control plane: a `limit` (each list states its default and
//! maximum) and an opaque `cursor`, the previous page's `next_cursor`. Lists are ordered by
//! their key (device id, token id, key id, email, resource key, audit sequence), and a page
//! starts after the key the cursor names, so pages stay consistent while records come and go.
//!
//! A cursor is `base64url(version || position || mac)` with `mac = HMAC-SHA256(k, DOMAIN ||
//! list || 0 || filter || 0 || position)`: it is bound to the list and to the filters (and the
//! environments the caller sees) it was made for. A cursor from another list or other
//! filters, or one not made by this cloud, is 400 `invalid_cursor`. `k` is derived from the
//! cloud's revocation key with its own domain string, so cursors survive a restart and no
//! new secret file is needed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use octomil_common::wire::codes;
use sha2::{Digest, Sha256};

use crate::app::Cloud;
use crate::error::{ApiError, ApiResult};

/// 400 for a cursor that is malformed, forged, or made for another list or other filters.
pub const INVALID_CURSOR: &str = "invalid_cursor";

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"octomil-cursor-v1\0";
const MAC_LEN: usize = 32;
/// Longest position a cursor carries (device ids are at most 128 bytes, resource keys a few
/// hundred): anything longer is not one of ours.
const MAX_POSITION: usize = 1024;

/// Seals and opens cursors with the cloud's cursor key.
pub struct Cursors {
    key: [u8; 32],
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cursors(***)")
    }
}

impl Drop for Cursors {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl Cursors {
    /// Cursors keyed by `secret` (hashed with the cursor domain first).
    pub fn new(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"octomil-cursor-key-v1\0");
        h.update(secret);
        Self {
            key: h.finalize().into(),
        }
    }

    /// The cloud's cursors: the key derives from its revocation signing key.
    pub fn of(cloud: &Cloud) -> Self {
        let mut seed = cloud.revocation_key.to_bytes();
        let c = Self::new(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        c
    }

    fn mac(&self, list: &str, filter: &str, position: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(DOMAIN);
        mac.update(list.as_bytes());
        mac.update(&[0]);
        mac.update(filter.as_bytes());
        mac.update(&[0]);
        mac.update(position);
        mac
    }

    /// A cursor that resumes `list` under `filter` after `position`.
    pub fn seal(&self, list: &str, filter: &str, position: &str) -> String {
        let tag = self
            .mac(list, filter, position.as_bytes())
            .finalize()
            .into_bytes();
        let mut raw = Vec::with_capacity(1 + position.len() + MAC_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(position.as_bytes());
        raw.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position in `cursor`, if this cloud made it for `list` under `filter`.
    pub fn open(&self, list: &str, filter: &str, cursor: &str) -> ApiResult<String> {
        let raw = URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .filter(|r| r.len() > MAC_LEN && r.len() <= 1 + MAX_POSITION + MAC_LEN)
            .filter(|r| r[0] == VERSION)
            .ok_or_else(invalid_cursor)?;
        let (position, tag) = raw[1..].split_at(raw.len() - 1 - MAC_LEN);
        self.mac(list, filter, position)
            .verify_slice(tag)
            .map_err(|_| invalid_cursor())?;
        String::from_utf8(position.to_vec()).map_err(|_| invalid_cursor())
    }

    /// [`Self::open`] for an optional cursor.
    pub fn open_opt(
        &self,
        list: &str,
        filter: &str,
        cursor: Option<&str>,
    ) -> ApiResult<Option<String>> {
        cursor.map(|c| self.open(list, filter, c)).transpose()
    }
}

pub fn invalid_cursor() -> ApiError {
    ApiError::bad_request(
        INVALID_CURSOR,
        "cursor is not valid for this list and these filters (pass back the next_cursor of \
         the previous page with the same filters, or start again without a cursor)",
    )
}

/// The `limit` query parameter: `default` when absent, 1..=`max` otherwise.
pub fn limit(v: Option<&str>, default: usize, max: usize) -> ApiResult<usize> {
    let n = match v {
        None => default,
        Some(s) => s.parse().map_err(|_| bad_limit(max))?,
    };
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(bad_limit(max))
    }
}

fn bad_limit(max: usize) -> ApiError {
    ApiError::bad_request(
        codes::INVALID_ARGUMENT,
        format!("query parameter limit must be 1-{max}"),
    )
}

/// The query of a list that takes no filters: `limit` and `cursor` only.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// A page of `map` (a list without filters, such as members) for `query`: parses the limit
/// (`default`, at most `max`), opens the cursor, and seals the next one.
pub fn unfiltered<T>(
    cloud: &Cloud,
    list: &str,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    default: usize,
    max: usize,
    page: impl FnOnce(Option<&str>, usize) -> Page<T>,
) -> ApiResult<(Vec<T>, Option<String>)> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("query parameter is not valid: {}", e.body_text()),
        )
    })?;
    let limit = limit(q.limit.as_deref(), default, max)?;
    let cursors = Cursors::of(cloud);
    let after = cursors.open_opt(list, "", q.cursor.as_deref())?;
    let p = page(after.as_deref(), limit);
    Ok((p.items, p.next.map(|pos| cursors.seal(list, "", &pos))))
}

/// One page of a list: the items, and the key of the last one when more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts (after this key); `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Takes up to `limit` items that `keep` turns into `Some`, from `entries` (in key order,
    /// already positioned after the cursor).
    pub fn collect<'a, V: 'a>(
        entries: impl Iterator<Item = (&'a String, &'a V)>,
        limit: usize,
        mut keep: impl FnMut(&V) -> Option<T>,
    ) -> Self {
        let mut items = Vec::new();
        let mut last = None;
        for (k, v) in entries {
            let Some(t) = keep(v) else { continue };
            if items.len() == limit {
                return Self { items, next: last };
            }
            items.push(t);
            last = Some(k.clone());
        }
        Self { items, next: None }
    }

    /// The entries of `map` after `after` (all of them without a cursor).
    pub fn after<'a, V>(
        map: &'a std::collections::BTreeMap<String, V>,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a String, &'a V)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map_or(Unbounded, |a| Excluded(a.to_owned()));
        map.range::<String, _>((start, Unbounded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_only_for_its_list_and_filter() {
        let c = Cursors::new(b"secret");
        let cur = c.seal("devices", "state=active", "cam-b");
        assert_eq!(c.open("devices", "state=active", &cur), Ok("cam-b".into()));
        for (list, filter, cursor) in [
            ("devices", "state=revoked", cur.clone()),
            ("api_keys", "state=active", cur.clone()),
            ("devices", "state=active", URL_SAFE_NO_PAD.encode("cam-b")),
            ("devices", "state=active", "%%%".into()),
            ("devices", "state=active", String::new()),
        ] {
            assert_eq!(
                c.open(list, filter, &cursor).map_err(|e| e.code),
                Err(INVALID_CURSOR),
                "{list} {filter} {cursor}"
            );
        }
        // Another cloud's key.
        assert!(
            Cursors::new(b"other")
                .open("devices", "state=active", &cur)
                .is_err()
        );
        // A flipped bit anywhere.
        let mut raw = URL_SAFE_NO_PAD.decode(&cur).unwrap();
        raw[2] ^= 1;
        assert!(
            c.open("devices", "state=active", &URL_SAFE_NO_PAD.encode(raw))
                .is_err()
        );
    }

    #[test]
    fn pages_follow_key_order() {
        let map: std::collections::BTreeMap<String, u32> =
            (1..=5).map(|i| (format!("k{i}"), i)).collect();
        let odd = |v: &u32| (v % 2 == 1).then_some(*v);
        let p = Page::collect(Page::<u32>::after(&map, None), 2, odd);
        assert_eq!(
            (p.items.clone(), p.next.clone()),
            (vec![1, 3], Some("k3".into()))
        );
        let p = Page::collect(Page::<u32>::after(&map, p.next.as_deref()), 2, odd);
        assert_eq!((p.items, p.next), (vec![5], None));
        assert_eq!(limit(None, 500, 5000), Ok(500));
        assert!(limit(Some("0"), 500, 5000).is_err());
        assert!(limit(Some("5001"), 500, 5000).is_err());
    }
}
