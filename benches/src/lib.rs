//! lockstep-benches: criterion micro-benchmarks (benches/) and, later, the
//! `lockstep-bench` load runner that compares lockstep with other engines.
