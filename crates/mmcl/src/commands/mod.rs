//! One module per subcommand, plus what they share.

pub mod common;
pub mod convert;
pub mod embed_ecg;
pub mod info;
