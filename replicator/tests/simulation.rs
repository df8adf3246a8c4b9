//! The deterministic simulation (see `lockstep_replicator::sim`): 300 seeds
//! here; `LOCKSTEP_SIM_SEEDS=N` (and `LOCKSTEP_SIM_FIRST_SEED`) for more,
//! `LOCKSTEP_SIM_SEED=S` to replay one. A longer run: `lockstep simulate
//! --seeds 10000`.

use lockstep_replicator::sim::{run, run_many, seeds_from_env, STEPS_DEFAULT};

#[test]
fn every_seed_keeps_every_invariant() {
    let seeds = seeds_from_env(300);
    match run_many(&seeds, STEPS_DEFAULT, &mut std::io::stderr()) {
        Ok(summary) => println!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn the_runs_exercise_what_they_claim_to() {
    let reports: Vec<_> = (0..40).map(|seed| run(seed, STEPS_DEFAULT).expect("a seed failed")).collect();
    let total = |f: fn(&lockstep_replicator::sim::SimReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert!(total(|r| r.writes_acked) > 100, "few writes were acknowledged");
    for (what, n) in [
        ("power cuts", total(|r| r.crashes)),
        ("promotions", total(|r| r.promotions)),
        ("rejoins", total(|r| r.rejoins)),
        ("demotions", total(|r| r.demotions)),
        ("partitions", total(|r| r.partitions)),
        ("refused mismatches", total(|r| r.mismatches_refused)),
        ("ignored attacker connections", total(|r| r.strangers_ignored)),
        ("refused forged frames", total(|r| r.forgeries_refused)),
    ] {
        assert!(n > 0, "no {what} in 40 seeds");
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in seeds_from_env(3) {
        let (a, b) = (run(seed, 150), run(seed, 150));
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "two runs of seed {seed} differ");
    }
}
