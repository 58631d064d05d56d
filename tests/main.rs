//! End-to-end tests, one module per scenario family.

mod faults;
mod pipeline;
mod reads;
