//! testbed (work in progress).
