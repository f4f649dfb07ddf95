//! The node as guests and their hand-outs see it: every node path resolved under the
//! host root the way the kernel will resolve it (links followed, `..` clamped, the
//! result checked against a grant) and opened in the same step, so that what was
//! checked is what is read.
//!
//! Below both [`crate::hostfns`] (what a guest reads) and [`crate::handout`] (what a
//! guest hands the container runtime): one resolver for both, depending on neither.

pub mod node_file;
pub mod resolver;
