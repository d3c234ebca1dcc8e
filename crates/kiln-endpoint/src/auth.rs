//! The opening handshake's authentication (spec §2.2): `Authorization: Basic`, checked before
//! the upgrade, and a per-address limit on failed logins.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use subtle::ConstantTimeEq;

use kiln_remote::PasswordCheck;

/// Why a handshake's credentials were not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum CredError {
    /// No `Authorization` header: 401.
    Missing,
    /// Not `Basic`, not base64, not UTF-8, or no colon: 400.
    Malformed,
}

/// Splits `Authorization: Basic base64(name:password)` on the first colon, as Buildbot does.
pub fn parse_basic(header: Option<&[u8]>) -> Result<(String, String), CredError> {
    let value = header.ok_or(CredError::Missing)?;
    let value = std::str::from_utf8(value)
        .map_err(|_| CredError::Malformed)?
        .trim();
    let (scheme, rest) = value.split_once(' ').ok_or(CredError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(CredError::Malformed);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| CredError::Malformed)?;
    let text = String::from_utf8(raw).map_err(|_| CredError::Malformed)?;
    let (name, password) = text.split_once(':').ok_or(CredError::Malformed)?;
    Ok((name.to_owned(), password.to_owned()))
}

/// Checks a password; argon2 runs on the blocking pool because it takes tens of milliseconds.
pub async fn verify(check: &PasswordCheck, password: String) -> bool {
    match check {
        PasswordCheck::Plain(expected) => {
            constant_time_eq(expected.as_bytes(), password.as_bytes())
        }
        PasswordCheck::Argon2(phc) => {
            let phc = phc.clone();
            tokio::task::spawn_blocking(move || {
                use argon2::PasswordVerifier as _;
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), phc.as_str())
                    .is_ok()
            })
            .await
            .unwrap_or(false)
        }
    }
}

/// Equality whose time does not depend on where the inputs differ (only on their lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Failed logins per (remote address, worker name) over a fixed one-minute window. Keyed by
/// name too, so one misconfigured worker behind a shared address (a NAT, a host with several
/// workers) does not lock the others out, while guesses at any one worker stay limited.
///
/// Its size does not depend on what clients send: the name is kept only as 8 bytes of a hash
/// keyed per process (a client cannot aim collisions at a worker it does not know the key
/// of), and the table holds at most [`MAX_FAILURE_ENTRIES`] entries — expired ones go first,
/// then the oldest.
pub struct FailedLogins {
    table: Mutex<HashMap<LoginKey, Failures>>,
    hasher: RandomState,
}

/// At most this many (address, name) pairs are remembered: about 1 MiB.
pub const MAX_FAILURE_ENTRIES: usize = 16 * 1024;

const WINDOW: Duration = Duration::from_secs(60);

/// Who failed: the client's address and a keyed hash of the name it tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginKey {
    addr: IpAddr,
    name: u64,
}

/// The failures of one key in its window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

impl Failures {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= WINDOW
    }
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins {
            table: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
        }
    }
}

impl FailedLogins {
    /// The key of a login attempt by `name` from `addr` (the name is hashed once, here).
    pub fn key(&self, addr: IpAddr, name: &str) -> LoginKey {
        LoginKey {
            addr,
            name: self.hasher.hash_one(name),
        }
    }

    /// Whether `key` already used up its failures for the current window.
    pub fn blocked(&self, key: LoginKey, limit: u32, now: Instant) -> bool {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table
            .get(&key)
            .is_some_and(|f| !f.expired(now) && f.count >= limit)
    }

    /// Counts one failure of `key`.
    pub fn record(&self, key: LoginKey, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&key) {
            make_room(&mut table, now);
        }
        let f = table.entry(key).or_insert(Failures {
            since: now,
            count: 0,
        });
        if f.expired(now) {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
    }

    /// How many keys are remembered.
    pub fn entries(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Frees at least one slot of a full table: expired entries first; if the table is still
/// full of live ones (a flood of names or addresses), the oldest sixteenth in one pass, so
/// the inserts that follow do not scan the table again each.
fn make_room(table: &mut HashMap<LoginKey, Failures>, now: Instant) {
    if table.len() < MAX_FAILURE_ENTRIES {
        return;
    }
    table.retain(|_, f| !f.expired(now));
    if table.len() < MAX_FAILURE_ENTRIES {
        return;
    }
    let mut starts: Vec<Instant> = table.values().map(|f| f.since).collect();
    let nth = starts.len() / 16;
    let (_, &mut cut, _) = starts.select_nth_unstable(nth);
    table.retain(|_, f| f.since > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(s: &str) -> Option<Vec<u8>> {
        Some(
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
            .into_bytes(),
        )
    }

    #[test]
    fn splits_on_the_first_colon() {
        assert_eq!(
            parse_basic(hdr("w1:pa:ss").as_deref()),
            Ok(("w1".into(), "pa:ss".into()))
        );
        assert_eq!(parse_basic(None), Err(CredError::Missing));
        assert_eq!(
            parse_basic(hdr("nocolon").as_deref()),
            Err(CredError::Malformed)
        );
        assert_eq!(parse_basic(Some(b"Bearer abc")), Err(CredError::Malformed));
        assert_eq!(parse_basic(Some(b"Basic !!!")), Err(CredError::Malformed));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn argon2_phc_verifies() {
        use argon2::PasswordHasher as _;
        let phc = argon2::Argon2::default()
            .hash_password_with_salt(b"s3cret", b"saltsaltsaltsalt")
            .unwrap()
            .to_string();
        assert!(verify(&PasswordCheck::Argon2(phc.clone()), "s3cret".into()).await);
        assert!(!verify(&PasswordCheck::Argon2(phc), "wrong".into()).await);
        assert!(!verify(&PasswordCheck::Argon2("not a phc".into()), "s3cret".into()).await);
    }

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let f = FailedLogins::default();
        let now = Instant::now();
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let w1 = f.key(a, "w1");
        assert!(!f.blocked(w1, 2, now));
        f.record(w1, now);
        assert!(!f.blocked(w1, 2, now));
        f.record(w1, now);
        assert!(f.blocked(w1, 2, now));
        assert!(
            !f.blocked(f.key(a, "w2"), 2, now),
            "another worker at the same address is not locked out"
        );
        assert!(!f.blocked(f.key("127.0.0.8".parse().unwrap(), "w1"), 2, now));
        assert!(
            !f.blocked(w1, 2, now + WINDOW),
            "a minute later the address may try again"
        );
        f.record(w1, now + WINDOW);
        assert!(
            !f.blocked(w1, 2, now + WINDOW),
            "a new window counts from zero"
        );
    }

    #[test]
    fn a_flood_of_long_names_keeps_the_table_bounded_and_the_names_out() {
        // Names are never stored: an entry is an address, a u64 and a window.
        assert!(std::mem::size_of::<(LoginKey, Failures)>() <= 64);
        let f = FailedLogins::default();
        let start = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let victim = f.key("10.9.9.9".parse().unwrap(), "w1");
        for _ in 0..3 {
            f.record(victim, start);
        }
        let long = "x".repeat(10 * 1024);
        for i in 0..MAX_FAILURE_ENTRIES + 3000 {
            let name = format!("{long}{i}");
            let now = start + Duration::from_millis(1 + i as u64);
            f.record(f.key(a, &name), now);
            assert!(
                f.entries() <= MAX_FAILURE_ENTRIES,
                "{} entries",
                f.entries()
            );
        }
        let late = start + Duration::from_millis(1 + (MAX_FAILURE_ENTRIES + 3000) as u64);
        assert!(
            !f.blocked(victim, 3, late),
            "the oldest entry gave way to the flood"
        );
        // The newest failures are still counted.
        let newest = f.key(a, &format!("{long}{}", MAX_FAILURE_ENTRIES + 2999));
        assert!(f.blocked(newest, 1, late));
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let f = FailedLogins::default();
        let start = Instant::now();
        let keep = f.key("10.0.0.2".parse().unwrap(), "w1");
        for i in 0..MAX_FAILURE_ENTRIES - 1 {
            f.record(f.key("10.0.0.1".parse().unwrap(), &i.to_string()), start);
        }
        let later = start + WINDOW / 2;
        f.record(keep, later);
        assert_eq!(f.entries(), MAX_FAILURE_ENTRIES);
        // The table is full; the first-window entries expire before `keep` does.
        let now = start + WINDOW;
        f.record(f.key("10.0.0.3".parse().unwrap(), "new"), now);
        assert_eq!(f.entries(), 2, "only the live entries remain");
        assert!(f.blocked(keep, 1, now));
    }
}
