//! The `dispatch` command line.

/// Runs `dispatch`.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
