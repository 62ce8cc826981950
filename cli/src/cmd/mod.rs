//! One module per subcommand.

pub(crate) mod apply;
pub(crate) mod check;
pub(crate) mod closure_diff;
pub(crate) mod darwin;
pub(crate) mod diff;
pub(crate) mod manual;
pub(crate) mod merge;
pub(crate) mod pending;
pub(crate) mod plan;
pub(crate) mod settle;
pub(crate) mod switch;
