//! The dispatch minion daemon. It arrives with the remote-execution issue.
