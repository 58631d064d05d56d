//! End-to-end tests, one module per scenario family.

mod broker;
mod checksums;
mod checksums_follower;
mod crash;
mod crash_loop;
mod crash_scenario;
mod dashboards;
mod dead_letters;
mod errors;
mod evolution;
mod faults;
mod follower;
mod freshness;
mod page;
mod pipeline;
mod producer_ops;
mod reads;
mod seed;
mod snapshots;
mod takeover;
mod takeover_reads;
mod topology;
