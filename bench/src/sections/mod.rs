//! One module per group of figures.

pub mod guest;
pub mod process;
pub mod rtt;
pub mod scale;
pub mod sizes;
