//! STUN binding (RFC 8489): the request a Snowflake client sends to its STUN servers, and the
//! success a reflector answers with. The probe never records the mapped address it is told
//! (its own public address). The request carries a PADDING attribute (RFC 5780) so that it is
//! as large as the reflector's answer: the reflector never amplifies.

/// The magic cookie.
pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Size of the probe's request.
pub const REQUEST_LEN: usize = 20 + 4 + 24;

/// A binding request with this transaction id, padded to [`REQUEST_LEN`].
pub fn binding_request(txid: &[u8; 12]) -> Vec<u8> {
    // A success for an IPv6 peer is 44 bytes: pad the request to 48.
    let mut p = vec![0x00, 0x01, 0x00, 28];
    p.extend_from_slice(&COOKIE);
    p.extend_from_slice(txid);
    p.extend_from_slice(&[0x00, 0x26, 0x00, 24]); // PADDING, 24 bytes
    p.extend_from_slice(&[0; 24]);
    p
}

/// The transaction id of a binding request.
pub fn parse_binding_request(p: &[u8]) -> Option<[u8; 12]> {
    if p.len() < 20 || p[..2] != [0x00, 0x01] || p[4..8] != COOKIE {
        return None;
    }
    let len = u16::from_be_bytes([p[2], p[3]]) as usize;
    if len + 20 != p.len() || len % 4 != 0 {
        return None;
    }
    p[8..20].try_into().ok()
}

/// A binding success with XOR-MAPPED-ADDRESS for `peer`.
pub fn binding_success(txid: &[u8; 12], peer: std::net::SocketAddr) -> Vec<u8> {
    let port = peer.port() ^ 0x2112;
    let mut attr = vec![0x00, 0x20];
    match peer.ip() {
        std::net::IpAddr::V4(ip) => {
            attr.extend_from_slice(&[0, 8, 0, 1]);
            attr.extend_from_slice(&port.to_be_bytes());
            let o = ip.octets();
            attr.extend((0..4).map(|i| o[i] ^ COOKIE[i]));
        }
        std::net::IpAddr::V6(ip) => {
            attr.extend_from_slice(&[0, 20, 0, 2]);
            attr.extend_from_slice(&port.to_be_bytes());
            let key: Vec<u8> = COOKIE.iter().chain(txid.iter()).copied().collect();
            attr.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    let mut p = vec![0x01, 0x01];
    p.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    p.extend_from_slice(&COOKIE);
    p.extend_from_slice(txid);
    p.extend_from_slice(&attr);
    p
}

/// Whether `p` is a binding success for this transaction.
pub fn is_success_for(p: &[u8], txid: &[u8; 12]) -> bool {
    p.len() >= 20 && p[..2] == [0x01, 0x01] && p[4..8] == COOKIE && &p[8..20] == txid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_round_trip_without_amplification() {
        let req = binding_request(&[4; 12]);
        assert_eq!(req.len(), REQUEST_LEN);
        let tx = parse_binding_request(&req).unwrap();
        let ok4 = binding_success(&tx, "198.51.100.1:5000".parse().unwrap());
        assert!(ok4.len() <= req.len());
        let ok6 = binding_success(&tx, "[2001:db8::1]:5000".parse().unwrap());
        assert!(ok6.len() <= req.len());
        assert!(is_success_for(&ok4, &[4; 12]));
        assert!(!is_success_for(&ok4, &[5; 12]));
        assert!(parse_binding_request(&req[..30]).is_none());
    }
}
