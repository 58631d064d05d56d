//! The work every setup is measured on: the `customers` table, the upsert
//! statement, and the seeded upserts (half new keys, half existing ones).

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

/// The captured table, as every setup has it.
pub(crate) const TABLE_SQL: &str =
    "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, coffee TEXT, \
                         visits INTEGER, updated_at REAL)";

/// One upsert: a new key inserts, an existing key takes the ON CONFLICT
/// update path (so update triggers run too).
pub(crate) const UPSERT_SQL: &str = "INSERT INTO customers(id, name, coffee, visits, updated_at) VALUES (?1, ?2, ?3, 1, ?4) \
                          ON CONFLICT(id) DO UPDATE SET name = excluded.name, coffee = excluded.coffee, \
                          visits = customers.visits + 1, updated_at = excluded.updated_at";

/// How the upserts are committed: in transactions of `--batch` rows, or one
/// per commit (autocommit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Workload {
    Batched,
    Single,
}

/// One upsert's parameters, generated before the clock starts.
pub(crate) struct Upsert {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) coffee: &'static str,
    pub(crate) updated_at: f64,
}

const COFFEES: [&str; 6] = [
    "espresso",
    "flat white",
    "cortado",
    "latte",
    "filter",
    "mocha",
];

/// Alternates a new key (appended after the preloaded ones) with a random
/// existing one: half inserts, half updates.
pub(crate) fn upserts(rows: usize, customers: usize, seed: u64) -> Vec<Upsert> {
    // Seeded: the same keys for every setup of a round, so setups are
    // compared on identical work.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_new = customers as i64 + 1;
    (0..rows)
        .map(|i| {
            let r: u64 = rng.random();
            let id = if i % 2 == 1 || customers == 0 {
                next_new += 1;
                next_new - 1
            } else {
                1 + (r % customers as u64) as i64
            };
            Upsert {
                id,
                name: format!("customer {id} #{}", r % 1000),
                coffee: COFFEES[(r >> 20) as usize % COFFEES.len()],
                updated_at: 1.7e9 + i as f64 * 0.001,
            }
        })
        .collect()
}
