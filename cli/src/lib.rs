//! Library behind the `ntk` command: one module per command, plus file formats, plots, sweeps.
