//! A blackholed host on loopback: connections to it time out instead of
//! being refused. An unbound loopback port refuses at once (RST), which is
//! not what a host that vanished from the network does, so the port is
//! bound with a listen backlog of 0, never accepted on, and its one queue
//! slot filled by a connection of our own: Linux then drops every further
//! SYN (the accept queue is full), and a client's connect waits for its own
//! timeout, as it does for an address that drops packets.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Holds the port blackholed until dropped.
#[derive(Debug)]
pub struct Blackhole {
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Binds `addr` (a port another process just released: std sets
    /// SO_REUSEADDR) and blackholes it; checks that a connect then times out.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        // listen() again on a listening socket only changes its backlog.
        // SAFETY: a valid socket descriptor owned by `listener`.
        if unsafe { libc::listen(listener.as_raw_fd(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fillers = Vec::new();
        // Backlog 0 holds one connection; a second fills it for kernels that
        // allow backlog + 1. Connects past the queue time out.
        for _ in 0..2 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                Err(e) => return Err(e),
            }
        }
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            other => {
                return Err(io::Error::other(format!(
                    "{addr}: blackhole check: a connect should time out, got {other:?}"
                )))
            }
        }
        Ok(Self {
            _listener: listener,
            _fillers: fillers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_time_out_then_the_port_is_free_again() {
        let free = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let b = Blackhole::bind(addr).expect("blackhole");
        let e = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).expect_err("timeout");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(b);
        // Released: a new server can take the port.
        TcpListener::bind(addr).expect("rebind");
    }
}
