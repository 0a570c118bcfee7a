//! Just enough HTTP/1.1 for the origin: read one request head (bounded), write one response
//! and close. Written by hand rather than with a server library so that the hostile answers
//! (1 MiB of headers, endless bodies, gzip bombs) are exactly what goes on the wire.

use std::io::Write;
use std::sync::OnceLock;

use flate2::{Compress, Compression, Crc, FlushCompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head the origin accepts.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Size of the header block sent by `HugeHeaders`.
pub const HUGE_HEADERS_LEN: usize = 1024 * 1024;
/// Decompressed size of the gzip bomb.
pub const GZIP_BOMB_LEN: u64 = 256 * 1024 * 1024;

/// The parts of a request the origin looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target as sent (normally a path).
    pub path: String,
    /// The `Host` header without port, lowercase.
    pub host: Option<String>,
}

/// Why no request could be read.
#[derive(Debug)]
pub enum RequestError {
    /// The connection failed or closed before a full head arrived.
    Io(std::io::Error),
    /// The head exceeded [`MAX_REQUEST_HEAD`].
    TooLarge,
    /// Not an HTTP/1.x request.
    Malformed,
}

/// Reads one request head (up to the blank line), at most [`MAX_REQUEST_HEAD`] bytes.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, RequestError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(RequestError::Io)?;
        if n == 0 {
            return Err(RequestError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let searched_to = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&head[searched_to..], b"\r\n\r\n") {
            return parse_request(&head[..searched_to + end]);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(RequestError::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_request(head: &[u8]) -> Result<Request, RequestError> {
    let head = std::str::from_utf8(head).map_err(|_| RequestError::Malformed)?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_ascii_whitespace();
    let (Some(method), Some(path), Some(version), None) =
        (first.next(), first.next(), first.next(), first.next())
    else {
        return Err(RequestError::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Malformed);
    }
    let host = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| strip_port(value.trim()).to_ascii_lowercase());
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        host,
    })
}

/// `site.test:8080` → `site.test`; `[::1]:80` → `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The standard reason phrase, or a neutral one.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A response head: status line, `headers` (a `Content-Type` is added when missing), then
/// `Server` and `Connection: close`, and the blank line.
pub fn head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        out.extend_from_slice(b"Content-Type: text/html; charset=utf-8\r\n");
    }
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"Server: witness-lab\r\nConnection: close\r\n\r\n");
    out
}

/// Writes a complete response with `Content-Length`; the body is left out for `HEAD`.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut all = headers.to_vec();
    all.push(("Content-Length".into(), body.len().to_string()));
    stream.write_all(&head(status, &all)).await?;
    if !head_only {
        // Small writes let a throttled stream pace itself smoothly.
        for chunk in body.chunks(16 * 1024) {
            stream.write_all(chunk).await?;
        }
    }
    stream.flush().await
}

/// Headers `X-Padding-N: aaa…` totalling at least [`HUGE_HEADERS_LEN`] bytes.
pub fn huge_headers() -> Vec<(String, String)> {
    let value = "a".repeat(1000);
    (0..HUGE_HEADERS_LEN.div_ceil(value.len()))
        .map(|i| (format!("X-Padding-{i:05}"), value.clone()))
        .collect()
}

/// A gzip member that inflates to [`GZIP_BOMB_LEN`] zero bytes from about 256 KiB, built once.
pub fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| gzip_of_zeros(GZIP_BOMB_LEN / MIB))
}

const MIB: u64 = 1024 * 1024;

/// A gzip member of `mib` MiB of zeros. One MiB is deflated once, ending with a full flush so
/// the block is byte-aligned and refers to nothing before it; the bomb repeats that block and
/// closes the stream with an empty final block, so building it costs one MiB of compression.
pub fn gzip_of_zeros(mib: u64) -> Vec<u8> {
    let zeros = vec![0u8; MIB as usize];
    let mut block = Vec::with_capacity(8 * 1024);
    let mut deflate = Compress::new(Compression::best(), false);
    loop {
        let consumed = deflate.total_in() as usize;
        deflate
            .compress_vec(&zeros[consumed..], &mut block, FlushCompress::Full)
            .expect("deflating zeros into a growing buffer cannot fail");
        if deflate.total_in() as usize == zeros.len() && block.len() < block.capacity() {
            break;
        }
        block.reserve(8 * 1024);
    }
    let mut crc = Crc::new();
    for _ in 0..mib {
        crc.update(&zeros);
    }
    let mut out = Vec::with_capacity(block.len() * mib as usize + 32);
    // Header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    for _ in 0..mib {
        out.extend_from_slice(&block);
    }
    // An empty final block with fixed Huffman codes.
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32.
    out.extend_from_slice(&((mib * MIB) as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_of_zeros_is_a_valid_gzip_member() {
        let bomb = gzip_of_zeros(3);
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&bomb[..])
            .read_to_end(&mut inflated)
            .expect("valid gzip with a correct CRC");
        assert_eq!(inflated.len(), 3 * MIB as usize);
        assert!(inflated.iter().all(|&b| b == 0));
        assert!(bomb.len() < 16 * 1024, "compressed size {}", bomb.len());
    }

    #[test]
    fn parses_request_heads() {
        let request =
            parse_request(b"GET /x HTTP/1.1\r\nHOST: Site.Test:8443\r\nAccept: */*").unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/x");
        assert_eq!(request.host.as_deref(), Some("site.test"));
        assert!(parse_request(b"\x16\x03\x01 garbage").is_err());
        assert!(parse_request(b"GET / SPDY/3").is_err());
    }
}
