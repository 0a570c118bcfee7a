//! OpenVPN's first packet, `P_CONTROL_HARD_RESET_CLIENT_V2` (openvpn/src/openvpn/ssl_pkt.h,
//! ssl.c), and the server's `P_CONTROL_HARD_RESET_SERVER_V2` that acknowledges it. Over TCP
//! each packet carries a two-byte length in front. The client's packet carries a tls-auth
//! shaped trailer (an HMAC-SHA1 and a replay id), as most providers' configurations send: a
//! censor cannot check it without the key, and it makes the packet at least as large as the
//! answer, so the reflector never amplifies.

/// Opcode 7 (`P_CONTROL_HARD_RESET_CLIENT_V2`), key id 0.
pub const CLIENT_RESET: u8 = 7 << 3;
/// Opcode 8 (`P_CONTROL_HARD_RESET_SERVER_V2`), key id 0.
pub const SERVER_RESET: u8 = 8 << 3;

/// Size of the client's reset: opcode, session id, HMAC-SHA1, packet id and time, an empty ack
/// array, the message id.
pub const CLIENT_RESET_LEN: usize = 1 + 8 + 20 + 8 + 1 + 4;
/// Size of the reflector's answer: opcode, session id, an ack array of one (the client's
/// message 0, with its session id), the message id.
pub const SERVER_RESET_LEN: usize = 1 + 8 + 1 + 4 + 8 + 4;

/// The client's reset; `random` gives the session id and the (unchecked) HMAC and time.
pub fn client_reset(random: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(CLIENT_RESET_LEN);
    p.push(CLIENT_RESET);
    p.extend_from_slice(&random[..8]); // session id
    p.extend_from_slice(&random[8..28]); // tls-auth HMAC
    p.extend_from_slice(&[0, 0, 0, 1]); // replay packet id
    p.extend_from_slice(&random[28..32]); // time
    p.push(0); // no acks
    p.extend_from_slice(&[0, 0, 0, 0]); // message packet id 0
    p
}

/// The session id of a client reset, when `p` is one.
pub fn parse_client_reset(p: &[u8]) -> Option<[u8; 8]> {
    if p.len() != CLIENT_RESET_LEN || p[0] != CLIENT_RESET {
        return None;
    }
    p[1..9].try_into().ok()
}

/// The reflector's answer to a client with this session id; `server_session` is random.
pub fn server_reset(client_session: &[u8; 8], server_session: &[u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(SERVER_RESET_LEN);
    p.push(SERVER_RESET);
    p.extend_from_slice(server_session);
    p.push(1); // one ack
    p.extend_from_slice(&[0, 0, 0, 0]); // of the client's message 0
    p.extend_from_slice(client_session);
    p.extend_from_slice(&[0, 0, 0, 0]); // our message 0
    p
}

/// Whether `p` is a server reset acknowledging this client session.
pub fn is_server_reset_for(p: &[u8], client_session: &[u8]) -> bool {
    p.len() == SERVER_RESET_LEN
        && p[0] == SERVER_RESET
        && p[10..14] == [0; 4]
        && &p[14..22] == client_session
}

/// A packet with the two-byte length TCP puts in front.
pub fn framed(p: &[u8]) -> Vec<u8> {
    let mut out = (p.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(p);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_round_trip() {
        let c = client_reset(&[3; 32]);
        assert_eq!(c.len(), CLIENT_RESET_LEN);
        let sid = parse_client_reset(&c).unwrap();
        let s = server_reset(&sid, &[9; 8]);
        assert!(s.len() <= c.len(), "never an amplifier");
        assert!(is_server_reset_for(&s, &c[1..9]));
        assert!(!is_server_reset_for(&s, &[0; 8]));
        assert!(parse_client_reset(&[0x40; CLIENT_RESET_LEN]).is_none());
        assert_eq!(&framed(&c)[..2], &[0, CLIENT_RESET_LEN as u8]);
    }
}
