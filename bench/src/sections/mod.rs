//! One module per group of figures.

pub mod guest;
pub mod handout;
pub mod process;
pub mod rtt;
pub mod scale;
pub mod sizes;
