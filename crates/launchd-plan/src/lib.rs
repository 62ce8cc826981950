//! launchd-plan (work in progress).
