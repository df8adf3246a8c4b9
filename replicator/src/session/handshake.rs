//! The handshake of one replication connection as a state machine:
//! both sides send Hello, then Auth (a proof over the transcript of both
//! Hellos), then their Verdict (sealed under the session keys). The machine
//! only returns frames to send and, at the end, an [`Outcome`]; it changes
//! nothing itself, and an outcome that would change the node's state
//! (demotion, rejoin, a refusal that stops it) comes only from a peer that
//! authenticated — or from any peer when no key is configured.
//!
//! Invariants:
//! * With a key, a peer whose proof did not verify ends as
//!   [`Outcome::Stranger`] on the listening side (nothing changes) and as
//!   [`Outcome::Refused`] on the dialing side (its configured peer does not
//!   hold the key: a configuration error the operator must see).
//! * A Rejoin verdict is obeyed only from a primary, by a secondary.
//! * Frames are bounded by kind before they are read ([`Handshake::expects`]).

use lockstep_engine::Fingerprint;

use crate::auth::{transcript, AuthKey};
use crate::handshake::{judge, primary_lost_blocks, primary_verdict, History};
use crate::protocol::{
    Hello, Message, Role, Verdict, FRAME_HEADER_LEN, KIND_AUTH, KIND_HELLO, KIND_VERDICT, PROOF_LEN,
};
use crate::session::channel::{pair, Opener, Sealer};
use crate::session::LogView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Hello,
    Auth,
    Verdict,
    Done,
}

/// How a handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides accepted: the link is up (see [`Handshake::into_channel`]).
    Accepted,
    /// This node refused the peer (a real mismatch, named in the reason),
    /// or — dialing — its peer could not authenticate.
    Refused(String),
    /// The (authenticated) peer refused this node.
    PeerRefused(String),
    /// (Secondary.) The primary refused this node because it lost blocks
    /// this node holds (see `handshake::primary_lost_blocks`).
    PrimaryBehind(String),
    /// (Secondary, told by its primary.) Cut the tail after `position`,
    /// where the primary's fingerprint is `fingerprint`, to rejoin.
    Rejoin { position: u64, fingerprint: Fingerprint },
    /// (Primary.) The peer was told to rejoin from `position`.
    PeerRejoins { position: u64 },
    /// Both are primaries of one store and the peer's epoch is newer: this
    /// node was replaced and steps down.
    StepDown,
    /// Both are primaries of one store and this node's epoch is newer.
    PeerStepsDown,
    /// (Listening, with a key.) The peer did not authenticate: nothing it
    /// said is acted on.
    Stranger(String),
    /// The connection failed (unreadable frames, a failed tag, reading this
    /// node's log): try again.
    Failed(String),
}

/// What one received frame produced: frames to send, and the outcome once
/// the handshake is over.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Vec<u8>>,
    pub outcome: Option<Outcome>,
}

/// One connection's handshake.
#[derive(Debug)]
pub struct Handshake {
    ours: Hello,
    our_payload: Vec<u8>,
    key: Option<AuthKey>,
    dialer: bool,
    phase: Phase,
    peer: Option<Hello>,
    transcript: [u8; 32],
    trusted: bool,
    verdict: Option<Verdict>,
    sealer: Sealer,
    opener: Opener,
}

impl Handshake {
    /// Begins a handshake as the side that dialed (`dialer`) or accepted.
    /// `ours.auth` must say whether `key` is set. Returns the machine and
    /// the Hello frame to send first.
    pub fn start(ours: Hello, key: Option<AuthKey>, dialer: bool) -> (Handshake, Vec<u8>) {
        debug_assert_eq!(ours.auth, key.is_some());
        let hello = Message::Hello(ours.clone()).encode();
        let our_payload = hello[FRAME_HEADER_LEN..].to_vec();
        let (sealer, opener) = pair(None, None);
        let machine = Handshake {
            ours,
            our_payload,
            key,
            dialer,
            phase: Phase::Hello,
            peer: None,
            transcript: [0; 32],
            trusted: false,
            verdict: None,
            sealer,
            opener,
        };
        (machine, hello)
    }

    /// The peer's Hello, once received. Trust it only after an outcome
    /// other than [`Outcome::Stranger`].
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }

    /// This node's Hello.
    pub fn ours(&self) -> &Hello {
        &self.ours
    }

    /// Whether a frame of `kind` may come now (others are refused before
    /// their payload is read).
    pub fn expects(&self, kind: u16) -> bool {
        match self.phase {
            Phase::Hello => kind == KIND_HELLO,
            Phase::Auth => kind == KIND_AUTH,
            Phase::Verdict => kind == KIND_VERDICT,
            Phase::Done => false,
        }
    }

    /// The frame sealer and opener of the established link.
    pub fn into_channel(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }

    fn done(&mut self, step: &mut Step, outcome: Outcome) {
        self.phase = Phase::Done;
        step.outcome = Some(outcome);
    }

    /// Takes the next frame from the peer (`log` is this node's log).
    pub fn receive(&mut self, kind: u16, flags: u16, payload: &[u8], log: &dyn LogView) -> Step {
        let mut step = Step::default();
        if !self.expects(kind) {
            let what = format!("the peer sent a frame of kind {kind} during the handshake ({:?} expected)", self.phase);
            self.unintelligible(&mut step, what);
            return step;
        }
        match self.phase {
            Phase::Hello => self.on_hello(&mut step, flags, payload),
            Phase::Auth => self.on_auth(&mut step, flags, payload, log),
            Phase::Verdict => self.on_verdict(&mut step, flags, payload, log),
            Phase::Done => {}
        }
        step
    }

    /// Bytes that are not a handshake: a stranger to a listener, a failed
    /// connection to a dialer.
    fn unintelligible(&mut self, step: &mut Step, what: String) {
        let outcome = if self.dialer || self.key.is_none() { Outcome::Failed(what) } else { Outcome::Stranger(what) };
        self.done(step, outcome);
    }

    fn on_hello(&mut self, step: &mut Step, flags: u16, payload: &[u8]) {
        let peer = match (flags, Message::decode(KIND_HELLO, payload)) {
            (0, Ok(Message::Hello(peer))) => peer,
            (_, Err(e)) => return self.unintelligible(step, format!("the peer's Hello does not decode: {e}")),
            _ => return self.unintelligible(step, "the peer's Hello carries flags".into()),
        };
        self.transcript =
            if self.dialer { transcript(&self.our_payload, payload) } else { transcript(payload, &self.our_payload) };
        let proof = self.key.as_ref().map_or([0u8; PROOF_LEN], |k| k.proof(&self.transcript, self.dialer));
        if let Some(key) = self.key.as_ref().filter(|_| peer.auth) {
            let keys =
                (key.session_key(&self.transcript, self.dialer), key.session_key(&self.transcript, !self.dialer));
            (self.sealer, self.opener) = pair(Some(keys.0), Some(keys.1));
        }
        self.peer = Some(peer);
        self.phase = Phase::Auth;
        step.send.push(Message::Auth { proof }.encode());
    }

    fn on_auth(&mut self, step: &mut Step, flags: u16, payload: &[u8], log: &dyn LogView) {
        let proof = match (flags, Message::decode(KIND_AUTH, payload)) {
            (0, Ok(Message::Auth { proof })) => proof,
            _ => return self.unintelligible(step, "the peer's Auth does not decode".into()),
        };
        let Some(peer) = self.peer.clone() else { return };
        self.trusted = match &self.key {
            None => true,
            Some(key) => peer.auth && key.verify(&proof, &self.transcript, !self.dialer),
        };
        if !self.trusted {
            let reason = match (&self.key, judge(&self.ours, &peer, History::Unknown)) {
                (_, Verdict::Refuse { reason }) if !peer.auth => reason,
                (key, _) => format!(
                    "authentication failed: the peer ({} {}) does not hold this node's key (key id {}); give both \
                     nodes the same --auth-key-file",
                    peer.role.name(),
                    peer.node_id,
                    key.as_ref().map_or_else(String::new, AuthKey::key_id)
                ),
            };
            step.send.push(self.sealer.seal(&Message::Verdict(Verdict::Refuse { reason: reason.clone() })));
            let outcome = if self.dialer { Outcome::Refused(reason) } else { Outcome::Stranger(reason) };
            return self.done(step, outcome);
        }
        // Two primaries of one store: the one of the older epoch was
        // replaced. Both see both Hellos, so both conclude alike.
        let (ours, theirs) = (&self.ours, &peer);
        if ours.role == Role::Primary
            && theirs.role == Role::Primary
            && ours.store_id == theirs.store_id
            && ours.epoch != theirs.epoch
        {
            let outcome = if theirs.epoch > ours.epoch { Outcome::StepDown } else { Outcome::PeerStepsDown };
            return self.done(step, outcome);
        }
        let verdict = if ours.role == Role::Primary && theirs.role == Role::Secondary {
            match primary_verdict(log, ours, theirs) {
                Ok(v) => v,
                Err(e) => return self.done(step, Outcome::Failed(format!("reading this node's log: {e}"))),
            }
        } else {
            judge(ours, theirs, History::Unknown)
        };
        step.send.push(self.sealer.seal(&Message::Verdict(verdict.clone())));
        self.verdict = Some(verdict);
        self.phase = Phase::Verdict;
    }

    fn on_verdict(&mut self, step: &mut Step, flags: u16, payload: &[u8], log: &dyn LogView) {
        let theirs = match self.opener.open(KIND_VERDICT, flags, payload) {
            Ok(Message::Verdict(v)) => v,
            Ok(_) => return self.done(step, Outcome::Failed("the peer's verdict is not a Verdict".into())),
            Err(e) => return self.done(step, Outcome::Failed(format!("the peer's verdict: {e}"))),
        };
        let (Some(peer), Some(mine)) = (self.peer.clone(), self.verdict.clone()) else { return };
        let ours = &self.ours;
        let outcome = match (mine, theirs) {
            (Verdict::Refuse { reason }, _) => Outcome::Refused(reason),
            (_, Verdict::Refuse { reason }) if primary_lost_blocks(log, ours, &peer) => {
                Outcome::PrimaryBehind(format!(
                    "the primary's log ends at {} in epoch {}, before this node's ({}): it lost blocks it had \
                     shipped (a power cut during its write); none was acknowledged, and this node holds everything \
                     the primary has — {} (the primary said: {reason})",
                    peer.log_end,
                    peer.epoch,
                    ours.log_end,
                    if ours.auto_failover {
                        "it promotes itself after the lease"
                    } else {
                        "promote it with `lockstep promote`"
                    }
                ))
            }
            (_, Verdict::Refuse { reason }) => Outcome::PeerRefused(reason),
            (Verdict::Rejoin { position, .. }, _) => Outcome::PeerRejoins { position },
            (_, Verdict::Rejoin { position, fingerprint })
                if ours.role == Role::Secondary && peer.role == Role::Primary =>
            {
                Outcome::Rejoin { position, fingerprint }
            }
            (_, Verdict::Rejoin { .. }) => {
                Outcome::Failed(format!("the peer ({}) told this {} to rejoin", peer.role.name(), ours.role.name()))
            }
            (Verdict::Accept { .. }, Verdict::Accept { .. }) => Outcome::Accepted,
        };
        self.done(step, outcome);
    }
}

/// A frame's kind, flags and payload (for drivers that hold whole frames).
pub fn parts(frame_bytes: &[u8]) -> Option<(u16, u16, &[u8])> {
    crate::protocol::decode_frame_flags(frame_bytes).ok()
}

/// Runs two handshakes against each other to the end, passing every frame
/// through the codec (for the simulator and tests): the dialer's and the
/// listener's outcomes. `tamper` may change each frame on the way (an
/// attacker on the path); it gets the sender (`true`: the dialer).
pub fn run_pair(
    dialer: (&mut Handshake, Vec<u8>, &dyn LogView),
    listener: (&mut Handshake, Vec<u8>, &dyn LogView),
    tamper: &mut dyn FnMut(bool, &mut Vec<u8>),
) -> (Option<Outcome>, Option<Outcome>) {
    let (d, l) = (dialer.0, listener.0);
    let (mut to_listener, mut to_dialer) = (vec![dialer.1], vec![listener.1]);
    let (mut d_out, mut l_out) = (None, None);
    for _ in 0..8 {
        if to_listener.is_empty() && to_dialer.is_empty() {
            break;
        }
        for mut f in std::mem::take(&mut to_listener) {
            tamper(true, &mut f);
            if l_out.is_none() {
                if let Some((kind, flags, payload)) = parts(&f) {
                    let step = l.receive(kind, flags, payload, listener.2);
                    to_dialer.extend(step.send);
                    l_out = l_out.or(step.outcome);
                }
            }
        }
        for mut f in std::mem::take(&mut to_dialer) {
            tamper(false, &mut f);
            if d_out.is_none() {
                if let Some((kind, flags, payload)) = parts(&f) {
                    let step = d.receive(kind, flags, payload, dialer.2);
                    to_listener.extend(step.send);
                    d_out = d_out.or(step.outcome);
                }
            }
        }
    }
    (d_out, l_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Hello, Role};

    /// An empty log at epoch 1 (what `Hello::example` describes).
    struct EmptyLog;
    impl LogView for EmptyLog {
        fn durable_end(&self) -> u64 {
            0
        }
        fn fingerprint_at(&self, position: u64) -> lockstep_engine::Result<Option<Fingerprint>> {
            Ok((position == 0).then_some(Fingerprint(0)))
        }
    }

    fn key(k: &str) -> Option<AuthKey> {
        Some(AuthKey::new(format!("{k}-0123456789abcdef").as_bytes()).expect("key"))
    }

    fn hello(role: Role, key: &Option<AuthKey>) -> Hello {
        let mut h = Hello::example(role);
        h.auth = key.is_some();
        h.nonce = [role as u8 + 40; 16];
        h
    }

    /// Runs a primary (dialer) against a secondary (listener).
    fn handshake(
        p: Hello,
        pk: Option<AuthKey>,
        s: Hello,
        sk: Option<AuthKey>,
        tamper: &mut dyn FnMut(bool, &mut Vec<u8>),
    ) -> ((Option<Outcome>, Handshake), (Option<Outcome>, Handshake)) {
        let (mut d, df) = Handshake::start(p, pk, true);
        let (mut l, lf) = Handshake::start(s, sk, false);
        let (a, b) = run_pair((&mut d, df, &EmptyLog), (&mut l, lf, &EmptyLog), tamper);
        ((a, d), (b, l))
    }

    #[test]
    fn the_same_key_authenticates_and_seals_every_later_frame() {
        let k = key("same");
        let ((po, p), (so, s)) =
            handshake(hello(Role::Primary, &k), k.clone(), hello(Role::Secondary, &k), k.clone(), &mut |_, _| {});
        assert_eq!((po, so), (Some(Outcome::Accepted), Some(Outcome::Accepted)));
        let ((mut p_seal, _), (_, mut s_open)) = (p.into_channel(), s.into_channel());
        assert!(p_seal.keyed());
        let ack =
            Message::Heartbeat { log_end: 1, fingerprint: Fingerprint(2), commit_position: 0, time_ms: 3, seq: 1 };
        let f = p_seal.seal(&ack);
        let (kind, flags, payload) = parts(&f).expect("frame");
        assert_eq!(s_open.open(kind, flags, payload), Ok(ack));
    }

    #[test]
    fn without_keys_both_accept_and_frames_stay_plain() {
        let ((po, p), (so, _)) =
            handshake(hello(Role::Primary, &None), None, hello(Role::Secondary, &None), None, &mut |_, _| {});
        assert_eq!((po, so), (Some(Outcome::Accepted), Some(Outcome::Accepted)));
        assert!(!p.into_channel().0.keyed());
    }

    /// Reported from outside: a Hello claiming a higher epoch, sent to a
    /// primary's --repl port before any proof, demoted it.
    #[test]
    fn a_stranger_claiming_a_newer_epoch_does_not_demote_a_primary() {
        let k = key("real");
        let mut forged = hello(Role::Primary, &key("guess"));
        forged.epoch = 9;
        forged.epochs.push(lockstep_engine::EpochStart { epoch: 9, start_position: 0 });
        // The stranger dials the primary, with a wrong key or none.
        for stranger_key in [key("guess"), None] {
            let (mut d, df) =
                Handshake::start(Hello { auth: stranger_key.is_some(), ..forged.clone() }, stranger_key, true);
            let (mut l, lf) = Handshake::start(hello(Role::Primary, &k), k.clone(), false);
            let (_, outcome) = run_pair((&mut d, df, &EmptyLog), (&mut l, lf, &EmptyLog), &mut |_, _| {});
            assert!(matches!(outcome, Some(Outcome::Stranger(_))), "{outcome:?}");
        }
        // The same Hello from a holder of the key: a real newer primary.
        let (mut d, df) = Handshake::start(Hello { auth: true, ..forged }, k.clone(), true);
        let (mut l, lf) = Handshake::start(hello(Role::Primary, &k), k, false);
        let (theirs, ours) = run_pair((&mut d, df, &EmptyLog), (&mut l, lf, &EmptyLog), &mut |_, _| {});
        assert_eq!((theirs, ours), (Some(Outcome::PeerStepsDown), Some(Outcome::StepDown)));
    }

    /// Reported from outside: a relay rewrote the secondary's lease_ms
    /// (the proof did not cover it). Any altered Hello byte now fails both
    /// proofs: the dialer refuses, the listener ignores a stranger.
    #[test]
    fn a_relay_that_alters_a_hello_field_fails_authentication() {
        let k = key("same");
        let mut first = true;
        let mut alter_lease = |from_dialer: bool, f: &mut Vec<u8>| {
            if !from_dialer && first {
                first = false;
                let mut s = hello(Role::Secondary, &k);
                s.lease_ms = crate::protocol::LEASE_MS_MAX;
                *f = Message::Hello(s).encode();
            }
        };
        let ((po, _), (so, _)) =
            handshake(hello(Role::Primary, &k), k.clone(), hello(Role::Secondary, &k), k.clone(), &mut alter_lease);
        assert!(matches!(&po, Some(Outcome::Refused(r)) if r.contains("authentication failed")), "{po:?}");
        assert!(matches!(so, Some(Outcome::Stranger(_))), "{so:?}");
    }

    #[test]
    fn a_relay_that_alters_or_forges_a_verdict_is_caught_by_its_tag() {
        let k = key("same");
        // The secondary's sealed Accept replaced by a plain Refuse.
        let mut forge = |from_dialer: bool, f: &mut Vec<u8>| {
            if !from_dialer && parts(f).is_some_and(|(kind, _, _)| kind == KIND_VERDICT) {
                *f = Message::Verdict(Verdict::Refuse { reason: "forged".into() }).encode();
            }
        };
        let ((po, _), (so, _)) =
            handshake(hello(Role::Primary, &k), k.clone(), hello(Role::Secondary, &k), k.clone(), &mut forge);
        assert!(matches!(&po, Some(Outcome::Failed(r)) if r.contains("authentication tag")), "{po:?}");
        assert_eq!(so, Some(Outcome::Accepted));
    }

    #[test]
    fn wrong_keys_and_a_key_on_one_side_are_refused_by_the_dialer() {
        let (a, b) = (key("a"), key("b"));
        let ((po, _), (so, _)) =
            handshake(hello(Role::Primary, &a), a.clone(), hello(Role::Secondary, &b), b, &mut |_, _| {});
        assert!(matches!(&po, Some(Outcome::Refused(r)) if r.contains("authentication failed")), "{po:?}");
        assert!(matches!(&so, Some(Outcome::Stranger(r)) if r.contains("authentication failed")), "{so:?}");
        // Key on the primary only: both name the one-sided configuration;
        // the keyless secondary trusts its peer, so the refusal is real.
        let ((po, _), (so, _)) =
            handshake(hello(Role::Primary, &a), a, hello(Role::Secondary, &None), None, &mut |_, _| {});
        assert!(matches!(&po, Some(Outcome::Refused(r)) if r.contains("one side only")), "{po:?}");
        assert!(matches!(&so, Some(Outcome::Refused(r)) if r.contains("one side only")), "{so:?}");
    }

    #[test]
    fn a_mismatch_between_authenticated_peers_is_a_refusal_on_both_sides() {
        let k = key("same");
        let mut s = hello(Role::Secondary, &k);
        s.format_version += 1;
        let ((po, _), (so, _)) = handshake(hello(Role::Primary, &k), k.clone(), s, k, &mut |_, _| {});
        assert!(matches!(&po, Some(Outcome::Refused(r)) if r.contains("format")), "{po:?}");
        assert!(matches!(&so, Some(Outcome::Refused(r)) if r.contains("format")), "{so:?}");
    }

    /// A Rejoin verdict tells a node to cut its log: only a primary may
    /// send it, only a secondary obeys.
    #[test]
    fn a_rejoin_verdict_from_a_secondary_is_not_obeyed() {
        let mut forge = |from_dialer: bool, f: &mut Vec<u8>| {
            if !from_dialer && parts(f).is_some_and(|(kind, _, _)| kind == KIND_VERDICT) {
                *f = Message::Verdict(Verdict::Rejoin { position: 0, fingerprint: Fingerprint(0) }).encode();
            }
        };
        let ((po, _), _) =
            handshake(hello(Role::Primary, &None), None, hello(Role::Secondary, &None), None, &mut forge);
        assert!(matches!(&po, Some(Outcome::Failed(r)) if r.contains("told this primary to rejoin")), "{po:?}");
    }

    #[test]
    fn garbage_before_the_hello_is_a_stranger_to_a_keyed_listener() {
        let k = key("same");
        let (mut l, _) = Handshake::start(hello(Role::Secondary, &k), k, false);
        let step = l.receive(crate::protocol::KIND_ACK, 0, &[0; 24], &EmptyLog);
        assert!(matches!(step.outcome, Some(Outcome::Stranger(_))), "{:?}", step.outcome);
        assert!(step.send.is_empty());
    }
}
