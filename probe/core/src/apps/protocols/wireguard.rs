//! WireGuard's handshake (Noise_IKpsk2, the WireGuard paper and wireguard.com/protocol): the
//! initiation the probe sends and the response a Witness reflector makes to an initiation from
//! *any* static key. Both sides run the whole handshake, so an answer proves a real
//! WireGuard handshake crossed the network; the reflector keeps no session after it.
//!
//! Pure: keys and randomness come from the caller. X25519 from x25519-dalek (static keys
//! reusable, which ring's are not), BLAKE2s and HMAC-BLAKE2s from RustCrypto, the AEAD
//! (ChaCha20-Poly1305) from ring, already in the tree through rustls.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use hmac::SimpleHmac;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use x25519_dalek::{PublicKey, StaticSecret};

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 92;

type Hash = [u8; 32];

fn hash(parts: &[&[u8]]) -> Hash {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Hash {
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key).expect("any key size");
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

fn kdf<const N: usize>(key: &Hash, input: &[u8]) -> [Hash; N] {
    let t0 = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut prev: Vec<u8> = Vec::new();
    for (i, o) in out.iter_mut().enumerate() {
        let counter = [i as u8 + 1];
        *o = hmac(&t0, &[&prev, &counter]);
        prev = o.to_vec();
    }
    out
}

fn mac16(key: &Hash, data: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("32-byte key");
    Update::update(&mut m, data);
    m.finalize_fixed().into()
}

fn aead_seal(key: &Hash, plain: &[u8], ad: &[u8]) -> Vec<u8> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"));
    let mut buf = plain.to_vec();
    // Counter 0: each key seals one message.
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(ad),
        &mut buf,
    )
    .expect("short message");
    buf
}

fn aead_open(key: &Hash, sealed: &[u8], ad: &[u8]) -> Option<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let mut buf = sealed.to_vec();
    let plain = k
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(ad),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

fn initial(responder: &PublicKey) -> (Hash, Hash) {
    let c = hash(&[CONSTRUCTION]);
    let h = hash(&[&c, IDENTIFIER]);
    (c, hash(&[&h, responder.as_bytes()]))
}

/// TAI64N of a fixed instant: the reflector keeps no replay state, so any timestamp is fine,
/// and a fixed one reveals nothing of the probe's clock.
const TIMESTAMP: [u8; 12] = [0x40, 0, 0, 0, 0x65, 0, 0, 0, 0, 0, 0, 0];

/// What the initiator keeps to check the response.
pub struct Initiator {
    c: Hash,
    h: Hash,
    eph: StaticSecret,
    stat: StaticSecret,
    sender: u32,
}

/// Build an initiation to `responder` from fresh keys: `random` is 68 random bytes (two
/// private keys and the sender index).
pub fn initiation(responder: &PublicKey, random: &[u8; 68]) -> (Vec<u8>, Initiator) {
    let mut k1 = [0u8; 32];
    let mut k2 = [0u8; 32];
    k1.copy_from_slice(&random[..32]);
    k2.copy_from_slice(&random[32..64]);
    let sender = u32::from_le_bytes([random[64], random[65], random[66], random[67]]);
    let eph = StaticSecret::from(k1);
    let stat = StaticSecret::from(k2);
    let eph_pub = PublicKey::from(&eph);
    let stat_pub = PublicKey::from(&stat);
    let (c, h) = initial(responder);
    let [c] = kdf::<1>(&c, eph_pub.as_bytes());
    let h = hash(&[&h, eph_pub.as_bytes()]);
    let [c, k] = kdf::<2>(&c, eph.diffie_hellman(responder).as_bytes());
    let enc_static = aead_seal(&k, stat_pub.as_bytes(), &h);
    let h = hash(&[&h, &enc_static]);
    let [c, k] = kdf::<2>(&c, stat.diffie_hellman(responder).as_bytes());
    let enc_ts = aead_seal(&k, &TIMESTAMP, &h);
    let h = hash(&[&h, &enc_ts]);
    let mut msg = Vec::with_capacity(INITIATION_LEN);
    msg.extend_from_slice(&[1, 0, 0, 0]);
    msg.extend_from_slice(&sender.to_le_bytes());
    msg.extend_from_slice(eph_pub.as_bytes());
    msg.extend_from_slice(&enc_static);
    msg.extend_from_slice(&enc_ts);
    let mac1 = mac16(&hash(&[LABEL_MAC1, responder.as_bytes()]), &msg);
    msg.extend_from_slice(&mac1);
    msg.extend_from_slice(&[0; 16]);
    debug_assert_eq!(msg.len(), INITIATION_LEN);
    (
        msg,
        Initiator {
            c,
            h,
            eph,
            stat,
            sender,
        },
    )
}

impl Initiator {
    /// Whether `msg` is the responder's valid answer to this initiation: its MAC, its indexes
    /// and its sealed empty payload all check out.
    pub fn accepts(&self, msg: &[u8]) -> bool {
        if msg.len() != RESPONSE_LEN || msg[..4] != [2, 0, 0, 0] {
            return false;
        }
        if msg[8..12] != self.sender.to_le_bytes() {
            return false;
        }
        let stat_pub = PublicKey::from(&self.stat);
        if mac16(&hash(&[LABEL_MAC1, stat_pub.as_bytes()]), &msg[..60]) != msg[60..76] {
            return false;
        }
        let mut e = [0u8; 32];
        e.copy_from_slice(&msg[12..44]);
        let e_r = PublicKey::from(e);
        let [c] = kdf::<1>(&self.c, e_r.as_bytes());
        let h = hash(&[&self.h, e_r.as_bytes()]);
        let [c] = kdf::<1>(&c, self.eph.diffie_hellman(&e_r).as_bytes());
        let [c] = kdf::<1>(&c, self.stat.diffie_hellman(&e_r).as_bytes());
        let [_, t, k] = kdf::<3>(&c, &[0u8; 32]);
        let h = hash(&[&h, &t]);
        aead_open(&k, &msg[44..60], &h).is_some_and(|p| p.is_empty())
    }
}

/// The responder's answer to an initiation from any key, or `None` when `msg` is not a valid
/// initiation to `key` (wrong size, type, MAC or sealed fields). `random` is 36 random bytes
/// (the ephemeral key and the sender index).
pub fn respond(key: &StaticSecret, msg: &[u8], random: &[u8; 36]) -> Option<Vec<u8>> {
    if msg.len() != INITIATION_LEN || msg[..4] != [1, 0, 0, 0] {
        return None;
    }
    let own = PublicKey::from(key);
    if mac16(&hash(&[LABEL_MAC1, own.as_bytes()]), &msg[..116]) != msg[116..132] {
        return None;
    }
    let mut e = [0u8; 32];
    e.copy_from_slice(&msg[8..40]);
    let e_i = PublicKey::from(e);
    let (c, h) = initial(&own);
    let [c] = kdf::<1>(&c, e_i.as_bytes());
    let h = hash(&[&h, e_i.as_bytes()]);
    let [c, k] = kdf::<2>(&c, key.diffie_hellman(&e_i).as_bytes());
    let s = aead_open(&k, &msg[40..88], &h)?;
    let s_i = PublicKey::from(<[u8; 32]>::try_from(s.as_slice()).ok()?);
    let h = hash(&[&h, &msg[40..88]]);
    let [c, k] = kdf::<2>(&c, key.diffie_hellman(&s_i).as_bytes());
    aead_open(&k, &msg[88..116], &h)?;
    let h = hash(&[&h, &msg[88..116]]);
    let mut k1 = [0u8; 32];
    k1.copy_from_slice(&random[..32]);
    let eph = StaticSecret::from(k1);
    let e_r = PublicKey::from(&eph);
    let [c] = kdf::<1>(&c, e_r.as_bytes());
    let h = hash(&[&h, e_r.as_bytes()]);
    let [c] = kdf::<1>(&c, eph.diffie_hellman(&e_i).as_bytes());
    let [c] = kdf::<1>(&c, eph.diffie_hellman(&s_i).as_bytes());
    let [_, t, k] = kdf::<3>(&c, &[0u8; 32]);
    let h = hash(&[&h, &t]);
    let empty = aead_seal(&k, &[], &h);
    let mut out = Vec::with_capacity(RESPONSE_LEN);
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&random[32..36]);
    out.extend_from_slice(&msg[4..8]);
    out.extend_from_slice(e_r.as_bytes());
    out.extend_from_slice(&empty);
    let mac1 = mac16(&hash(&[LABEL_MAC1, s_i.as_bytes()]), &out);
    out.extend_from_slice(&mac1);
    out.extend_from_slice(&[0; 16]);
    debug_assert_eq!(out.len(), RESPONSE_LEN);
    Some(out)
}

/// The public key of a private key, as a list names the reflector.
pub fn public_key(key: &StaticSecret) -> [u8; 32] {
    PublicKey::from(key).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> StaticSecret {
        StaticSecret::from([seed; 32])
    }

    #[test]
    fn handshake_completes_from_any_initiator_key() {
        let server = keys(9);
        let server_pub = PublicKey::from(&server);
        for seed in [1u8, 2, 200] {
            let (init, st) = initiation(&server_pub, &[seed; 68]);
            assert_eq!(init.len(), INITIATION_LEN);
            let resp = respond(&server, &init, &[seed ^ 0x55; 36]).expect("valid initiation");
            assert_eq!(resp.len(), RESPONSE_LEN);
            assert!(resp.len() <= init.len(), "never an amplifier");
            assert!(st.accepts(&resp));
            // A tampered answer is refused.
            let mut bad = resp.clone();
            bad[50] ^= 1;
            assert!(!st.accepts(&bad));
        }
    }

    #[test]
    fn wrong_key_or_garbage_gets_no_answer() {
        let server = keys(9);
        let other = PublicKey::from(&keys(10));
        let (init, _) = initiation(&other, &[1; 68]);
        assert!(
            respond(&server, &init, &[0; 36]).is_none(),
            "mac1 for another key"
        );
        assert!(respond(&server, &[1u8; 148], &[0; 36]).is_none());
        assert!(respond(&server, &[0u8; 10], &[0; 36]).is_none());
        let mut init = initiation(&PublicKey::from(&server), &[1; 68]).0;
        init[60] ^= 1; // sealed static key, MAC recomputed: the AEAD refuses it
        let mac1 = mac16(
            &hash(&[LABEL_MAC1, PublicKey::from(&server).as_bytes()]),
            &init[..116],
        );
        init[116..132].copy_from_slice(&mac1);
        assert!(respond(&server, &init, &[0; 36]).is_none());
    }

    #[test]
    fn blake2s_hmac_kdf_matches_rfc7693_vector() {
        // BLAKE2s-256("abc"), RFC 7693 appendix B.
        assert_eq!(
            hex::encode(hash(&[b"abc"])),
            "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
        );
    }
}
