//! `dispatch-broker`: the embedded AMQP 0-9-1 broker, run on its own.

fn main() -> std::process::ExitCode {
    dispatch_broker::cli::main()
}
