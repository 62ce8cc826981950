//! closure-diff (work in progress).
