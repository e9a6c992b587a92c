//! One module per subcommand, plus what they share.

pub mod common;
pub mod embed_cmr;
pub mod info;
