//! `dispatch`: the master daemon (`dispatch master`) and the operator CLI.

fn main() -> std::process::ExitCode {
    dispatch_master::cli::main()
}
