//! Who the client really is behind a trusted proxy: the PROXY protocol (v1 text, v2 binary,
//! parsed by `ppp`) on the worker port, `X-Forwarded-For` on the web port.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult as _, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// v1's longest line (107 bytes, spec §2.1); a v2 header with more TLVs than fit in this is
/// not one a load balancer in front of a build farm sends.
const MAX_HEADER: usize = 1024;
const V1_PREFIX: &[u8] = b"PROXY ";

pub(crate) fn is_trusted(proxies: &[IpNet], addr: IpAddr) -> bool {
    let addr = canonical(addr);
    proxies.iter().any(|n| n.contains(&addr))
}

/// `::ffff:10.0.0.5` (an IPv4 client on a dual-stack socket) is `10.0.0.5`.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// What a trusted proxy's connection starts with.
#[derive(Debug, PartialEq)]
pub(crate) struct Opening {
    /// The client the proxy speaks for; `None` when there was no PROXY header (the proxy
    /// connected directly: health checks) or it names no address (`LOCAL`, `UNKNOWN`).
    pub client: Option<SocketAddr>,
    /// Bytes read past the header: the start of the client's own request.
    pub rest: Vec<u8>,
}

/// Reads a PROXY protocol header (v1 or v2) if the connection starts with one. Reads only
/// as far as needed to tell; what follows the header (or everything read, when there is no
/// header) is handed back in `rest`.
pub(crate) async fn read_opening<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Opening> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if !could_be_header(&buf) {
            return Ok(Opening {
                client: None,
                rest: buf,
            });
        }
        if !buf.is_empty() {
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_complete() {
                return finish(parsed, &buf);
            }
        }
        if buf.len() >= MAX_HEADER {
            return Err(invalid("PROXY protocol header longer than 1 KiB"));
        }
        let mut chunk = [0u8; 256];
        let want = chunk.len().min(MAX_HEADER - buf.len());
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether `buf` so far agrees with the start of a v1 or v2 signature (or of what follows).
fn could_be_header(buf: &[u8]) -> bool {
    let agrees = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    agrees(V1_PREFIX) || agrees(v2::PROTOCOL_PREFIX)
}

fn finish(parsed: HeaderResult<'_>, buf: &[u8]) -> std::io::Result<Opening> {
    let (len, client) = match parsed {
        HeaderResult::V1(Ok(h)) => (h.header.len(), v1_client(&h.addresses)),
        HeaderResult::V2(Ok(h)) => (h.len(), v2_client(&h)),
        HeaderResult::V1(Err(e)) => return Err(invalid(&format!("bad PROXY v1 header: {e}"))),
        HeaderResult::V2(Err(e)) => return Err(invalid(&format!("bad PROXY v2 header: {e}"))),
    };
    Ok(Opening {
        client,
        rest: buf[len..].to_vec(),
    })
}

fn v1_client(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match &h.addresses {
        v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The client named by `X-Forwarded-For` values (each a comma-separated list, appended to by
/// each proxy on the way): the right-most address that is not a trusted proxy. Left of it,
/// the client could have written anything. `None` when no usable entry is there.
pub(crate) fn forwarded_client<'a>(
    values: impl DoubleEndedIterator<Item = &'a [u8]>,
    proxies: &[IpNet],
) -> Option<IpAddr> {
    let mut leftmost_proxy = None;
    for value in values.rev() {
        let text = std::str::from_utf8(value).ok()?;
        for entry in text.rsplit(',') {
            let ip: IpAddr = entry.trim().parse().ok()?;
            if !is_trusted(proxies, ip) {
                return Some(canonical(ip));
            }
            leftmost_proxy = Some(canonical(ip));
        }
    }
    // Every hop a trusted proxy: the first of them is where the request started.
    leftmost_proxy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    async fn open(bytes: &[u8]) -> std::io::Result<Opening> {
        let mut r = bytes;
        read_opening(&mut r).await
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_keep_what_follows() {
        let o = open(b"PROXY TCP4 192.0.2.7 10.0.0.1 4711 9989\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(o.client, Some("192.0.2.7:4711".parse().unwrap()));
        assert_eq!(o.rest, b"GET / HTTP/1.1\r\n");

        let src: SocketAddr = "[2001:db8::5]:4242".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:9989".parse().unwrap();
        let mut v2h = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap();
        v2h.extend_from_slice(b"GET");
        let o = open(&v2h).await.unwrap();
        assert_eq!(o.client, Some(src));
        assert_eq!(o.rest, b"GET");
    }

    #[tokio::test]
    async fn a_plain_request_is_handed_back_whole() {
        let o = open(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(o.client, None);
        assert_eq!(o.rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_broken_header_is_an_error() {
        assert!(open(b"PROXY TCP4 nonsense\r\nGET").await.is_err());
        assert!(
            open(b"PROXY TCP4 192.0.2.7").await.is_err(),
            "EOF mid-header"
        );
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_hop() {
        let proxies = nets(&["10.0.0.0/8"]);
        let values: [&[u8]; 2] = [b"6.6.6.6, 192.0.2.9", b"10.1.1.1"];
        assert_eq!(
            forwarded_client(values.into_iter(), &proxies),
            Some("192.0.2.9".parse().unwrap())
        );
        let only_proxies: [&[u8]; 1] = [b"10.0.0.9, 10.0.0.8"];
        assert_eq!(
            forwarded_client(only_proxies.into_iter(), &proxies),
            Some("10.0.0.9".parse().unwrap())
        );
        let garbage: [&[u8]; 1] = [b"not-an-address"];
        assert_eq!(forwarded_client(garbage.into_iter(), &proxies), None);
    }
}
