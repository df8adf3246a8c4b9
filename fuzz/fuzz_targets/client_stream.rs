//! Arbitrary bytes as what a client sends on one connection: frames are
//! read one after another the way the node's client server reads them
//! (`read_frame`, header checked before the payload is allocated), each
//! decoded as a request; a request re-encodes to a frame that decodes to
//! the same request. Never a panic, never an allocation the header did not
//! bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_replicator::protocol::{decode_frame, read_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
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
