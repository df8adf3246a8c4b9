//! The compatibility rules two nodes apply to each other's [`Hello`] on every
//! connect: a pure function from both Hellos (and, on the primary, whether
//! the secondary's log end lies on its own fingerprint chain) to a
//! [`Verdict`]. A refusal names the setting, both values and the fix.

use std::path::Path;

use lockstep_engine::{Fingerprint, Store, StoreInfo};

use crate::protocol::{Hello, PeerLoss, Role, Verdict};
use crate::session::LogView;

/// What the primary found when it looked up the secondary's log end in its
/// own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// The secondary's log is a prefix of the primary's (equal or behind).
    Prefix,
    /// The secondary holds more than the primary.
    Ahead,
    /// The primary's log at the secondary's end position has another
    /// fingerprint (or that position is not a block boundary there).
    Diverged,
    /// Not checked (the secondary judges without the primary's log).
    Unknown,
}

/// The protocol version two ranges agree on: the highest both support.
pub fn agreed_version(a: &Hello, b: &Hello) -> Option<u16> {
    let version = a.protocol_max.min(b.protocol_max);
    (version >= a.protocol_min.max(b.protocol_min)).then_some(version)
}

/// Judges the peer's Hello against ours. `history` is what the primary found
/// about the secondary's log (the secondary passes [`History::Unknown`]).
pub fn judge(ours: &Hello, peer: &Hello, history: History) -> Verdict {
    match refusal(ours, peer, history) {
        Some(reason) => Verdict::Refuse { reason },
        None => match agreed_version(ours, peer) {
            Some(version) => Verdict::Accept { version },
            None => Verdict::Refuse { reason: "protocol ranges do not overlap".into() },
        },
    }
}

fn refusal(ours: &Hello, peer: &Hello, history: History) -> Option<String> {
    let (me, them) = (ours.role.name(), peer.role.name());
    if agreed_version(ours, peer).is_none() {
        return Some(format!(
            "protocol versions do not overlap: this node ({me}, lockstep {}) speaks {}..={}, the peer ({them}, lockstep {}) \
             speaks {}..={}; run the same lockstep release on both nodes",
            ours.software_version,
            ours.protocol_min,
            ours.protocol_max,
            peer.software_version,
            peer.protocol_min,
            peer.protocol_max
        ));
    }
    if ours.format_version != peer.format_version {
        return Some(format!(
            "on-disk format versions differ: this node ({me}) uses format v{}, the peer ({them}) format v{}; \
             upgrade the older store with `lockstep upgrade` so both use the same format",
            ours.format_version, peer.format_version
        ));
    }
    if ours.store_id != peer.store_id {
        return Some(format!(
            "store ids differ: this node ({me}) holds store {}, the peer ({them}) store {}; \
             create the second site with `lockstep init DIR --store-id {}`",
            ours.store_id,
            peer.store_id,
            if ours.role == Role::Primary { ours.store_id } else { peer.store_id }
        ));
    }
    if ours.settings != peer.settings {
        return Some(format!(
            "store settings differ (segment size or checksum algorithm): this node ({me}) has settings hash {:#018x}, \
             the peer ({them}) {:#018x}; `lockstep inspect` on both shows the values — recreate the second site with \
             the first site's settings",
            ours.settings, peer.settings
        ));
    }
    if ours.auth != peer.auth {
        let (with, without) = if ours.auth { (me, them) } else { (them, me) };
        return Some(format!(
            "authentication is configured on one side only: the {with} has --auth-key-file, the {without} has none; \
             give both nodes the same key file"
        ));
    }
    if ours.role == peer.role {
        return Some(format!(
            "both nodes claim the role {me} (this node at epoch {}, the peer at epoch {}); start one of them with \
             --role {}",
            ours.epoch,
            peer.epoch,
            if ours.role == Role::Primary { "secondary" } else { "primary" }
        ));
    }
    let (primary, secondary) = if ours.role == Role::Primary { (ours, peer) } else { (peer, ours) };
    if secondary.auto_failover && primary.peer_loss != PeerLoss::Block {
        return Some(format!(
            "unsafe failover settings: the secondary runs --auto-failover (lease {} ms), but the primary runs \
             --on-peer-loss {}; both could then act alone. Run the primary with --on-peer-loss block, or the \
             secondary without --auto-failover",
            secondary.lease_ms,
            match primary.peer_loss {
                PeerLoss::Degrade { after_ms } => format!("degrade={after_ms}ms"),
                PeerLoss::Block => "block".into(),
            }
        ));
    }
    if secondary.epoch > primary.epoch {
        return Some(format!(
            "the secondary is at epoch {}, ahead of the primary at epoch {}: the secondary was promoted since; \
             restart the old primary with --role secondary so it rejoins",
            secondary.epoch, primary.epoch
        ));
    }
    match history {
        History::Prefix | History::Unknown => None,
        History::Ahead => Some(format!(
            "the secondary's log ends at position {} (fingerprint {}), beyond the primary's end {} (fingerprint {}): \
             it holds writes the primary does not. If the primary lost its last blocks in a power cut, the secondary \
             takes over (with --auto-failover, or `lockstep promote` it) and this node rejoins it when started \
             again; otherwise inspect both with `lockstep inspect` before anything is discarded",
            secondary.log_end, secondary.fingerprint, primary.log_end, primary.fingerprint
        )),
        History::Diverged => Some(format!(
            "the secondary's log (end {}, fingerprint {}) is not a prefix of the primary's (end {}, fingerprint {}): \
             the two histories diverged; compare them with `lockstep inspect` — the secondary must be rebuilt or \
             its divergent tail exported and truncated",
            secondary.log_end, secondary.fingerprint, primary.log_end, primary.fingerprint
        )),
    }
}

/// A hash of the settings both sites must share: segment size (blocks must
/// land at the same offsets) and the checksum and fingerprint algorithms.
pub fn settings_hash(info: &StoreInfo) -> u64 {
    let settings = format!("segment_size={};record_checksum=crc32;fingerprint=xxh3-128", info.segment_size);
    xxhash_rust::xxh3::xxh3_64(settings.as_bytes())
}

/// Fills in what `hello` says about `store`: its ids, epoch and epoch
/// history, durable log end and fingerprint there, settings, and whether it
/// may hold acknowledged writes its peer lacks.
pub fn describe(hello: &mut Hello, store: &Store) {
    let info = store.info();
    hello.store_id = info.store_id;
    hello.node_id = info.node_id;
    hello.epoch = info.epoch;
    hello.log_end = info.durable_end;
    hello.fingerprint = info.fingerprint;
    hello.settings = settings_hash(&info);
    hello.unreplicated_acks = store.unreplicated_acks();
    hello.epochs = store.epoch_history();
}

/// Divergence point with a secondary of an older epoch: where the first
/// epoch the secondary does not know began in this primary's history.
pub fn divergence_point(primary: &Hello, secondary: &Hello) -> Option<u64> {
    if secondary.epoch >= primary.epoch {
        return None;
    }
    primary.epochs.iter().find(|e| e.epoch > secondary.epoch).map(|e| e.start_position)
}

/// Where the secondary's log stands against the primary's `store`.
pub fn history(store: &dyn LogView, peer: &Hello) -> lockstep_engine::Result<History> {
    if peer.log_end > store.durable_end() {
        return Ok(History::Ahead);
    }
    Ok(match store.fingerprint_at(peer.log_end)? {
        Some(f) if f == peer.fingerprint => History::Prefix,
        _ => History::Diverged,
    })
}

/// The verdict a primary (`ours`, holding `store`) gives a secondary's
/// Hello: [`judge`]'s, except that a compatible secondary of an older epoch
/// holding a tail after the point where a newer epoch began here is told to
/// rejoin from there.
pub fn primary_verdict(store: &dyn LogView, ours: &Hello, peer: &Hello) -> lockstep_engine::Result<Verdict> {
    let mut rejoin = None;
    let history = match divergence_point(ours, peer) {
        Some(position) if peer.log_end > position => {
            rejoin = store.fingerprint_at(position)?.map(|fingerprint| Verdict::Rejoin { position, fingerprint });
            History::Prefix
        }
        _ => history(store, peer)?,
    };
    Ok(match (judge(ours, peer, history), rejoin) {
        (Verdict::Accept { .. }, Some(rejoin)) => rejoin,
        (verdict, _) => verdict,
    })
}

/// (On a secondary holding `store`, whose Hello is `ours`.) Whether the
/// primary of the same epoch is behind this log with its log a strict
/// prefix of it: the primary lost blocks this node holds (it ships a block
/// before writing it, and a power cut hit that write). None of them was
/// acknowledged — the primary answers only after its own write — and this
/// node holds everything the primary has: it should take over.
pub fn primary_lost_blocks(store: &dyn LogView, ours: &Hello, primary: &Hello) -> bool {
    primary.role == Role::Primary
        && ours.role == Role::Secondary
        && primary.epoch == ours.epoch
        && primary.log_end < ours.log_end
        && store.fingerprint_at(primary.log_end).ok().flatten() == Some(primary.fingerprint)
}

/// Whether a node told to rejoin from `position` may cut its log there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejoinCheck {
    /// The logs agree up to `position` and nothing after it was acknowledged.
    Allowed,
    /// The logs differ before `position`: the site must be rebuilt.
    Diverged(String),
    /// The tail may hold writes this node acknowledged alone: split brain.
    SplitBrain(String),
}

/// Checks a Rejoin verdict from `primary` against this node's `store` (in
/// `dir`, named in the advice) before anything is cut.
pub fn check_rejoin(
    store: &Store,
    dir: &Path,
    primary: &Hello,
    position: u64,
    fingerprint: Fingerprint,
) -> RejoinCheck {
    let ours = match store.fingerprint_at(position) {
        Ok(f) => f,
        Err(e) => return RejoinCheck::Diverged(format!("reading this node's log at position {position}: {e}")),
    };
    if ours != Some(fingerprint) {
        return RejoinCheck::Diverged(format!(
            "the logs differ before position {position}, where the primary's epoch {} began: the primary's \
             fingerprint there is {fingerprint}, this node's {}; rebuild this site from the primary",
            primary.epoch,
            ours.map_or_else(|| "none (not a block boundary)".to_string(), |f| f.to_string())
        ));
    }
    if store.unreplicated_acks() {
        return RejoinCheck::SplitBrain(format!(
            "split brain: this node's log holds {} bytes after position {position}, where {} became primary at \
             epoch {}, and this node may have acknowledged some of them alone (it ran degraded, received or \
             async); nothing was changed — export and drop them with `lockstep rejoin {} --export FILE`, then \
             start this node again",
            store.info().log_end - position,
            primary.node_id,
            primary.epoch,
            dir.display()
        ));
    }
    RejoinCheck::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PeerLoss, PROTOCOL_VERSION};
    use lockstep_engine::StoreId;

    fn node(role: Role) -> Hello {
        Hello::example(role)
    }

    fn refused(ours: &Hello, peer: &Hello, history: History) -> String {
        match judge(ours, peer, history) {
            Verdict::Refuse { reason } => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn matching_nodes_agree_on_the_highest_common_version() {
        let (p, mut s) = (node(Role::Primary), node(Role::Secondary));
        assert_eq!(judge(&p, &s, History::Prefix), Verdict::Accept { version: PROTOCOL_VERSION });
        s.protocol_max = PROTOCOL_VERSION + 1; // one version newer, range still overlaps
        assert_eq!(judge(&p, &s, History::Prefix), Verdict::Accept { version: PROTOCOL_VERSION });
        assert_eq!(judge(&s, &p, History::Unknown), Verdict::Accept { version: PROTOCOL_VERSION });
    }

    #[test]
    fn each_mismatch_is_refused_naming_both_values() {
        let p = node(Role::Primary);
        let mut s = node(Role::Secondary);
        s.protocol_min = PROTOCOL_VERSION + 1;
        s.protocol_max = PROTOCOL_VERSION + 2;
        let reason = refused(&p, &s, History::Prefix);
        assert!(
            reason.contains("do not overlap")
                && reason.contains(&format!("{}..={}", PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2))
        );

        let mut s = node(Role::Secondary);
        s.format_version = 2;
        let reason = refused(&p, &s, History::Prefix);
        assert!(reason.contains("format v1") && reason.contains("format v2"), "{reason}");

        let mut s = node(Role::Secondary);
        s.store_id = StoreId([2; 16]);
        let reason = refused(&p, &s, History::Prefix);
        assert!(reason.contains(&p.store_id.to_string()) && reason.contains(&s.store_id.to_string()), "{reason}");

        let mut s = node(Role::Secondary);
        s.settings = 43;
        assert!(refused(&p, &s, History::Prefix).contains("settings differ"));

        let mut s = node(Role::Secondary);
        s.auth = true;
        assert!(refused(&p, &s, History::Prefix).contains("one side only"));

        let s = node(Role::Primary);
        assert!(refused(&p, &s, History::Prefix).contains("both nodes claim the role primary"));

        let mut s = node(Role::Secondary);
        s.epoch = 2;
        assert!(refused(&p, &s, History::Prefix).contains("epoch 2"));
    }

    #[test]
    fn a_secondary_that_is_not_a_prefix_is_refused() {
        let (p, s) = (node(Role::Primary), node(Role::Secondary));
        assert!(refused(&p, &s, History::Diverged).contains("not a prefix"));
        assert!(refused(&p, &s, History::Ahead).contains("beyond the primary's end"));
    }

    #[test]
    fn auto_failover_needs_a_primary_that_blocks() {
        let (mut p, mut s) = (node(Role::Primary), node(Role::Secondary));
        s.auto_failover = true;
        assert!(matches!(judge(&p, &s, History::Prefix), Verdict::Accept { .. }));
        p.peer_loss = PeerLoss::Degrade { after_ms: 2000 };
        let reason = refused(&p, &s, History::Prefix);
        assert!(reason.contains("--auto-failover") && reason.contains("degrade=2000ms"), "{reason}");
        assert_eq!(reason, refused(&s, &p, History::Unknown), "both sides must give the same reason");
    }
}
