//! nix-compose (work in progress).
