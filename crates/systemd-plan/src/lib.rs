//! systemd-plan (work in progress).
