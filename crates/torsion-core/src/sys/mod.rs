//! Platform code, kept behind one boundary.

mod unix;
pub(crate) use unix::*;
