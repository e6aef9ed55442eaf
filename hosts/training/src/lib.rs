//! Point-in-time-correct training sets; see the crate README.

pub mod asof;
