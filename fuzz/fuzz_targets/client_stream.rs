//! Arbitrary bytes as what a client sends on one connection, read frame
//! after frame the way the node's client server reads them (`read_frame`:
//! header checked before the payload is allocated), each decoded as a
//! request that must re-encode to the same request. If the first byte is 0
//! the rest is the raw stream (garbage headers, huge lengths, bad
//! checksums); otherwise it is a list of (kind u16, length u16, payload)
//! turned into valid frames, so that mutations reach the request decoder.
//! Never a panic, never an allocation the header did not bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_replicator::protocol::{decode_frame, frame, read_frame, Request, Response};

fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    while let Some((head, rest)) = data.split_first_chunk::<4>() {
        let kind = u16::from_le_bytes([head[0], head[1]]);
        let len = (u16::from_le_bytes([head[2], head[3]]) as usize).min(rest.len());
        stream.extend_from_slice(&frame(kind, &rest[..len]));
        data = &rest[len..];
    }
    stream
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let owned;
    let mut stream = if mode == 0 {
        rest
    } else {
        owned = framed(rest);
        &owned[..]
    };
    while let Ok((kind, payload)) = read_frame(&mut stream) {
        if let Ok(request) = Request::decode(kind, &payload) {
            let frame = request.encode();
            let (k, p) = decode_frame(&frame).expect("an encoded frame decodes");
            assert_eq!(Request::decode(k, p).expect("an encoded request decodes"), request);
        }
        // The client reads responses the same way.
        let _ = Response::decode(kind, &payload);
    }
});
