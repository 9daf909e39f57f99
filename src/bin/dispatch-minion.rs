//! `dispatch-minion`: the minion daemon.

fn main() -> std::process::ExitCode {
    dispatch_minion::cli::main()
}
