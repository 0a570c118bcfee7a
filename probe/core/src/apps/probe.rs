//! The I/O of one endpoint: connect, handshake, a bounded HTTP exchange. Each step is also
//! recorded in the measurement's `tcp` and `tls` lists, as a website's are. Every read is
//! bounded and every wait timed out by the step timeout.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::checks::tls::TlsContext;
use crate::checks::{ms_since, tcp, MeasureConfig};
use crate::failure::Failure;
use crate::model::{
    EndpointObservation, EndpointProbe, Status, Step, TcpObservation, TlsObservation,
};
use crate::targets::apps::{CaChoice, EndpointSpec};

/// Most bytes of an HTTP answer read: the status line and headers, and the first bytes of the
/// body (enough to recognise a Tor consensus).
pub const MAX_HTTP_READ: usize = 16 * 1024;

/// What a Tor consensus starts with (dir-spec.txt, "network-status-version 3").
pub const CONSENSUS_PREFIX: &[u8] = b"network-status-version 3";

/// Where Tor's directory port serves the consensus (dir-spec.txt, section 6.2).
pub const CONSENSUS_PATH: &str = "/tor/status-vote/current/consensus";

/// The TLS contexts an endpoint may need: the web PKI's and Signal's.
#[derive(Clone, Debug)]
pub struct AppTls {
    /// Mozilla roots plus `--extra-ca`.
    pub system: TlsContext,
    /// Signal's roots plus `--extra-ca`.
    pub signal: TlsContext,
}

/// What one endpoint's probe saw: the endpoint and the steps for the measurement's lists.
#[derive(Debug, Default)]
pub struct Steps {
    /// Connects.
    pub tcp: Vec<TcpObservation>,
    /// Handshakes.
    pub tls: Vec<TlsObservation>,
}

/// An endpoint observation before anything happened (its outcome is decided later).
pub fn blank(ep: &EndpointSpec, addr: Option<SocketAddr>, t0: Instant) -> EndpointObservation {
    EndpointObservation {
        host: ep.host.clone(),
        port: ep.port,
        front: ep.front.clone(),
        probe: ep.probe,
        addr,
        t_ms: ms_since(t0),
        duration_ms: 0.0,
        failed_step: None,
        failure: None,
        http_status: None,
        sent_bytes: None,
        twin: None,
        status: Status::Inconclusive,
        method: None,
    }
}

/// Probe a TCP-based endpoint (`tcp`, `tls`, `https`, `dirport`) at `addr`.
pub async fn probe_stream(
    ep: &EndpointSpec,
    addr: SocketAddr,
    cfg: &MeasureConfig,
    tls: &AppTls,
    t0: Instant,
    steps: &mut Steps,
) -> EndpointObservation {
    let start = Instant::now();
    let mut obs = blank(ep, Some(addr), t0);
    let (tcp_obs, stream) = tcp::connect(addr, cfg, t0).await;
    let tcp_failure = tcp_obs.failure.clone();
    steps.tcp.push(tcp_obs);
    let finish = |mut obs: EndpointObservation, step: Option<Step>, f: Option<Failure>| {
        obs.failed_step = step;
        obs.failure = f;
        obs.duration_ms = ms_since(start);
        obs
    };
    let Some(stream) = stream else {
        return finish(obs, Some(Step::Tcp), tcp_failure);
    };
    match ep.probe {
        EndpointProbe::Tcp => finish(obs, None, None),
        EndpointProbe::Dirport => {
            let path = ep.path.as_deref().unwrap_or(CONSENSUS_PATH);
            match http_get(stream, &ep.host, path, cfg).await {
                Ok((status, body)) => {
                    obs.http_status = Some(status);
                    if status == 200 && body.starts_with(CONSENSUS_PREFIX) {
                        finish(obs, None, None)
                    } else {
                        finish(obs, Some(Step::Http), Some(Failure::HttpInvalidResponse))
                    }
                }
                Err(f) => finish(obs, Some(Step::Http), Some(f)),
            }
        }
        EndpointProbe::Tls | EndpointProbe::Https => {
            let ctx = match ep.ca {
                CaChoice::Signal => &tls.signal,
                CaChoice::System | CaChoice::None => &tls.system,
            };
            let sni = ep.front.as_deref().unwrap_or(&ep.host);
            // An address has no name to send: the handshake goes without SNI's meaning, so a
            // listed address is verified (when asked) for itself.
            let (tls_obs, tls_stream) = ctx.handshake(stream, addr, sni, false, cfg, t0).await;
            let hs_failure = tls_obs.failure.clone();
            let verify_failure = tls_obs.verification_failure.clone();
            steps.tls.push(tls_obs);
            let Some(tls_stream) = tls_stream else {
                return finish(obs, Some(Step::Tls), hs_failure);
            };
            if ep.ca != CaChoice::None {
                if let Some(f) = verify_failure {
                    return finish(obs, Some(Step::Tls), Some(f));
                }
            }
            if ep.probe == EndpointProbe::Tls {
                return finish(obs, None, None);
            }
            let path = ep.path.as_deref().unwrap_or("/");
            match http_get(tls_stream, &ep.host, path, cfg).await {
                Ok((status, _)) => {
                    obs.http_status = Some(status);
                    finish(obs, None, None)
                }
                Err(f) => finish(obs, Some(Step::Http), Some(f)),
            }
        }
        // Reflector protocols go through `reflect`.
        _ => finish(
            obs,
            Some(Step::Protocol),
            Some(Failure::unknown("not a stream probe")),
        ),
    }
}

/// `GET path` with `Host: host`, reading at most [`MAX_HTTP_READ`] bytes within the step
/// timeout: the status code and the body bytes read (any status counts as an answer).
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
    cfg: &MeasureConfig,
) -> Result<(u16, Vec<u8>), Failure> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: witness\r\nAccept: */*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        s.write_all(req.as_bytes()).await?;
        s.flush().await?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        while buf.len() < MAX_HTTP_READ {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            let room = MAX_HTTP_READ - buf.len();
            buf.extend_from_slice(&chunk[..n.min(room)]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(cfg.timeout, exchange).await {
        Err(_) => return Err(Failure::GenericTimeout),
        Ok(Err(e)) => return Err(Failure::from_io(&e)),
        Ok(Ok(b)) => b,
    };
    parse_response(&buf)
}

/// The status code and the body bytes of a (possibly truncated) HTTP/1.x response.
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
    if buf.is_empty() {
        return Err(Failure::Eof);
    }
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(Failure::HttpInvalidResponse)?;
    let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| Failure::HttpInvalidResponse)?;
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Failure::HttpInvalidResponse);
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or(Failure::HttpInvalidResponse)?;
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| buf[p + 4..].to_vec())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_or_fail_by_name() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nnetwork-status-version 3\n").unwrap(),
            (200, b"network-status-version 3\n".to_vec())
        );
        assert_eq!(parse_response(b"HTTP/1.0 404 x\r\n").unwrap().0, 404);
        assert_eq!(parse_response(b""), Err(Failure::Eof));
        assert_eq!(
            parse_response(b"SSH-2.0-x\r\n"),
            Err(Failure::HttpInvalidResponse)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 999 x\r\n"),
            Err(Failure::HttpInvalidResponse)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200"),
            Err(Failure::HttpInvalidResponse)
        );
    }
}
