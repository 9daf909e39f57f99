//! The embedded AMQP 0-9-1 broker of dispatch (under construction).

pub mod cli;

use std::future::Future;
use tokio::net::TcpListener;

/// Serves AMQP on an already bound listener until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    tokio::select! {
        _ = shutdown => Ok(()),
        r = async { loop { let _ = listener.accept().await?; } } => r,
    }
}
