//! TCP: connect to every distinct address, each connect its own observation.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::{ms_since, MeasureConfig};
use crate::failure::Failure;
use crate::model::TcpObservation;

/// Open a TCP connection to `addr`, bound to `source` when given. No timeout here: callers
/// bound it.
pub async fn connect_socket(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    // socket2 for the options tokio does not expose; then hand it to tokio.
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    sock.connect(addr).await
}

/// Connect with the step timeout, recording the observation; the stream is returned on
/// success so TLS and HTTP run on the very connection that was measured.
pub async fn connect(
    addr: SocketAddr,
    cfg: &MeasureConfig,
    t0: Instant,
) -> (TcpObservation, Option<TcpStream>) {
    let t_ms = ms_since(t0);
    let start = Instant::now();
    let res =
        tokio::time::timeout(cfg.timeout, connect_socket(addr, cfg.source_for(addr.ip()))).await;
    let duration_ms = ms_since(start);
    let (failure, stream) = match res {
        Err(_) => (Some(Failure::GenericTimeout), None),
        Ok(Err(e)) => (Some(Failure::from_io(&e)), None),
        Ok(Ok(s)) => (None, Some(s)),
    };
    (
        TcpObservation {
            addr,
            t_ms,
            duration_ms,
            failure,
        },
        stream,
    )
}
