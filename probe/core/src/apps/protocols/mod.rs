//! The reflector protocols' first messages and answers, pure: shared by the probe (which sends
//! and checks) and `witness-reflector` (which answers). One module per protocol; the
//! Shadowsocks-like probe needs none (random bytes, echoed).
//!
//! Every answer is at most as large as the message it answers, so a reflector cannot be used
//! to amplify traffic towards a spoofed source (tested per protocol).

pub mod openvpn;
pub mod quic;
pub mod stun;
pub mod wireguard;

/// Most bytes a reflector echoes of a message it does not recognise: enough to prove the echo
/// is the message's, never more than the message.
pub const ECHO_MAX: usize = 64;

/// The reflector's answer to a message that is not its port's protocol: its first bytes.
pub fn echo(msg: &[u8]) -> &[u8] {
    &msg[..msg.len().min(ECHO_MAX)]
}
