//! Arbitrary bytes as the payload of a peer's Hello, judged by a primary and by a
//! secondary under every history the primary can find: never a panic, a
//! refusal always says why, and an acceptance only when every rule holds
//! (overlapping protocol ranges, same format, store, settings and auth
//! setting, opposite roles, safe failover settings, a prefix log).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_replicator::handshake::{agreed_version, judge, History};
use lockstep_replicator::protocol::{Hello, Message, PeerLoss, Role, Verdict, KIND_HELLO};

fuzz_target!(|data: &[u8]| {
    let Ok(Message::Hello(peer)) = Message::decode(KIND_HELLO, data) else { return };
    for ours in [Hello::example(Role::Primary), Hello::example(Role::Secondary)] {
        for history in [History::Prefix, History::Ahead, History::Diverged, History::Unknown] {
            match judge(&ours, &peer, history) {
                Verdict::Accept { version } => {
                    assert_eq!(agreed_version(&ours, &peer), Some(version));
                    assert!(version >= ours.protocol_min && version <= ours.protocol_max);
                    assert!(version >= peer.protocol_min && version <= peer.protocol_max);
                    assert_eq!(ours.format_version, peer.format_version);
                    assert_eq!(ours.store_id, peer.store_id);
                    assert_eq!(ours.settings, peer.settings);
                    assert_eq!(ours.auth, peer.auth);
                    assert_ne!(ours.role, peer.role);
                    assert!(matches!(history, History::Prefix | History::Unknown));
                    let (primary, secondary) = if ours.role == Role::Primary { (&ours, &peer) } else { (&peer, &ours) };
                    assert!(!secondary.auto_failover || primary.peer_loss == PeerLoss::Block);
                    assert!(secondary.epoch <= primary.epoch);
                }
                Verdict::Refuse { reason } => assert!(!reason.is_empty()),
                Verdict::Rejoin { .. } => panic!("judge answers accept or refuse only"),
            }
        }
    }
});
