//! The CLI's side of the master's RPC API: connect as an operator, send signed requests,
//! wait for the master's signed answers on an exclusive reply queue.

use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::{Fingerprint, KeyPair, PublicKey};
use dispatch_common::message::{KeyRequest, now_ms};
use dispatch_common::names::{KEY_REQUESTS_QUEUE, MASTER_RPC_QUEUE};
use dispatch_common::rpc::{REQUEST_LIFETIME, Request, RequestBody, Response, ResponseBody, Role};
use dispatch_common::sasl::SaslClient;
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the CLI waits to connect, and then for each answer.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the master failed; every one is exit code 2 for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the master at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the master did not answer within {0:?}; is `dispatch master` running?")]
    Timeout(Duration),
    #[error("lost the connection to the master: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the master's answer is not valid: {0}")]
    BadAnswer(String),
    #[error(
        "the broker holds back requests ({0}); free disk space or memory on the broker's \
         host (an embedded broker keeps `dispatch master --disk-free-limit` free), then try \
         again. The embedded broker drops the request just sent when this command exits; \
         another broker may still pass it on if room comes back within {secs} s",
        secs = REQUEST_LIFETIME.as_secs()
    )]
    Blocked(String),
}

/// The connection's events, where the broker's `connection.blocked` arrives.
type Events = std::pin::Pin<Box<dyn futures_lite::Stream<Item = lapin::Event> + Send>>;

/// Waits for `work` unless the broker blocks `connection` first: a blocked request
/// would sit unread until the alarm clears, and an operator is better told why now.
async fn unless_blocked<T>(
    events: &mut Events,
    connection: &Connection,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            result = &mut work => return result,
            event = events.next() => match event {
                // Unless an unblock followed it while nobody was listening.
                Some(lapin::Event::ConnectionBlocked(reason)) if connection.status().blocked() => {
                    return Err(ClientError::Blocked(reason));
                }
                Some(_) => {}
                None => return work.await,
            },
        }
    }
}

/// The broker's own words when it refused the login, else the whole error.
fn refusal_text(error: &lapin::Error) -> String {
    let text = error.to_string();
    match text.split_once("ACCESS_REFUSED - ") {
        Some((_, reason)) => format!("refused: {reason}"),
        None => text,
    }
}

/// Asks the master to record this operator's key (on an external broker, where it sees
/// no login); the first time it is pending until `dispatch key accept` on the master host.
async fn request_key(channel: &Channel, operator: &Operator) -> Result<(), ClientError> {
    let request = KeyRequest {
        id: operator.id.clone(),
        role: Role::Operator,
        groups: Vec::new(),
        at_ms: now_ms(),
    };
    let body = Envelope::seal(domain::KEY_REQUEST, &operator.key, &operator.id, &request);
    channel
        .basic_publish(
            "".into(),
            KEY_REQUESTS_QUEUE.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await?;
    Ok(())
}

/// The pinned master key at `path`, if the file exists.
fn read_pin(path: &Path) -> Result<Option<PublicKey>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => PublicKey::from_hex(&text).map(Some).ok_or_else(|| {
            format!(
                "{} does not hold a public key; remove it to pin again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Pins the master key at `path` (trust on first use).
fn write_pin(path: &Path, key: &PublicKey) -> Result<(), String> {
    dispatch_common::durable::replace(path, (key.to_hex() + "\n").as_bytes())
        .map_err(|e| format!("pinning the master key in {}: {e}", path.display()))?;
    tracing::warn!(fingerprint = %key.fingerprint(), path = %path.display(), "pinned the master key on first use");
    Ok(())
}

/// An operator key, the id it signs as, and how it knows the master's key.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: String,
    pub key: KeyPair,
    pub master: MasterTrust,
}

/// How the CLI knows which key the master's answers must be signed with.
#[derive(Debug, Clone)]
pub enum MasterTrust {
    /// The key itself (read from the master's data dir on the master host).
    Key(PublicKey),
    /// A fingerprint the operator gave (`--master-fingerprint`).
    Fingerprint(Fingerprint),
    /// A pin file: read when present; otherwise the embedded broker's key (which is the
    /// master's) is trusted on first use and written there.
    Pinned(PathBuf),
}

/// A request sent, whose answers are still to come.
#[derive(Debug, Clone)]
pub struct Call {
    nonce: [u8; 16],
    correlation_id: String,
}

/// A connection to the master's RPC queue.
pub struct MasterClient {
    connection: Connection,
    channel: Channel,
    replies: Consumer,
    reply_queue: String,
    operator: Operator,
    /// The key the master's answers must be signed with, or, until the first answer
    /// shows it, the fingerprint that key must have.
    master: KnownMaster,
    events: Events,
}

/// What the client knows of the master's key.
#[derive(Debug, Clone, Copy)]
enum KnownMaster {
    Key(PublicKey),
    Fingerprint(Fingerprint),
}

impl MasterClient {
    /// Connects to `url` as `operator`.
    pub async fn connect(url: &str, operator: Operator) -> Result<Self, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            url: url.to_owned(),
            reason,
        };
        let pinned = match &operator.master {
            MasterTrust::Key(key) => Some(*key),
            MasterTrust::Pinned(path) => read_pin(path).map_err(&connect_error)?,
            MasterTrust::Fingerprint(_) => None,
        };
        let key_login = !dispatch_common::client::has_credentials(url);
        let sasl = SaslClient::new(operator.key.clone(), &operator.id, Role::Operator, &[])
            .expect_broker(pinned.filter(|_| key_login));
        let connection = tokio::time::timeout(
            RPC_TIMEOUT,
            dispatch_common::client::connect(url, sasl.clone(), &operator.id),
        )
        .await
        .map_err(|_| connect_error(format!("no answer within {RPC_TIMEOUT:?}")))?
        .map_err(|e| connect_error(refusal_text(&e)))?;
        let events: Events = Box::pin(connection.events_listener());
        let channel = connection.create_channel().await?;
        let reply_queue = dispatch_common::client::private_queue(&channel, FieldTable::default())
            .await?
            .to_string();
        let replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let trust = operator.master.clone();
        let master_key = match (&trust, pinned, sasl.seen_broker()) {
            (_, Some(key), _) => key,
            (MasterTrust::Fingerprint(fp), None, Some(seen)) if seen.fingerprint() == *fp => seen,
            (MasterTrust::Fingerprint(fp), None, Some(seen)) => {
                return Err(connect_error(format!(
                    "the broker's key {} is not the master fingerprint {fp} given",
                    seen.fingerprint()
                )));
            }
            (MasterTrust::Pinned(path), None, Some(seen)) => {
                write_pin(path, &seen).map_err(&connect_error)?;
                seen
            }
            (MasterTrust::Fingerprint(fp), None, None) => {
                // An external broker shows no key: ask to be known (the master sees no
                // login there), and learn the key from a first answer that matches.
                request_key(&channel, &operator).await?;
                let mut client = Self {
                    connection,
                    channel,
                    replies,
                    reply_queue,
                    operator,
                    master: KnownMaster::Fingerprint(*fp),
                    events,
                };
                if let ResponseBody::Error(reason) = client.call(RequestBody::Minions).await? {
                    return Err(connect_error(reason));
                }
                return Ok(client);
            }
            (_, None, None) => {
                return Err(connect_error(
                    "with an external broker the master's key cannot be learnt from the \
                     login; give --master-fingerprint (as `dispatch key fingerprint` prints \
                     it on the master host)"
                        .into(),
                ));
            }
            (MasterTrust::Key(_), None, Some(_)) => unreachable!("a known key is pinned"),
        };
        Ok(Self {
            connection,
            channel,
            replies,
            reply_queue,
            operator,
            master: KnownMaster::Key(master_key),
            events,
        })
    }

    /// Sends `body` and waits (up to [`RPC_TIMEOUT`]) for the first answer.
    pub async fn call(&mut self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let call = self.send(body).await?;
        self.answer(&call, RPC_TIMEOUT).await
    }

    /// Sends `body`; its answers are read with [`answer`](Self::answer).
    pub async fn send(&mut self, body: RequestBody) -> Result<Call, ClientError> {
        let request = Request::new(body);
        let bytes = Envelope::seal(domain::RPC, &self.operator.key, &self.operator.id, &request);
        let correlation_id = uuid::Uuid::now_v7().to_string();
        let publish = self.channel.basic_publish(
            "".into(),
            MASTER_RPC_QUEUE.into(),
            BasicPublishOptions::default(),
            &bytes,
            BasicProperties::default()
                .with_reply_to(self.reply_queue.as_str().into())
                .with_correlation_id(correlation_id.as_str().into()),
        );
        unless_blocked(&mut self.events, &self.connection, async {
            Ok(publish.await?)
        })
        .await?;
        Ok(Call {
            nonce: request.nonce,
            correlation_id,
        })
    }

    /// The next answer to `call`, waiting at most `wait`. Cancel-safe: an answer not yet
    /// taken stays queued for the next call.
    pub async fn answer(
        &mut self,
        call: &Call,
        wait: Duration,
    ) -> Result<ResponseBody, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = async {
                tokio::time::timeout_at(deadline, self.replies.next())
                    .await
                    .map_err(|_| ClientError::Timeout(wait))?
                    .ok_or_else(|| ClientError::BadAnswer("the reply queue was closed".into()))?
                    .map_err(ClientError::from)
            };
            let delivery = unless_blocked(&mut self.events, &self.connection, next).await?;
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|id| id.as_str() == call.correlation_id);
            if !matches {
                continue;
            }
            let response = self.open(&delivery.data)?;
            if let ResponseBody::Error(reason) = &response.body
                && response.nonce == [0; 16]
            {
                return Ok(ResponseBody::Error(reason.clone()));
            }
            if response.nonce != call.nonce {
                return Err(ClientError::BadAnswer(
                    "the answer is for another request".into(),
                ));
            }
            return Ok(response.body);
        }
    }

    /// Verifies an answer with the master's key; with only a fingerprint known, the
    /// key the answer carries must have it, and is then kept.
    fn open(&mut self, bytes: &[u8]) -> Result<Response, ClientError> {
        let bad = |e: String| ClientError::BadAnswer(e);
        let envelope = Envelope::decode(bytes).map_err(|e| bad(e.to_string()))?;
        let key = match self.master {
            KnownMaster::Key(key) => key,
            KnownMaster::Fingerprint(fp) => {
                let claimed = envelope.claimed_key().map_err(|e| bad(e.to_string()))?;
                if claimed.fingerprint() != fp {
                    return Err(bad(format!(
                        "the answer is signed by key {}, not by the master's {fp}",
                        claimed.fingerprint()
                    )));
                }
                claimed
            }
        };
        let response = envelope
            .open(domain::RPC_RESPONSE, &key)
            .map_err(|e| bad(e.to_string()))?;
        self.master = KnownMaster::Key(key);
        Ok(response)
    }

    /// The channel of this connection, for verbs that use the broker directly
    /// (`dispatch events` binds its own queue to the events exchange).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The master's key, as this client verified it: what the master's own events
    /// are signed with.
    pub fn master_key(&self) -> PublicKey {
        match self.master {
            KnownMaster::Key(key) => key,
            KnownMaster::Fingerprint(_) => unreachable!("connect learns the key"),
        }
    }

    /// Closes the connection ([`dispatch_common::client::close`]).
    pub async fn close(self) {
        dispatch_common::client::close(&self.connection, "bye").await;
    }
}
