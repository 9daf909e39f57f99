//! Open connections by authenticated user, so that an embedder can take a user's rights
//! away at once: [`crate::Broker::close_connections_of`].
//!
//! A connection's permissions are fixed at login, so revoking a key in the embedder's
//! registry only refuses *future* logins; the connections already open are found here
//! and closed with 320 CONNECTION_FORCED, as a broker shutdown closes them.
//!
//! A login registers its [`Session`] *before* the [`crate::KeyAuthority`] is asked, and
//! the session lives until the connection's task ends. An embedder that first records
//! the revocation (so `admit` refuses from then on) and then closes the user's
//! connections therefore leaves no gap: a login admitted before the revocation is
//! already registered and gets closed, even if its handshake is still running (it is
//! closed as soon as it opens). Entries are removed when their connection ends, so the
//! registry holds at most one entry per connection (accepted connections are bounded by
//! `max_connections`).

use crate::queue::ConnId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio_util::sync::CancellationToken;

/// The reason sent to clients when the broker itself shuts down.
pub const SHUTDOWN_REASON: &str = "broker shutdown";

/// Every registered connection, by user name.
#[derive(Debug, Default)]
pub struct Sessions {
    users: Mutex<HashMap<String, HashMap<ConnId, Arc<Stop>>>>,
}

/// Why and when a connection must be closed by the broker: on shutdown (its token is a
/// child of the server's shutdown token) or when its user is revoked (the reason is set
/// first, then the token is cancelled).
#[derive(Debug)]
pub struct Stop {
    token: CancellationToken,
    reason: OnceLock<String>,
}

impl Stop {
    /// A stop that fires with `shutdown` and with a revocation.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            token: shutdown.child_token(),
            reason: OnceLock::new(),
        }
    }

    /// Completes when the connection must close.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reply text of the 320 CONNECTION_FORCED close.
    pub fn reason(&self) -> &str {
        self.reason.get().map_or(SHUTDOWN_REASON, String::as_str)
    }

    /// Sets the reason (the first one wins) and fires; false if it had already fired.
    fn revoke(&self, reason: &str) -> bool {
        if self.token.is_cancelled() {
            return false;
        }
        let _ = self.reason.set(reason.to_owned());
        self.token.cancel();
        true
    }
}

/// One connection's entry in [`Sessions`]; dropping it removes the entry.
#[derive(Debug)]
pub struct Session<'a> {
    sessions: &'a Sessions,
    user: String,
    id: ConnId,
    stop: Arc<Stop>,
}

impl Session<'_> {
    /// What closes this connection: shutdown or revocation.
    pub fn stop(&self) -> &Arc<Stop> {
        &self.stop
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let mut users = self.sessions.lock();
        if let Some(conns) = users.get_mut(&self.user) {
            conns.remove(&self.id);
            if conns.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}

impl Sessions {
    /// Registers connection `id` of `user`; its stop fires with `shutdown` too.
    pub fn register<'a>(
        &'a self,
        user: &str,
        id: ConnId,
        shutdown: &CancellationToken,
    ) -> Session<'a> {
        let stop = Arc::new(Stop::new(shutdown));
        self.lock()
            .entry(user.to_owned())
            .or_default()
            .insert(id, stop.clone());
        Session {
            sessions: self,
            user: user.to_owned(),
            id,
            stop,
        }
    }

    /// Fires the stop of every connection of `user` with `reason`; returns how many
    /// had not been stopped yet. One hash lookup when the user has none.
    pub fn revoke(&self, user: &str, reason: &str) -> usize {
        let users = self.lock();
        let Some(conns) = users.get(user) else {
            return 0;
        };
        conns.values().filter(|stop| stop.revoke(reason)).count()
    }

    /// How many connections `user` has registered (open or logging in).
    pub fn count(&self, user: &str) -> usize {
        self.lock().get(user).map_or(0, HashMap::len)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<ConnId, Arc<Stop>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_stops_only_that_users_connections_and_entries_go_away() {
        let sessions = Sessions::default();
        let shutdown = CancellationToken::new();
        let a1 = sessions.register("web", 1, &shutdown);
        let a2 = sessions.register("web", 2, &shutdown);
        let b = sessions.register("db", 3, &shutdown);
        assert_eq!(sessions.revoke("nobody", "x"), 0);
        assert_eq!(sessions.revoke("web", "key rejected"), 2);
        assert!(a1.stop().is_cancelled() && a2.stop().is_cancelled());
        assert_eq!(a1.stop().reason(), "key rejected");
        assert!(!b.stop().is_cancelled());
        // Already stopped connections are not counted twice.
        assert_eq!(sessions.revoke("web", "again"), 0);
        assert_eq!(a2.stop().reason(), "key rejected");
        drop((a1, a2));
        assert_eq!(sessions.count("web"), 0);
        assert!(
            sessions.lock().get("web").is_none(),
            "no empty entry is kept"
        );
        shutdown.cancel();
        assert!(b.stop().is_cancelled());
        assert_eq!(b.stop().reason(), SHUTDOWN_REASON);
        drop(b);
        assert!(sessions.lock().is_empty());
    }
}
