//! Arbitrary bytes as a frame from the network: a clean error, or a
//! replication message / client request / response that encodes back to a
//! frame decoding to the same value; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_replicator::protocol::{decode_frame, Message, Request, Response};

fuzz_target!(|data: &[u8]| {
    let Ok((kind, payload)) = decode_frame(data) else { return };
    if let Ok(message) = Message::decode(kind, payload) {
        let frame = message.encode();
        let (k, p) = decode_frame(&frame).expect("an encoded frame decodes");
        assert_eq!(Message::decode(k, p).expect("an encoded message decodes"), message);
    }
    if let Ok(request) = Request::decode(kind, payload) {
        let frame = request.encode();
        let (k, p) = decode_frame(&frame).expect("an encoded frame decodes");
        assert_eq!(Request::decode(k, p).expect("an encoded request decodes"), request);
    }
    if let Ok(response) = Response::decode(kind, payload) {
        let frame = response.encode();
        let (k, p) = decode_frame(&frame).expect("an encoded frame decodes");
        assert_eq!(Response::decode(k, p).expect("an encoded response decodes"), response);
    }
});
