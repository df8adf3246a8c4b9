//! Frames of one replication connection after its Hello: sealed and opened
//! here, so that with a key every frame is authenticated. Pure: bytes in,
//! bytes or a message out.
//!
//! With a key, a frame carries [`FLAG_MAC`] and ends with an HMAC-SHA256 tag
//! over `seq (u64 LE) ‖ kind (u16 LE) ‖ payload`, under the sending side's
//! session key ([`AuthKey::session_key`]). `seq` counts the frames each side
//! sealed on this connection, from 0, and is never sent: a frame dropped,
//! replayed, reordered, altered or forged fails its tag, and the connection
//! is closed. Without a key frames carry only their checksum.
//!
//! Invariants:
//! * An opener returns a message only if its tag verified (keyed) or the
//!   frame carries no tag (unkeyed); it never skips a sequence number.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::{frame_with, Message, WireError, FLAG_MAC, MAC_LEN};

/// Why a frame was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    #[error("frame {seq} of the peer failed its authentication tag (altered, forged, replayed or out of order)")]
    BadTag { seq: u64 },
    #[error("frame {seq} of the peer carries no authentication tag on an authenticated link")]
    Untagged { seq: u64 },
    #[error("the peer sent a tagged frame on a link without a key")]
    UnexpectedTag,
    #[error(transparent)]
    Wire(#[from] WireError),
}

fn tag(key: &[u8; 32], seq: u64, kind: u16, payload: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(&seq.to_le_bytes());
    mac.update(&kind.to_le_bytes());
    mac.update(payload);
    mac
}

/// Seals the frames one side sends.
#[derive(Clone)]
pub struct Sealer {
    key: Option<[u8; 32]>,
    seq: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer {{ keyed: {}, seq: {} }}", self.key.is_some(), self.seq)
    }
}

impl Sealer {
    pub fn new(key: Option<[u8; 32]>) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// Whether frames are authenticated.
    pub fn keyed(&self) -> bool {
        self.key.is_some()
    }

    /// `message` as the next frame of this side.
    pub fn seal(&mut self, message: &Message) -> Vec<u8> {
        let (kind, payload) = message.encode_payload();
        let Some(key) = &self.key else {
            return frame_with(kind, 0, &payload, &[]);
        };
        let tag = tag(key, self.seq, kind, &payload).finalize().into_bytes();
        self.seq += 1;
        frame_with(kind, FLAG_MAC, &payload, &tag)
    }
}

/// Opens the frames the other side sends.
#[derive(Clone)]
pub struct Opener {
    key: Option<[u8; 32]>,
    seq: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener {{ keyed: {}, seq: {} }}", self.key.is_some(), self.seq)
    }
}

impl Opener {
    pub fn new(key: Option<[u8; 32]>) -> Opener {
        Opener { key, seq: 0 }
    }

    /// The message a frame (`kind`, `flags`, `payload` as read, checksum
    /// already checked) carries, if it is the next authentic one.
    pub fn open(&mut self, kind: u16, flags: u16, payload: &[u8]) -> Result<Message, ChannelError> {
        let Some(key) = &self.key else {
            if flags & FLAG_MAC != 0 {
                return Err(ChannelError::UnexpectedTag);
            }
            return Ok(Message::decode(kind, payload)?);
        };
        let seq = self.seq;
        if flags & FLAG_MAC == 0 || payload.len() < MAC_LEN {
            return Err(ChannelError::Untagged { seq });
        }
        let (body, tag_bytes) = payload.split_at(payload.len() - MAC_LEN);
        tag(key, seq, kind, body).verify_slice(tag_bytes).map_err(|_| ChannelError::BadTag { seq })?;
        self.seq += 1;
        Ok(Message::decode(kind, body)?)
    }
}

/// Both directions of one connection.
pub fn pair(send_key: Option<[u8; 32]>, recv_key: Option<[u8; 32]>) -> (Sealer, Opener) {
    (Sealer::new(send_key), Opener::new(recv_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_header_flags, FRAME_HEADER_LEN};

    fn split(frame: &[u8]) -> (u16, u16, Vec<u8>) {
        let (_, kind, flags) = decode_header_flags(frame).expect("header");
        (kind, flags, frame[FRAME_HEADER_LEN..].to_vec())
    }

    fn ack(n: u64) -> Message {
        Message::Ack { received_end: n, durable_end: n, heartbeat: 0 }
    }

    #[test]
    fn keyed_frames_open_only_in_order_unaltered_and_under_the_right_key() {
        let (k, other) = ([1u8; 32], [2u8; 32]);
        let mut sealer = Sealer::new(Some(k));
        let frames: Vec<_> = (0..3).map(|n| split(&sealer.seal(&ack(n)))).collect();

        let mut opener = Opener::new(Some(k));
        let (kind, flags, p) = &frames[0];
        assert_eq!(opener.open(*kind, *flags, p), Ok(ack(0)));
        // Replaying frame 0, or skipping to frame 2 (frame 1 dropped), fails.
        assert_eq!(opener.clone().open(*kind, *flags, p), Err(ChannelError::BadTag { seq: 1 }));
        let (kind2, flags2, p2) = &frames[2];
        assert_eq!(opener.clone().open(*kind2, *flags2, p2), Err(ChannelError::BadTag { seq: 1 }));
        // An altered payload fails; so does the right frame under another key.
        let (kind1, flags1, p1) = &frames[1];
        let mut altered = p1.clone();
        altered[0] ^= 1;
        assert_eq!(opener.clone().open(*kind1, *flags1, &altered), Err(ChannelError::BadTag { seq: 1 }));
        assert_eq!(Opener { key: Some(other), seq: 1 }.open(*kind1, *flags1, p1), Err(ChannelError::BadTag { seq: 1 }));
        // A frame without a tag (a forged plain Ack) is refused.
        let (kind, flags, plain) = split(&ack(9).encode());
        assert_eq!(opener.clone().open(kind, flags, &plain), Err(ChannelError::Untagged { seq: 1 }));
        assert_eq!(opener.open(*kind1, *flags1, p1), Ok(ack(1)));
    }

    #[test]
    fn unkeyed_frames_are_plain_and_refuse_tags() {
        let mut sealer = Sealer::new(None);
        let frame = sealer.seal(&ack(5));
        assert_eq!(frame, ack(5).encode());
        let (kind, flags, p) = split(&frame);
        assert_eq!(Opener::new(None).open(kind, flags, &p), Ok(ack(5)));
        let (kind, flags, p) = split(&Sealer::new(Some([3; 32])).seal(&ack(5)));
        assert_eq!(Opener::new(None).open(kind, flags, &p), Err(ChannelError::UnexpectedTag));
    }
}
