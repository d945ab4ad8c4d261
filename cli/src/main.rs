//! The `ntk` command (see `ntk --help`).

fn main() -> std::process::ExitCode {
    ntk_cli::main_with_args(std::env::args_os())
}
