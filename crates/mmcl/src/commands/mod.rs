//! One module per subcommand, plus what they share.

pub mod common;
pub mod info;
pub mod synth;
