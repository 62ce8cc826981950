//! The demo of safe-switch on a throwaway systemd (filled in below).

fn main() {}
