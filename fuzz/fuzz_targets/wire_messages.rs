//! Arbitrary bytes as one message from the network: the first two bytes
//! are the frame kind (little endian), the rest its payload, framed with a
//! valid checksum (so that mutations reach the message decoders rather than
//! stopping at the frame check). A clean error, or a replication message /
//! client request / response that encodes back to a frame decoding to the
//! same value; never a panic. The raw bytes also go to the frame decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_replicator::protocol::{decode_frame, frame, Message, Request, Response, FRAME_PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    let Some((kind, payload)) = data.split_first_chunk::<2>() else { return };
    if payload.len() > FRAME_PAYLOAD_MAX {
        return;
    }
    let framed = frame(u16::from_le_bytes(*kind), payload);
    let (kind, payload) = decode_frame(&framed).expect("a frame built here decodes");
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
