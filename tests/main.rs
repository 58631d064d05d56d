//! End-to-end tests, one module per scenario family.

mod crash;
mod faults;
mod pipeline;
