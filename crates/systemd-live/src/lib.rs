//! systemd-live (work in progress).
