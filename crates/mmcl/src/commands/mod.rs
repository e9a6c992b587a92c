//! One module per subcommand, plus what they share.

pub mod common;
pub mod info;
pub mod probe;
pub mod report;
pub mod synth;
