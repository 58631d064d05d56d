//! End-to-end tests, one module per scenario family.

mod broker;
mod crash;
mod evolution;
mod faults;
mod follower;
mod pipeline;
mod producer_ops;
mod reads;
mod topology;
