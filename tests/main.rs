//! End-to-end tests, one module per scenario family.

mod pipeline;
mod faults;
