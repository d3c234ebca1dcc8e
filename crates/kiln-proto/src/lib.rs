//! Buildbot's `msgpack_experimental_v7` worker protocol, as both sides speak it.
//!
//! One WebSocket binary message carries one msgpack map: a request
//! (`{"op", "seq_number", ...}`) or a response (`{"op": "response", ...}`).
//! This crate turns bytes into [`Message`]s and back, with a hard size cap, and
//! gives typed views of every command's arguments ([`args`]) and of the
//! `update` payload ([`update`]). It does no I/O: the worker and the master
//! bring their own sockets.
//!
//! The encoder writes map keys in the order the Python implementation does, so a
//! message decoded from a real Buildbot peer re-encodes to the same bytes
//! (checked against golden vectors captured from Python's `msgpack`).
//!
//! See `shared/spec/worker-protocol.md` for the protocol itself.

pub mod args;
mod codec;
pub mod info;
mod message;
pub mod update;
mod value;
mod write;

pub use codec::{DecodeError, Limits, MAX_DEPTH, decode, encode, encode_into};
pub use message::{Message, Op, Response};
pub use rmpv::Value;
pub use value::{Map, MapExt, text_of};

/// An error and its sources on one line (`outer: inner: root`). Errors reach a peer and a
/// log as one line of text (a response's error, a command's `failure`, a log line), so both
/// sides of the protocol, and the master behind it, render them with this. A source whose
/// text already ends the line is not repeated: some libraries (tungstenite, for one) put
/// their source in their own message too.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The only protocol name Buildbot 4.3 accepts for msgpack workers.
pub const PROTOCOL_NAME: &str = "msgpack_experimental_v7";

/// The version string every command reports in `worker_commands`; "3.3" keeps
/// the master off all its legacy code paths.
pub const COMMAND_VERSION: &str = "3.3";

/// Default TCP port of a Buildbot master when `MASTER` has no `:port`.
pub const DEFAULT_MASTER_PORT: u16 = 9989;

/// The default `set_worker_settings` values (identical to the worker's built-in defaults).
pub mod defaults {
    /// Max bytes of buffered output before an `update` is sent.
    pub const BUFFER_SIZE: usize = 64 * 1024;
    /// Max seconds output may wait in the buffer.
    pub const BUFFER_TIMEOUT: f64 = 5.0;
    /// Lines longer than this (in characters) are split.
    pub const MAX_LINE_LENGTH: usize = 4096;
    /// The newline regex the 4.3 master sends, as Python source.
    pub const NEWLINE_RE: &str = r"(\r\n|\r(?=.)|\033\[u|\033\[[0-9]+;[0-9]+[Hf]|\033\[2J|\x08+)";
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the CA file")]
    struct Outer(#[source] std::io::Error);

    /// Like tungstenite's errors: the message holds the source too.
    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct SaysItsSource(#[from] std::io::Error);

    #[test]
    fn error_chain_joins_the_sources_once() {
        let e = Outer(std::io::Error::other("no such file"));
        assert_eq!(
            super::error_chain(&e),
            "cannot read the CA file: no such file"
        );
        assert_eq!(super::error_chain(&e.0), "no such file");
        let e = SaysItsSource(std::io::Error::other("refused"));
        assert_eq!(super::error_chain(&e), "IO error: refused");
    }
}
