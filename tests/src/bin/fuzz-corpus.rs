//! Writes the seed corpora of the fuzz targets (fuzz/corpus/TARGET/*) from
//! real encoded data: stores written through the engine on the simulated
//! disk, and every kind of wire frame. Run from the repository root:
//! `cargo run -p lockstep-tests --bin fuzz-corpus -- fuzz/corpus`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lockstep_engine::format::{
    block_seed, record_len, record_seed, segment_file_name, verify_block, StoreId, SEGMENT_HEADER_REGION,
    SEGMENT_SIZE_MIN, SUPERBLOCK_FILE,
};
use lockstep_engine::sim::SimStorage;
use lockstep_engine::{Fingerprint, Options, Store, WriteBatch};
use lockstep_replicator::protocol::{
    Hello, Message, PeerLoss, Request, Response, Role, Verdict, FRAME_HEADER_LEN, PROOF_LEN,
};

const STORE: StoreId = StoreId([1; 16]);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A store on a fresh simulated disk, after `writes` (one commit block each).
fn store(writes: &[WriteBatch], promote: bool) -> Result<(SimStorage, Store)> {
    let sim = SimStorage::new(1);
    let options = Options {
        segment_size: SEGMENT_SIZE_MIN,
        store_id: Some(STORE),
        storage: Arc::new(sim.machine()),
        ..Options::default()
    };
    let store = Store::open("/corpus", options)?;
    for (i, batch) in writes.iter().enumerate() {
        if promote && i == writes.len() / 2 {
            store.promote()?;
        }
        store.write(batch.clone())?;
    }
    Ok((sim, store))
}

fn batches() -> Vec<(&'static str, WriteBatch)> {
    let mut many = WriteBatch::new();
    many.put("user/1", "ada").put("user/2", "grace").delete("user/0").put("empty", "");
    let mut large = WriteBatch::new();
    large.put("blob", vec![0xa5; 3000]);
    let mut one = WriteBatch::new();
    one.put("k", "v");
    let mut delete = WriteBatch::new();
    delete.delete("k");
    vec![("one-put", one), ("batch", many), ("large-value", large), ("delete", delete)]
}

/// A frame as the wire_messages target takes it: kind (LE u16) ‖ payload.
fn unframed(frame: &[u8]) -> Vec<u8> {
    [&frame[4..6], &frame[FRAME_HEADER_LEN..]].concat()
}

/// A frame as one client_stream chunk: kind (LE u16) ‖ length (LE u16) ‖ payload.
fn chunk(frame: &[u8]) -> Vec<u8> {
    let len = (frame.len() - FRAME_HEADER_LEN) as u16;
    [&frame[4..6], &len.to_le_bytes()[..], &frame[FRAME_HEADER_LEN..]].concat()
}

struct Corpus(PathBuf);

impl Corpus {
    fn add(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        Ok(())
    }
}

fn main() -> Result<()> {
    let out = std::env::args().nth(1).ok_or("usage: fuzz-corpus OUT_DIR (fuzz/corpus)")?;
    let corpus = Corpus(PathBuf::from(out));
    let all: Vec<WriteBatch> = batches().into_iter().map(|(_, b)| b).collect();
    let seed = record_seed(&STORE);

    // A store's first block, and every record in it, for each write shape.
    for (name, batch) in batches() {
        let (_, s) = store(std::slice::from_ref(&batch), false)?;
        let block = s.read_blocks(0, usize::MAX)?.remove(0).bytes;
        corpus.add("verify_block", name, &[&STORE.0[..], &block].concat())?;
        let verified = verify_block(&block, 0, block_seed(&STORE, 0, 0), seed, None)?;
        for (i, (offset, record)) in verified.records.iter().enumerate() {
            let encoded = &block[*offset..offset + record_len(record.key.len(), record.value.len())];
            corpus.add("decode_record", &format!("{name}-{i}"), &[&seed.to_le_bytes()[..], encoded].concat())?;
        }
    }

    // Superblocks and segment data areas of whole stores.
    for (name, promote) in [("fresh", false), ("promoted", true)] {
        let (sim, s) = store(&all, promote)?;
        let end = s.info().log_end;
        drop(s);
        let superblock = sim.contents(&Path::new("/corpus").join(SUPERBLOCK_FILE)).ok_or("no superblock")?;
        corpus.add("superblock", name, &superblock)?;
        let segment = sim.contents(&Path::new("/corpus").join(segment_file_name(0))).ok_or("no segment 0")?;
        let data = &segment[SEGMENT_HEADER_REGION as usize..(SEGMENT_HEADER_REGION + end) as usize];
        corpus.add("recover_segment", name, data)?;
    }

    // Every replication message, Hellos in several shapes, client traffic.
    let (_, s) = store(&all, false)?;
    let block = s.read_blocks(0, usize::MAX)?.remove(0);
    let mut auto = Hello::example(Role::Secondary);
    auto.auto_failover = true;
    auto.epoch = 3;
    auto.log_end = block.bytes.len() as u64;
    let mut degraded = Hello::example(Role::Primary);
    degraded.peer_loss = PeerLoss::Degrade { after_ms: 2000 };
    degraded.auth = true;
    let hellos = [
        ("hello-primary", Hello::example(Role::Primary)),
        ("hello-secondary", Hello::example(Role::Secondary)),
        ("hello-auto-failover", auto),
        ("hello-degraded", degraded),
    ];
    for (name, hello) in &hellos {
        let frame = Message::Hello(hello.clone()).encode();
        corpus.add("handshake", name, &frame[FRAME_HEADER_LEN..])?;
        corpus.add("wire_messages", name, &unframed(&frame))?;
        // A stranger's handshake: this Hello, then a zero proof (frames as
        // `kind ‖ flags ‖ len ‖ payload`).
        let auth = Message::Auth { proof: [0; PROOF_LEN] }.encode();
        let mut frames = Vec::new();
        for f in [&frame, &auth] {
            let payload = &f[FRAME_HEADER_LEN..];
            frames.extend_from_slice(&f[4..8]);
            frames.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            frames.extend_from_slice(payload);
        }
        corpus.add("stranger_handshake", name, &frames)?;
    }
    let messages = [
        ("auth", Message::Auth { proof: [7; PROOF_LEN] }),
        ("accept", Message::Verdict(Verdict::Accept { version: 1 })),
        ("refuse", Message::Verdict(Verdict::Refuse { reason: "store ids differ".into() })),
        ("rejoin", Message::Verdict(Verdict::Rejoin { position: 96, fingerprint: Fingerprint(5) })),
        ("block", Message::Block { segment: block.segment, position: block.position, block: block.bytes.clone() }),
        ("ack", Message::Ack { received_end: 96, durable_end: 96, heartbeat: 3 }),
        (
            "heartbeat",
            Message::Heartbeat { log_end: 96, fingerprint: Fingerprint(9), commit_position: 96, time_ms: 1, seq: 3 },
        ),
        ("handover", Message::Handover { position: 96, fingerprint: Fingerprint(9) }),
    ];
    for (name, message) in &messages {
        corpus.add("wire_messages", name, &unframed(&message.encode()))?;
    }
    let requests = [
        ("put", Request::Put { key: b"k".to_vec(), value: b"v".to_vec() }),
        ("get", Request::Get { key: b"k".to_vec() }),
        ("delete", Request::Delete { key: b"k".to_vec() }),
        ("scan", Request::Scan { prefix: b"user/".to_vec(), after: Some(b"user/1".to_vec()), limit: 10 }),
        ("status", Request::Status),
        ("promote", Request::Promote { force: true }),
        ("switchover", Request::Switchover),
    ];
    let (mut raw, mut chunks) = (vec![0u8], vec![1u8]);
    for (name, request) in &requests {
        let frame = request.encode();
        corpus.add("client_stream", name, &[&[1u8][..], &chunk(&frame)].concat())?;
        corpus.add("wire_messages", &format!("request-{name}"), &unframed(&frame))?;
        raw.extend_from_slice(&frame);
        chunks.extend_from_slice(&chunk(&frame));
    }
    corpus.add("client_stream", "session-frames", &raw)?;
    corpus.add("client_stream", "session", &chunks)?;
    let responses = [
        ("done", Response::Done),
        ("value", Response::Value(Some(b"v".to_vec()))),
        ("page", Response::Page { items: vec![(b"k".to_vec(), b"v".to_vec())], more: true }),
        ("status", Response::Status("{\"role\":\"primary\"}".into())),
        ("error", Response::Error { code: 75, message: "read-only secondary".into() }),
    ];
    for (name, response) in &responses {
        corpus.add("wire_messages", &format!("response-{name}"), &unframed(&response.encode()))?;
    }
    Ok(())
}
