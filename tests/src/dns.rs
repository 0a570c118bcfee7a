//! A DNS server on UDP and TCP (same port) that answers from a map of name → behaviour.
//!
//! Two instances make a lying "ISP resolver" and an honest one. Names are matched exactly,
//! case-insensitively, without the trailing dot; unknown names get NXDOMAIN. The server counts
//! the queries it receives per name so tests can assert that the probe really asked.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::tasks::Tasks;

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a dropped query's TCP connection is held open at most.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// TTL of every record served.
const TTL: u32 = 60;

/// What the server does with a query for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsBehaviour {
    /// NOERROR with the addresses of the queried family (A or AAAA); no address of that family
    /// gives NOERROR with an empty answer section. Other query types get an empty answer.
    Answer(Vec<IpAddr>),
    /// NXDOMAIN: the name does not exist.
    Nxdomain,
    /// NOERROR with an empty answer section, whatever the type.
    NoAnswer,
    /// SERVFAIL.
    Servfail,
    /// Never answer (a censor dropping the query).
    Drop,
    /// Two responses to the same query, like an on-path injector racing the real resolver:
    /// `first` (the forged answer) at once, `second` (the real one) `gap` later.
    Inject {
        /// Addresses of the first (forged) response.
        first: Vec<IpAddr>,
        /// Addresses of the second (genuine) response.
        second: Vec<IpAddr>,
        /// Delay between the two responses.
        gap: Duration,
    },
    /// Random bytes instead of a DNS message.
    Garbage,
}

/// A running DNS server; dropping it stops every task.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Tasks,
}

#[derive(Debug, Default)]
struct State {
    zone: Mutex<HashMap<String, DnsBehaviour>>,
    queries: Mutex<HashMap<String, usize>>,
}

impl State {
    fn behaviour(&self, name: &str) -> DnsBehaviour {
        lock(&self.zone)
            .get(name)
            .cloned()
            .unwrap_or(DnsBehaviour::Nxdomain)
    }

    fn count(&self, name: &str) {
        *lock(&self.queries).entry(name.to_owned()).or_default() += 1;
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the servers).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Normalises a name for lookup: lowercase, without the trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts a server on `ip`, UDP and TCP on the same free port, answering from `zone`.
    /// Must be called inside a tokio runtime.
    pub async fn start(
        ip: IpAddr,
        zone: impl IntoIterator<Item = (String, DnsBehaviour)>,
    ) -> io::Result<Self> {
        let (udp, tcp) = bind_pair(ip).await?;
        let addr = udp.local_addr()?;
        let state = Arc::new(State::default());
        lock(&state.zone).extend(zone.into_iter().map(|(n, b)| (normalise(&n), b)));
        let mut tasks = Tasks::default();
        tasks.spawn(serve_udp(Arc::new(udp), state.clone()));
        tasks.spawn(serve_tcp(tcp, state.clone()));
        Ok(Self { addr, state, tasks })
    }

    /// The UDP and TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets (or replaces) the behaviour for `name` while running.
    pub fn set(&self, name: &str, behaviour: DnsBehaviour) {
        lock(&self.state.zone).insert(normalise(name), behaviour);
    }

    /// How many queries (any type, UDP or TCP) arrived for `name`.
    pub fn queries(&self, name: &str) -> usize {
        lock(&self.state.queries)
            .get(&normalise(name))
            .copied()
            .unwrap_or(0)
    }

    /// How many queries arrived in total.
    pub fn total_queries(&self) -> usize {
        lock(&self.state.queries).values().sum()
    }

    /// Stops the server now (dropping it does the same).
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Binds UDP on a free port, then TCP on the same port; retries if TCP's port is taken.
async fn bind_pair(ip: IpAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((ip, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}

/// One reply the server will send, possibly after a delay.
struct Reply {
    delay: Duration,
    bytes: Vec<u8>,
}

/// Decides the replies to one query; an empty list means "stay silent".
fn replies(state: &State, query: &[u8]) -> Vec<Reply> {
    let Ok(request) = Message::from_vec(query) else {
        return Vec::new();
    };
    if request.metadata.message_type != MessageType::Query {
        return Vec::new();
    }
    let Some(question) = request.queries.first() else {
        return encode(&response(&request, ResponseCode::FormErr, &[]))
            .map(|bytes| {
                vec![Reply {
                    delay: Duration::ZERO,
                    bytes,
                }]
            })
            .unwrap_or_default();
    };
    let name = normalise(&question.name.to_ascii());
    state.count(&name);
    let qtype = question.query_type;
    let now = |message: Message| {
        encode(&message).map(|bytes| Reply {
            delay: Duration::ZERO,
            bytes,
        })
    };
    let answer = |ips: &[IpAddr]| {
        response(
            &request,
            ResponseCode::NoError,
            &records(question, qtype, ips),
        )
    };
    match state.behaviour(&name) {
        DnsBehaviour::Answer(ips) => now(answer(&ips)).into_iter().collect(),
        DnsBehaviour::Nxdomain => now(response(&request, ResponseCode::NXDomain, &[]))
            .into_iter()
            .collect(),
        DnsBehaviour::NoAnswer => now(answer(&[])).into_iter().collect(),
        DnsBehaviour::Servfail => now(response(&request, ResponseCode::ServFail, &[]))
            .into_iter()
            .collect(),
        DnsBehaviour::Drop => Vec::new(),
        DnsBehaviour::Inject { first, second, gap } => {
            let first = encode(&answer(&first));
            let second = encode(&answer(&second));
            [(Duration::ZERO, first), (gap, second)]
                .into_iter()
                .filter_map(|(delay, bytes)| {
                    Some(Reply {
                        delay,
                        bytes: bytes?,
                    })
                })
                .collect()
        }
        DnsBehaviour::Garbage => {
            let mut bytes = vec![0u8; 12 + usize::from(rand::random::<u8>())];
            rand::fill(&mut bytes[..]);
            vec![Reply {
                delay: Duration::ZERO,
                bytes,
            }]
        }
    }
}

fn records(question: &hickory_proto::op::Query, qtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (qtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(question.name.clone(), TTL, rdata))
        .collect()
}

fn response(request: &Message, code: ResponseCode, answers: &[Record]) -> Message {
    let mut message = Message::response(request.metadata.id, request.metadata.op_code);
    message.metadata.recursion_desired = request.metadata.recursion_desired;
    message.metadata.recursion_available = true;
    message.metadata.checking_disabled = request.metadata.checking_disabled;
    message.metadata.response_code = code;
    message.add_queries(request.queries.iter().cloned());
    message.add_answers(answers.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
    }
    message
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut pending = JoinSet::new();
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        while pending.try_join_next().is_some() {}
        for reply in replies(&state, &buf[..len]) {
            if reply.delay.is_zero() {
                let _ = socket.send_to(&reply.bytes, peer).await;
            } else {
                let socket = socket.clone();
                pending.spawn(async move {
                    tokio::time::sleep(reply.delay).await;
                    let _ = socket.send_to(&reply.bytes, peer).await;
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_tcp_connection(stream, state.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let replies = replies(&state, &query);
        if replies.is_empty() {
            // Silence: hold the connection until the client gives up.
            let mut sink = [0u8; 512];
            let hold = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(HOLD_AT_MOST, hold).await;
            return;
        }
        for reply in replies {
            tokio::time::sleep(reply.delay).await;
            let Ok(len) = u16::try_from(reply.bytes.len()) else {
                return;
            };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply.bytes);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}
