//! A webhook receiver: a real HTTP listener that records every POST body, for asserting what
//! the collector notified.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest body recorded.
const MAX_BODY: usize = 1024 * 1024;

/// A running receiver; it stops with the process (tests are short-lived).
#[derive(Clone, Debug)]
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl WebhookReceiver {
    /// Listen on a free loopback port.
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    if let Some(body) = read_post(stream) {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                    }
                });
            }
        });
        Ok(WebhookReceiver { url, bodies })
    }

    /// Every body received so far.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Wait until `pred` holds for the bodies, or `timeout`; returns the bodies either way.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.bodies();
            if pred(&b) || Instant::now() > deadline {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_post(mut stream: TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; len.min(MAX_BODY)];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(String::from_utf8_lossy(&body).into_owned())
}
