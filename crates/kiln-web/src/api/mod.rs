//! `GET /api/v2/...`: Buildbot 4.3's REST resources, a module per resource family.

/// Buildbot's `n:` path components: digits only.
pub(crate) fn path_number(segment: &str) -> Option<i64> {
    (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
        .then(|| segment.parse().ok())
        .flatten()
}
