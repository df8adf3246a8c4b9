//! Micro-benchmarks of the format's hot paths: record encoding, block
//! finishing (digest + fingerprint), block verification, and a buffered
//! put + get through the whole store.
//!
//! `cargo bench -p lockstep-benches --bench format -- --quick`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lockstep_engine::bench_support::BenchIndex;
use lockstep_engine::format::{
    block_seed, decode_record, encode_record, genesis_fingerprint, record_seed, verify_block, BlockBuilder, StoreId,
    RECORD_KIND_PUT,
};
use lockstep_engine::{Durability, Options, Store};

const STORE: StoreId = StoreId([3; 16]);

fn records(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        encode_record(&mut out, record_seed(&STORE), RECORD_KIND_PUT, format!("key-{i:012}").as_bytes(), &[7u8; 100]);
    }
    out
}

fn bench_format(c: &mut Criterion) {
    let mut g = c.benchmark_group("format");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_record_16b_key_100b_value", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_record(&mut out, 1, RECORD_KIND_PUT, b"key-000000000001", &[7u8; 100]);
        })
    });
    let mut one = Vec::new();
    encode_record(&mut one, 1, RECORD_KIND_PUT, b"key-000000000001", &[7u8; 100]);
    g.bench_function("decode_record_16b_key_100b_value", |b| {
        b.iter(|| decode_record(std::hint::black_box(&one), 1).map(|(r, len)| (r.key.len(), len)))
    });
    let encoded = records(256);
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("finish_block_256_records", |b| {
        b.iter_batched(
            || {
                let mut builder = BlockBuilder::new();
                builder.push_records(&encoded, 256);
                builder
            },
            |builder| builder.finish(4096, 1, 0, block_seed(&STORE, 0, 4096), genesis_fingerprint(&STORE)),
            BatchSize::SmallInput,
        )
    });
    let mut builder = BlockBuilder::new();
    builder.push_records(&encoded, 256);
    let seed = block_seed(&STORE, 0, 4096);
    let (block, _) = builder.finish(4096, 1, 0, seed, genesis_fingerprint(&STORE));
    g.bench_function("verify_block_256_records", |b| {
        b.iter(|| verify_block(&block, 4096, seed, record_seed(&STORE), Some(genesis_fingerprint(&STORE))))
    });
    g.finish();
}

fn bench_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(dir.path(), Options { durability: Durability::Buffered, ..Options::default() }).expect("open");
    for i in 0..10_000u32 {
        store.put(format!("key-{i:012}"), [1u8; 100]).expect("put");
    }
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("put_buffered", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            store.put(format!("new-{i:012}"), [2u8; 100]).expect("put")
        })
    });
    let mut j = 0u32;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            j = (j + 7919) % 10_000;
            store.get(format!("key-{j:012}")).expect("get")
        })
    });
    g.finish();
}

fn bench_index(c: &mut Criterion) {
    const KEYS: u64 = 1_000_000;
    let key = |i: u64| format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    let index = BenchIndex::default();
    for i in 0..KEYS {
        index.insert(key(i).as_bytes(), i);
    }
    let keys: Vec<String> = (0..4096).map(|i| key(i * 241 % KEYS)).collect();
    let mut n = 0usize;
    g.bench_function("get_hit_1m_keys", |b| {
        b.iter(|| {
            n = (n + 1) % keys.len();
            assert!(index.contains(keys[n].as_bytes()));
        })
    });
    let mut next = KEYS;
    g.bench_function("insert_into_1m_keys", |b| {
        b.iter_batched(
            || {
                next += 1;
                (key(next), next)
            },
            |(k, n)| index.insert(k.as_bytes(), n),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_format, bench_store, bench_index);
criterion_main!(benches);
