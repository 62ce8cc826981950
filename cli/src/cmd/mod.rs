//! One module per subcommand.

pub mod apply;
pub mod check;
pub mod closure_diff;
pub mod darwin;
pub mod diff;
pub mod plan;
pub mod switch;
