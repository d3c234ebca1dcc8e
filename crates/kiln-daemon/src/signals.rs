//! The signals a running process answers, as one stream of [`Sig`]s.
//!
//! SIGTERM and SIGINT (Ctrl-C off Unix) ask either binary to stop. SIGHUP (the master:
//! reconfig) and SIGUSR1 (the worker: stop once the running builds are done) are each
//! one binary's, so they are listened for only when asked: in the other binary they keep
//! their default action.

use std::io;
use std::task::{Context, Poll};

/// A signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM, SIGINT or Ctrl-C: stop. The name is for the log.
    Stop(&'static str),
    /// SIGHUP, with [`Signals::with_hup`].
    Hup,
    /// SIGUSR1, with [`Signals::with_usr1`].
    Usr1,
}

/// The installed handlers; [`Signals::next`] waits for the next signal.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    usr1: Option<tokio::signal::unix::Signal>,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

#[cfg(unix)]
fn listen(kind: tokio::signal::unix::SignalKind) -> io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
}

impl Signals {
    /// Listens for the stop signals. Call it inside the runtime; a signal arriving
    /// after this is not lost.
    pub fn install() -> io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Ok(Signals {
                term: listen(SignalKind::terminate())?,
                int: listen(SignalKind::interrupt())?,
                hup: None,
                usr1: None,
            })
        }
        #[cfg(windows)]
        Ok(Signals {
            ctrl_c: tokio::signal::windows::ctrl_c()?,
        })
    }

    /// Also listens for SIGHUP (Unix; elsewhere there is none).
    pub fn with_hup(self) -> io::Result<Signals> {
        #[cfg(unix)]
        return Ok(Signals {
            hup: Some(listen(tokio::signal::unix::SignalKind::hangup())?),
            ..self
        });
        #[cfg(not(unix))]
        Ok(self)
    }

    /// Also listens for SIGUSR1 (Unix; elsewhere there is none).
    pub fn with_usr1(self) -> io::Result<Signals> {
        #[cfg(unix)]
        return Ok(Signals {
            usr1: Some(listen(tokio::signal::unix::SignalKind::user_defined1())?),
            ..self
        });
        #[cfg(not(unix))]
        Ok(self)
    }

    /// The next signal (a stop first, when several are pending).
    pub async fn next(&mut self) -> Sig {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    #[cfg(unix)]
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Sig> {
        let ready = |s: Option<&mut tokio::signal::unix::Signal>, cx: &mut Context<'_>| {
            s.is_some_and(|s| s.poll_recv(cx).is_ready())
        };
        if ready(Some(&mut self.term), cx) {
            Poll::Ready(Sig::Stop("SIGTERM"))
        } else if ready(Some(&mut self.int), cx) {
            Poll::Ready(Sig::Stop("SIGINT"))
        } else if ready(self.hup.as_mut(), cx) {
            Poll::Ready(Sig::Hup)
        } else if ready(self.usr1.as_mut(), cx) {
            Poll::Ready(Sig::Usr1)
        } else {
            Poll::Pending
        }
    }

    #[cfg(windows)]
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Sig> {
        self.ctrl_c.poll_recv(cx).map(|_| Sig::Stop("Ctrl-C"))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use nix::sys::signal::{Signal, raise};

    #[tokio::test]
    async fn each_signal_comes_out_once() {
        let mut signals = Signals::install()
            .and_then(Signals::with_hup)
            .and_then(Signals::with_usr1)
            .unwrap();
        for (raised, expected) in [
            (Signal::SIGUSR1, Sig::Usr1),
            (Signal::SIGHUP, Sig::Hup),
            (Signal::SIGINT, Sig::Stop("SIGINT")),
            (Signal::SIGTERM, Sig::Stop("SIGTERM")),
        ] {
            raise(raised).unwrap();
            assert_eq!(signals.next().await, expected);
        }
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(100), signals.next());
        assert!(quiet.await.is_err(), "nothing else arrived");
    }
}
