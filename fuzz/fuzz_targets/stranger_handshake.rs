//! Arbitrary frames from a peer that does not hold the key, fed to the real
//! handshake machine of a keyed node (listening as primary or secondary,
//! and dialing): the input is a sequence of `kind u16 ‖ flags u16 ‖ len u16
//! ‖ payload`, each framed with a valid checksum. Never a panic, and never
//! an outcome that acts on the peer: a listener ends with nothing or
//! `Stranger`/`Failed`, a dialer with nothing or `Refused`/`Failed`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::Fingerprint;
use lockstep_replicator::auth::AuthKey;
use lockstep_replicator::protocol::{Hello, Role};
use lockstep_replicator::session::handshake::{Handshake, Outcome};
use lockstep_replicator::session::LogView;

struct EmptyLog;

impl LogView for EmptyLog {
    fn durable_end(&self) -> u64 {
        0
    }
    fn fingerprint_at(&self, position: u64) -> lockstep_engine::Result<Option<Fingerprint>> {
        Ok((position == 0).then_some(Fingerprint(0)))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(key) = AuthKey::new(b"the pair's key, which the fuzzer does not hold") else { return };
    for (role, dialer) in [(Role::Primary, false), (Role::Secondary, false), (Role::Primary, true)] {
        let ours = Hello { auth: true, ..Hello::example(role) };
        let (mut machine, _) = Handshake::start(ours, Some(key.clone()), dialer);
        let mut rest = data;
        let mut outcome = None;
        while let Some((head, tail)) = rest.split_first_chunk::<6>() {
            let kind = u16::from_le_bytes([head[0], head[1]]);
            let flags = u16::from_le_bytes([head[2], head[3]]);
            let len = usize::from(u16::from_le_bytes([head[4], head[5]])).min(tail.len());
            let (payload, after) = tail.split_at(len);
            rest = after;
            if !machine.expects(kind) {
                break; // the driver refuses it before reading the payload
            }
            let step = machine.receive(kind, flags, payload, &EmptyLog);
            if let Some(o) = step.outcome {
                outcome = Some(o);
                break;
            }
        }
        match (&outcome, dialer) {
            (None | Some(Outcome::Stranger(_)) | Some(Outcome::Failed(_)), false) => {}
            (None | Some(Outcome::Refused(_)) | Some(Outcome::Failed(_)), true) => {}
            (other, _) => panic!("a peer without the key got {other:?} from a {role:?} (dialer: {dialer})"),
        }
    }
});
