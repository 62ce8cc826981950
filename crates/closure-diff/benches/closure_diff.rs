//! Benchmark of reading and diffing two large closures (written below).

fn main() {}
