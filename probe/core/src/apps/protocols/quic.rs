//! A QUIC ping as OONI's `quicping` (ooni/spec ts-031-quicping): a 1200-byte Initial-shaped
//! long-header packet with a version no server speaks (0xbabababa) and a random payload, which
//! a QUIC server answers with a Version Negotiation packet (RFC 9000, 17.2.1). The answer is a
//! few dozen bytes: no amplification.

/// The version that forces negotiation.
pub const PING_VERSION: u32 = 0xbaba_baba;
/// Size of the ping: RFC 9000's minimum for a client's first datagram.
pub const PING_LEN: usize = 1200;
/// The version the reflector offers.
pub const OFFERED_VERSION: u32 = 1;

/// The ping; `random` fills the connection ids (8 bytes each) and the payload.
pub fn ping(random: &[u8; PING_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PING_LEN);
    p.push(0xc0 | (random[0] & 0x0f)); // long header, fixed bit, Initial
    p.extend_from_slice(&PING_VERSION.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&random[1..9]); // destination connection id
    p.push(8);
    p.extend_from_slice(&random[9..17]); // source connection id
    p.extend_from_slice(&random[p.len()..PING_LEN]);
    p
}

/// (destination, source) connection ids of a long-header packet with a version other than
/// `OFFERED_VERSION` (which the reflector answers with version negotiation).
pub fn parse_ping(p: &[u8]) -> Option<(&[u8], &[u8])> {
    if p.len() < PING_LEN || p[0] & 0xc0 != 0xc0 {
        return None;
    }
    let version = u32::from_be_bytes(p[1..5].try_into().ok()?);
    if version == OFFERED_VERSION || version == 0 {
        return None;
    }
    let dlen = *p.get(5)? as usize;
    let dcid = p.get(6..6 + dlen)?;
    let slen = *p.get(6 + dlen)? as usize;
    let scid = p.get(7 + dlen..7 + dlen + slen)?;
    (dlen <= 20 && slen <= 20).then_some((dcid, scid))
}

/// The Version Negotiation answer: the ids swapped, version 0, [`OFFERED_VERSION`] offered.
pub fn version_negotiation(dcid: &[u8], scid: &[u8], random_bits: u8) -> Vec<u8> {
    let mut p = vec![0x80 | (random_bits & 0x7f)];
    p.extend_from_slice(&0u32.to_be_bytes());
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.extend_from_slice(&OFFERED_VERSION.to_be_bytes());
    p
}

/// Whether `p` is a Version Negotiation answering a ping with these ids.
pub fn is_version_negotiation_for(p: &[u8], ping: &[u8]) -> bool {
    let Some((dcid, scid)) = parse_ping(ping) else {
        return false;
    };
    if p.len() < 7 || p[0] & 0x80 == 0 || p[1..5] != [0; 4] {
        return false;
    }
    let dl = p[5] as usize;
    let Some(d) = p.get(6..6 + dl) else {
        return false;
    };
    let Some(&sl) = p.get(6 + dl) else {
        return false;
    };
    let Some(s) = p.get(7 + dl..7 + dl + sl as usize) else {
        return false;
    };
    let versions = &p[7 + dl + sl as usize..];
    d == scid && s == dcid && !versions.is_empty() && versions.len() % 4 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_and_negotiation() {
        let mut r = [0u8; PING_LEN];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let p = ping(&r);
        assert_eq!(p.len(), PING_LEN);
        let (d, s) = parse_ping(&p).unwrap();
        let vn = version_negotiation(d, s, 5);
        assert!(vn.len() < p.len());
        assert!(is_version_negotiation_for(&vn, &p));
        let mut other = vn.clone();
        other[7] ^= 1;
        assert!(!is_version_negotiation_for(&other, &p));
        assert!(parse_ping(&p[..100]).is_none());
    }
}
