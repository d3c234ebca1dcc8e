//! A minimal plain-HTTP/1.1 client for `kiln force` and `kiln sendchange` (hyper, one
//! connection per request). TLS is left to a reverse proxy, as with Buildbot: point the
//! command at the master's own port.

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// `http://HOST[:PORT][/PREFIX]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port`, for the connection and the `Host` header.
    pub authority: String,
    /// Path prefix without a trailing slash (empty for the root).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> anyhow::Result<BaseUrl> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            bail!(
                "{url}: https is not supported here; use the master's own http:// address \
                 (e.g. http://127.0.0.1:8010)"
            );
        } else if !url.contains("://") {
            url
        } else {
            bail!("{url}: expected http://HOST:PORT");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("{url}: no host; expected http://HOST:PORT");
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(BaseUrl {
            authority,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{}", self.authority, self.prefix, path)
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the master answered {} with a body that is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request. `body` is sent with `content_type` when given.
pub async fn request(
    base: &BaseUrl,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<Response> {
    let stream = tokio::net::TcpStream::connect(&base.authority)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the master at http://{}: is it running, and is that its web port?",
                base.authority
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("{}{}", base.prefix, path))
        .header(hyper::header::HOST, &base.authority)
        .header(hyper::header::ACCEPT, "application/json");
    let payload = match body {
        Some((ctype, bytes)) => {
            req = req.header(hyper::header::CONTENT_TYPE, ctype);
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(payload)).context("bad request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{method} {} failed", base.url(path)))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer to {method} {}: {e}", base.url(path)))?
        .to_bytes();
    conn.abort();
    Ok(Response { status, body })
}

pub async fn get_json(base: &BaseUrl, path: &str) -> anyhow::Result<serde_json::Value> {
    let resp = request(base, Method::GET, path, None).await?;
    if !resp.status.is_success() {
        bail!(
            "GET {} answered {}: {}",
            base.url(path),
            resp.status,
            resp.text().trim()
        );
    }
    resp.json()
}

/// `application/x-www-form-urlencoded` body from pairs.
pub fn form_encode(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("http://127.0.0.1:8010").unwrap();
        assert_eq!(b.authority, "127.0.0.1:8010");
        assert_eq!(b.prefix, "");
        assert_eq!(
            b.url("/api/v2/builds"),
            "http://127.0.0.1:8010/api/v2/builds"
        );
        let b = BaseUrl::parse("http://ci.example/bb/").unwrap();
        assert_eq!(b.authority, "ci.example:80");
        assert_eq!(b.prefix, "/bb");
        assert_eq!(
            BaseUrl::parse("localhost:9000").unwrap().authority,
            "localhost:9000"
        );
        assert!(BaseUrl::parse("https://ci.example").is_err());
        assert_eq!(percent("a b/ü&"), "a%20b%2F%C3%BC%26");
        assert_eq!(
            form_encode(&[("who", "Me <me@x>".into()), ("files", "[]".into())]),
            "who=Me%20%3Cme%40x%3E&files=%5B%5D"
        );
    }
}
