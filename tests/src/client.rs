//! Small clients for tests: connect from a chosen source address (127.0.0.2 is censored,
//! 127.0.0.3 is not), speak TLS with the lab's trust, send one DNS query.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use crate::pki::provider;

/// Opens a TCP connection to `to` from `source` (any port).
pub async fn connect_from(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// A TLS connector trusting only `roots`, offering HTTP/1.1.
pub fn tls_connector(roots: RootCertStore) -> TlsConnector {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connector that accepts any certificate, so a test can inspect a chain it would not
/// trust (read it with `get_ref().1.peer_certificates()`).
pub fn danger_accept_any_connector() -> TlsConnector {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            witness_core::checks::tls::RecordingVerifier::new(provider()),
        ))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Writes a `GET path` for `host` and reads the whole response until the server closes, at
/// most `limit` bytes.
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while response.len() < limit {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // Servers here close without close_notify after `Connection: close` at times.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(response)
}

/// Sends one UDP query for `name`/`qtype` from `source` to `server` and collects the
/// responses (an injector sends two) until `max_responses` arrived or `wait` elapsed.
pub async fn dns_query(
    source: IpAddr,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    max_responses: usize,
    wait: Duration,
) -> io::Result<Vec<Vec<u8>>> {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    let name = Name::from_ascii(name).map_err(io::Error::other)?;
    query.add_query(Query::query(name, qtype));
    socket
        .send_to(&query.to_vec().map_err(io::Error::other)?, server)
        .await?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut responses = Vec::new();
    let mut buf = vec![0u8; 65_535];
    while responses.len() < max_responses {
        let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        else {
            break;
        };
        let (len, _) = received?;
        responses.push(buf[..len].to_vec());
    }
    Ok(responses)
}
