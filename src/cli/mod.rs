//! The binary's own modules (not part of the library): argument definitions and terminal
//! output.

pub mod args;
pub mod output;
