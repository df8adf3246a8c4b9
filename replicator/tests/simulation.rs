//! The deterministic simulation (see `lockstep_replicator::sim`): 200 seeds
//! here; `LOCKSTEP_SIM_SEEDS=N` (and `LOCKSTEP_SIM_FIRST_SEED`) for more,
//! `LOCKSTEP_SIM_SEED=S` to replay one. A longer run: `lockstep simulate
//! --seeds 10000`.

use lockstep_replicator::sim::{run, seeds_from_env, STEPS_DEFAULT};

#[test]
fn every_seed_keeps_every_invariant() {
    let seeds = seeds_from_env(200);
    let (mut acked, mut crashes, mut promotions, mut rejoins) = (0, 0, 0, 0);
    for &seed in &seeds {
        match run(seed, STEPS_DEFAULT) {
            Ok(r) => {
                acked += r.writes_acked;
                crashes += r.crashes;
                promotions += r.promotions;
                rejoins += r.rejoins;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!(
        "{} seeds: {acked} acknowledged writes, {crashes} power cuts, {promotions} promotions, {rejoins} rejoins",
        seeds.len()
    );
    // The runs must exercise what they claim to.
    if seeds.len() >= 50 {
        assert!(acked > 0 && crashes > 0 && promotions > 0 && rejoins > 0);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let seed = seeds_from_env(1)[0];
    let (a, b) = (run(seed, 120), run(seed, 120));
    let summary = |r: &Result<lockstep_replicator::sim::SimReport, _>| format!("{r:?}");
    assert_eq!(summary(&a), summary(&b), "two runs of seed {seed} differ");
}
