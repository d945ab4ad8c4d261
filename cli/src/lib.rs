//! Library behind the `ntk` command: one module per command, plus file formats (`io`),
//! figures (`plot`) and sweeps (`sweep`).

pub mod io;
