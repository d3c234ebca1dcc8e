//! The opening handshake's authentication (spec §2.2): `Authorization: Basic`, checked before
//! the upgrade, and a per-address limit on failed logins.

use std::collections::HashMap;
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
#[derive(Default)]
pub struct FailedLogins {
    by_addr: Mutex<HashMap<(IpAddr, String), (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailedLogins {
    /// Whether `addr` already used up its failures for the current window.
    pub fn blocked(&self, addr: IpAddr, name: &str, limit: u32) -> bool {
        let map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(addr, name.to_string()))
            .is_some_and(|(start, n)| start.elapsed() < WINDOW && *n >= limit)
    }

    pub fn record(&self, addr: IpAddr, name: &str) {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        // Bound the map: a scan of many addresses must not grow it for ever.
        if map.len() >= 4096 {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let slot = map
            .entry((addr, name.to_string()))
            .or_insert((Instant::now(), 0));
        if slot.0.elapsed() >= WINDOW {
            *slot = (Instant::now(), 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }
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
    fn blocks_after_the_limit() {
        let f = FailedLogins::default();
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!f.blocked(a, "w1", 2));
        f.record(a, "w1");
        assert!(!f.blocked(a, "w1", 2));
        f.record(a, "w1");
        assert!(f.blocked(a, "w1", 2));
        assert!(
            !f.blocked(a, "w2", 2),
            "another worker at the same address is not locked out"
        );
        assert!(!f.blocked("127.0.0.8".parse().unwrap(), "w1", 2));
    }
}
