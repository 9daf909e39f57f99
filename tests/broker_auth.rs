//! Signed broker authentication (`DISPATCH-ED25519`) and per-identity permissions, over
//! real TCP against the embedded broker started in this process with a test
//! [`KeyAuthority`]. RabbitMQ has neither, so with `DISPATCH_TEST_BROKER_URL` set every
//! test says it is skipped and returns.

mod support;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::LongString;
use dispatch_broker::{Broker, BrokerConfig, KeyAuthority, Permissions, User};
use dispatch_common::keys::{KeyPair, PublicKey};
use dispatch_common::names;
use dispatch_common::rpc::Role;
use dispatch_common::sasl::{Proof, SaslClient};
use lapin::auth::AuthProvider;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use support::raw::RawConnection;
use support::*;

/// The test's key registry: accepted keys and what each may do; every other key is
/// refused with a reason that names it.
struct Registry {
    broker: PublicKey,
    accepted: HashMap<PublicKey, Permissions>,
}

/// What [`Registry`] answers for a key it does not know.
const PENDING: &str = "is pending: an operator must run `dispatch key accept`";

impl KeyAuthority for Registry {
    fn broker_key(&self) -> PublicKey {
        self.broker
    }

    fn admit(&self, proof: &Proof, key: &PublicKey, _: SocketAddr) -> Result<Permissions, String> {
        self.accepted
            .get(key)
            .cloned()
            .ok_or_else(|| format!("key {} of '{}' {PENDING}", key.fingerprint(), proof.id))
    }
}

/// An embedded broker on `127.0.0.1:0`; dropping it shuts the broker down.
struct Embedded {
    addr: SocketAddr,
    broker: Arc<Broker>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Identities of a test: the master (full rights, by key) and two minions.
struct Keys {
    master: KeyPair,
    web: KeyPair,
    db: KeyPair,
}

const WEB: &str = "web.01";
const DB: &str = "db.01";

impl Keys {
    fn new() -> Keys {
        Keys {
            master: KeyPair::generate(),
            web: KeyPair::generate(),
            db: KeyPair::generate(),
        }
    }

    fn registry(&self) -> Registry {
        let minion = |id: &str| Permissions::Minion { id: id.into() };
        Registry {
            broker: self.master.public(),
            accepted: HashMap::from([
                (self.master.public(), Permissions::Full),
                (self.web.public(), minion(WEB)),
                (self.db.public(), minion(DB)),
            ]),
        }
    }
}

/// Starts the embedded broker with `users` and `authority`, or says the test is skipped
/// when the tests run against an external broker.
async fn start(test: &str, users: Vec<User>, authority: impl KeyAuthority) -> Option<Embedded> {
    if std::env::var(EXTERNAL_URL_VAR).is_ok_and(|url| !url.trim().is_empty()) {
        eprintln!("SKIPPED {test}: signed authentication is the embedded broker's");
        return None;
    }
    let config = BrokerConfig {
        users,
        key_authority: Some(Arc::new(authority)),
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::open(config).expect("open an in-memory broker"));
    let listener = timeout(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dispatch_broker::serve(
        listener,
        broker.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Some(Embedded {
        addr,
        broker,
        _stop: stop,
    })
}

async fn connect_with(broker: &Embedded, auth: impl AuthProvider) -> lapin::Result<Connection> {
    let url = format!("amqp://{}/%2f", broker.addr);
    let properties = ConnectionProperties::default().with_auth_provider(auth);
    timeout(Connection::connect(&url, properties)).await
}

async fn connect_key(broker: &Embedded, pair: &KeyPair, id: &str, role: Role) -> Connection {
    connect_with(broker, SaslClient::new(pair.clone(), id, role, &[]))
        .await
        .unwrap_or_else(|e| panic!("{id} connects with its key: {e}"))
}

/// The master's side of the topology a minion needs: its queue, `db.01`'s, the results
/// queue and the two exchanges.
async fn declare_topology(master: &Connection) {
    let ch = channel(master).await;
    for queue in [names::minion_queue(WEB), names::minion_queue(DB)] {
        declare_queue(&ch, &queue).await;
    }
    declare_queue(&ch, names::RESULTS_QUEUE).await;
    for exchange in [names::COMMANDS_EXCHANGE, names::EVENTS_EXCHANGE] {
        declare_exchange(&ch, exchange, ExchangeKind::Topic).await;
    }
}

/// Publishes on a fresh confirm channel and returns the confirmation (or the error that
/// closed the channel).
async fn try_publish(
    conn: &Connection,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
) -> lapin::Result<lapin::Confirmation> {
    let ch = confirm_channel(conn).await;
    let confirm = timeout(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"payload",
        properties,
    ))
    .await?;
    timeout(confirm).await
}

/// Asserts that `result` failed with `code` and a reason containing `text`.
fn assert_refused<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16, text: &str) {
    let error = result.expect_err("the broker must refuse");
    let message = match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_message().to_string(),
        _ => String::new(),
    };
    assert_eq!(amqp_code(&error), Some(code), "got: {error}");
    assert!(
        message.contains(text),
        "{message:?} should contain {text:?}"
    );
}

#[tokio::test]
async fn an_accepted_key_connects_and_a_minion_consumes_its_queue_and_replies_to_results() {
    let keys = Keys::new();
    let test = "an_accepted_key_connects_and_a_minion_consumes_its_queue_and_replies_to_results";
    let Some(broker) = start(test, vec![], keys.registry()).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;
    let to_minion = confirm_channel(&master).await;
    publish(&to_minion, "", &names::minion_queue(WEB), b"uptime").await;

    let minion = connect_key(&broker, &keys.web, WEB, Role::Minion).await;
    let ch = confirm_channel(&minion).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_queue_with(&ch, &names::minion_queue(WEB), passive).await;
    let mut commands = consume(
        &ch,
        &names::minion_queue(WEB),
        BasicConsumeOptions::default(),
    )
    .await;
    assert_eq!(body(&next_delivery(&mut commands).await), "uptime");

    // Its reply, stamped with its own id, and an event under its own prefix are accepted.
    let own_id = BasicProperties::default().with_user_id(WEB.into());
    publish_with(&ch, "", names::RESULTS_QUEUE, b"up 3 days", own_id).await;
    let event = format!("{}up", names::minion_event_prefix(WEB));
    publish(&ch, names::EVENTS_EXCHANGE, &event, b"").await;

    let results = channel(&master).await;
    let mut replies = consume(
        &results,
        names::RESULTS_QUEUE,
        BasicConsumeOptions::default(),
    )
    .await;
    let reply = next_delivery(&mut replies).await;
    assert_eq!(body(&reply), "up 3 days");
    assert_eq!(
        reply.properties.user_id().as_ref().map(ShortString::as_str),
        Some(WEB)
    );
}

#[tokio::test]
async fn an_unknown_key_is_refused_with_403_and_the_authority_reason() {
    let keys = Keys::new();
    let test = "an_unknown_key_is_refused_with_403_and_the_authority_reason";
    let Some(broker) = start(test, vec![], keys.registry()).await else {
        return;
    };
    let stranger = SaslClient::new(KeyPair::generate(), "web.99", Role::Minion, &[]);
    let refused = connect_with(&broker, stranger).await;
    assert_refused(refused, 403, PENDING);
    // The refusal closed only that connection attempt.
    connect_key(&broker, &keys.web, WEB, Role::Minion).await;
}

#[tokio::test]
async fn a_minion_may_not_read_other_queues_declare_bind_or_publish_commands() {
    let keys = Keys::new();
    let test = "a_minion_may_not_read_other_queues_declare_bind_or_publish_commands";
    let Some(broker) = start(test, vec![], keys.registry()).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;
    let minion = connect_key(&broker, &keys.web, WEB, Role::Minion).await;
    let other = names::minion_queue(DB);

    let ch = channel(&minion).await;
    let consumed = timeout(ch.basic_consume(
        other.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    let expected = format!("access to queue '{other}' in vhost '/' refused for user '{WEB}'");
    assert_refused(consumed, 403, &expected);
    assert!(!ch.status().connected(), "the refused channel is closed");
    assert!(minion.status().connected(), "the connection stays up");

    let ch = channel(&minion).await;
    let got = timeout(ch.basic_get(other.as_str().into(), Default::default())).await;
    assert_refused(got, 403, &expected);

    let ch = channel(&minion).await;
    let declared = timeout(ch.queue_declare(
        "dispatch.minion.web.01.extra".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_refused(declared, 403, "dispatch.minion.web.01.extra");

    let ch = channel(&minion).await;
    let own = names::minion_queue(WEB);
    let bound = timeout(ch.queue_bind(
        own.as_str().into(),
        names::COMMANDS_EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_refused(bound, 403, &own);

    let ch = channel(&minion).await;
    let exchange = timeout(ch.exchange_declare(
        names::COMMANDS_EXCHANGE.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_refused(exchange, 403, names::COMMANDS_EXCHANGE);

    let commanded = try_publish(&minion, names::COMMANDS_EXCHANGE, "all", Default::default());
    assert_refused(commanded.await, 403, names::COMMANDS_EXCHANGE);
    let to_other = try_publish(&minion, "", &other, Default::default());
    assert_refused(to_other.await, 403, &other);
    let foreign_event = format!("{}up", names::minion_event_prefix(DB));
    let posed = try_publish(
        &minion,
        names::EVENTS_EXCHANGE,
        &foreign_event,
        Default::default(),
    );
    assert_refused(posed.await, 403, &foreign_event);
    // CC would route a reply into another minion's queue: refused like its routing key.
    let mut cc = FieldTable::default();
    let cc_keys = vec![AMQPValue::LongString(other.as_str().into())];
    cc.insert(
        "CC".into(),
        AMQPValue::FieldArray(FieldArray::from(cc_keys)),
    );
    let copied = try_publish(
        &minion,
        "",
        names::RESULTS_QUEUE,
        BasicProperties::default().with_headers(cc),
    );
    assert_refused(copied.await, 403, &other);

    assert_eq!(queue_exists(&master, &other).await.unwrap(), 0);
    assert!(minion.status().connected(), "only channels were closed");
}

#[tokio::test]
async fn a_user_id_other_than_the_authenticated_user_is_refused_with_406() {
    let keys = Keys::new();
    let test = "a_user_id_other_than_the_authenticated_user_is_refused_with_406";
    let Some(broker) = start(test, vec![User::guest()], keys.registry()).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;

    let minion = connect_key(&broker, &keys.web, WEB, Role::Minion).await;
    let as_master = BasicProperties::default().with_user_id("master".into());
    let forged = try_publish(&minion, "", names::RESULTS_QUEUE, as_master.clone()).await;
    assert_refused(
        forged,
        406,
        "user_id property set to 'master' but authenticated user was 'web.01'",
    );

    let guest = connect_url(&format!("amqp://guest:guest@{}/%2f", broker.addr))
        .await
        .expect("guest logs in with PLAIN");
    let forged = try_publish(&guest, "", names::RESULTS_QUEUE, as_master).await;
    assert_refused(forged, 406, "authenticated user was 'guest'");
    let own = BasicProperties::default().with_user_id("guest".into());
    let honest = try_publish(&guest, "", names::RESULTS_QUEUE, own).await;
    assert!(honest.expect("guest may stamp its own name").is_ack());
    assert_eq!(
        queue_exists(&master, names::RESULTS_QUEUE).await.unwrap(),
        1
    );
}

/// A `DISPATCH-ED25519` client that answers every challenge with the first answer it
/// gave, as an eavesdropper replaying a recorded handshake would.
#[derive(Clone)]
struct Replayer {
    honest: SaslClient,
    recorded: Arc<Mutex<Option<LongString>>>,
}

impl AuthProvider for Replayer {
    fn mechanism(&self) -> ShortString {
        self.honest.mechanism()
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        self.honest.auth_starter()
    }

    fn continue_auth(&self, challenge: LongString) -> Result<LongString, String> {
        let mut recorded = self.recorded.lock().unwrap();
        if recorded.is_none() {
            *recorded = Some(self.honest.continue_auth(challenge)?);
        }
        Ok(recorded.clone().expect("recorded above"))
    }
}

#[tokio::test]
async fn a_proof_replayed_from_another_handshake_is_refused() {
    let keys = Keys::new();
    let test = "a_proof_replayed_from_another_handshake_is_refused";
    let Some(broker) = start(test, vec![], keys.registry()).await else {
        return;
    };
    let replayer = Replayer {
        honest: SaslClient::new(keys.web.clone(), WEB, Role::Minion, &[]),
        recorded: Arc::default(),
    };
    let first = connect_with(&broker, replayer.clone()).await;
    first.expect("the recorded handshake itself succeeds");
    let replayed = connect_with(&broker, replayer).await;
    assert_refused(replayed, 403, "bad DISPATCH-ED25519 signature for 'web.01'");
}

#[tokio::test]
async fn only_the_key_mechanism_is_offered_when_there_are_no_users() {
    let keys = Keys::new();
    let test = "only_the_key_mechanism_is_offered_when_there_are_no_users";
    let Some(broker) = start(test, vec![], keys.registry()).await else {
        return;
    };
    let mut raw = RawConnection::connect(broker.addr).await;
    let start = raw.start().await;
    assert_eq!(start.mechanisms.to_string(), "DISPATCH-ED25519");
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: raw::client_properties(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        })),
    )
    .await;
    let (code, text) = raw.expect_connection_close().await;
    assert_eq!(code, 403);
    assert!(
        text.contains("this broker offers DISPATCH-ED25519"),
        "{text}"
    );
}

#[tokio::test]
async fn plain_still_works_when_users_are_configured_beside_a_key_authority() {
    let keys = Keys::new();
    let test = "plain_still_works_when_users_are_configured_beside_a_key_authority";
    let alice = User {
        name: "alice".into(),
        password: "wonderland".into(),
        loopback_only: false,
        permissions: Permissions::Full,
    };
    let Some(broker) = start(test, vec![alice], keys.registry()).await else {
        return;
    };
    let mut raw = RawConnection::connect(broker.addr).await;
    let start = raw.start().await;
    assert_eq!(
        start.mechanisms.to_string(),
        "DISPATCH-ED25519 PLAIN AMQPLAIN"
    );
    drop(raw);

    let conn = connect_url(&format!("amqp://alice:wonderland@{}/%2f", broker.addr))
        .await
        .expect("alice logs in with PLAIN");
    let ch = confirm_channel(&conn).await;
    let queue = unique("plain");
    declare_queue(&ch, &queue).await;
    publish(&ch, "", &queue, b"hello").await;
    let wrong = connect_url(&format!("amqp://alice:looking-glass@{}/%2f", broker.addr)).await;
    assert_refused(wrong, 403, "PLAIN");
    connect_key(&broker, &keys.db, DB, Role::Minion).await;
}

#[tokio::test]
async fn revoking_a_user_closes_its_open_connections_with_320_and_no_others() {
    let keys = Keys::new();
    let test = "revoking_a_user_closes_its_open_connections_with_320_and_no_others";
    let Some(broker) = start(test, vec![User::guest()], keys.registry()).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;
    assert_eq!(
        broker.broker.close_connections_of(WEB, "nobody to close"),
        0
    );

    // Two connections of web.01, each consuming its queue; db.01 and guest beside them.
    let web = connect_key(&broker, &keys.web, WEB, Role::Minion).await;
    let web_again = connect_key(&broker, &keys.web, WEB, Role::Minion).await;
    let own = names::minion_queue(WEB);
    let mut commands = consume(&channel(&web).await, &own, BasicConsumeOptions::default()).await;
    let mut more = consume(
        &channel(&web_again).await,
        &own,
        BasicConsumeOptions::default(),
    )
    .await;
    let db = connect_key(&broker, &keys.db, DB, Role::Minion).await;
    let guest = connect_url(&format!("amqp://guest:guest@{}/%2f", broker.addr))
        .await
        .expect("guest logs in with PLAIN");
    assert_eq!(broker.broker.connections_of(WEB), 2);

    let reason = "the key of 'web.01' was rejected by an operator";
    assert_eq!(broker.broker.close_connections_of(WEB, reason), 2);
    for consumer in [&mut commands, &mut more] {
        let error = consumer_error(consumer).await;
        assert_eq!(amqp_code(&error), Some(320), "got: {error}");
        assert!(error.to_string().contains(reason), "got: {error}");
    }
    eventually("web.01's connections are closed", || async {
        !web.status().connected() && !web_again.status().connected()
    })
    .await;
    eventually("the broker forgot web.01's connections", || async {
        broker.broker.connections_of(WEB) == 0
    })
    .await;
    // Revoking again finds nothing; its consumers are gone with its connections.
    assert_eq!(broker.broker.close_connections_of(WEB, reason), 0);
    let ch = confirm_channel(&master).await;
    publish(&ch, "", &own, b"for nobody").await;
    assert_eq!(queue_exists(&master, &own).await.unwrap(), 1);

    // The others stay connected and keep their rights.
    for (conn, who) in [(&master, "master"), (&db, DB), (&guest, "guest")] {
        assert!(conn.status().connected(), "{who} stays connected");
    }
    let to_db = confirm_channel(&master).await;
    publish(&to_db, "", &names::minion_queue(DB), b"uptime").await;
    let db_ch = channel(&db).await;
    let mut db_commands = consume(
        &db_ch,
        &names::minion_queue(DB),
        BasicConsumeOptions::default(),
    )
    .await;
    assert_eq!(body(&next_delivery(&mut db_commands).await), "uptime");
    let guest_ch = confirm_channel(&guest).await;
    publish(&guest_ch, "", names::RESULTS_QUEUE, b"still here").await;
}

#[tokio::test]
async fn a_minion_may_not_publish_events_of_a_minion_whose_id_extends_its_own() {
    let keys = Keys::new();
    let test = "a_minion_may_not_publish_events_of_a_minion_whose_id_extends_its_own";
    let short = KeyPair::generate();
    let mut registry = keys.registry();
    registry
        .accepted
        .insert(short.public(), Permissions::Minion { id: "web".into() });
    let Some(broker) = start(test, vec![], registry).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;
    let web = connect_key(&broker, &short, "web", Role::Minion).await;

    let own = try_publish(
        &web,
        names::EVENTS_EXCHANGE,
        "minion.web.up",
        Default::default(),
    );
    assert!(own.await.expect("its own event").is_ack());
    let posed = try_publish(
        &web,
        names::EVENTS_EXCHANGE,
        "minion.web.01.up",
        Default::default(),
    );
    assert_refused(
        posed.await,
        403,
        "access to routing key 'minion.web.01.up' of exchange 'dispatch.events' in vhost '/' refused for user 'web'",
    );
    assert!(web.status().connected(), "only the channel was closed");
}

/// A [`Registry`] whose operator rejects each key right after admitting it, while its
/// handshake is still running: the broker must not leave that connection open.
struct RejectedWhileLoggingIn {
    registry: Registry,
    broker: Arc<OnceLock<Weak<Broker>>>,
    closed: Arc<AtomicUsize>,
}

impl KeyAuthority for RejectedWhileLoggingIn {
    fn broker_key(&self) -> PublicKey {
        self.registry.broker_key()
    }

    fn admit(
        &self,
        proof: &Proof,
        key: &PublicKey,
        peer: SocketAddr,
    ) -> Result<Permissions, String> {
        let permissions = self.registry.admit(proof, key, peer)?;
        if let Some(broker) = self.broker.get().and_then(Weak::upgrade) {
            let closed = broker.close_connections_of(&proof.id, "rejected while logging in");
            self.closed.fetch_add(closed, Ordering::SeqCst);
        }
        Ok(permissions)
    }
}

#[tokio::test]
async fn a_login_revoked_after_its_key_was_admitted_is_closed_once_open() {
    let keys = Keys::new();
    let test = "a_login_revoked_after_its_key_was_admitted_is_closed_once_open";
    let (cell, closed) = (Arc::new(OnceLock::new()), Arc::new(AtomicUsize::new(0)));
    let authority = RejectedWhileLoggingIn {
        registry: keys.registry(),
        broker: cell.clone(),
        closed: closed.clone(),
    };
    let Some(broker) = start(test, vec![], authority).await else {
        return;
    };
    cell.set(Arc::downgrade(&broker.broker))
        .expect("set the broker once");
    let connected = connect_with(
        &broker,
        SaslClient::new(keys.web.clone(), WEB, Role::Minion, &[]),
    )
    .await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the login in progress was found"
    );
    match connected {
        // The close may reach the client before or after it saw open-ok.
        Err(error) => assert_eq!(amqp_code(&error), Some(320), "got: {error}"),
        Ok(web) => {
            eventually("the revoked login is closed", || async {
                !web.status().connected()
            })
            .await;
        }
    }
    eventually("the broker forgot the revoked login", || async {
        broker.broker.connections_of(WEB) == 0
    })
    .await;
}

#[tokio::test]
async fn a_plain_minion_user_has_that_minions_rights_only() {
    let keys = Keys::new();
    let test = "a_plain_minion_user_has_that_minions_rights_only";
    let user = dispatch_broker::cli::parse_minion_user(&format!("{WEB}:secret")).unwrap();
    let Some(broker) = start(test, vec![user], keys.registry()).await else {
        return;
    };
    let master = connect_key(&broker, &keys.master, "master", Role::Operator).await;
    declare_topology(&master).await;
    let url = format!("amqp://{WEB}:secret@{}/%2f", broker.addr);
    let minion = connect_url(&url).await.expect("the minion user logs in");
    let ch = channel(&minion).await;
    consume(
        &ch,
        &names::minion_queue(WEB),
        BasicConsumeOptions::default(),
    )
    .await;
    let reply = try_publish(
        &minion,
        "",
        names::RESULTS_QUEUE,
        BasicProperties::default(),
    )
    .await;
    assert!(reply.expect("a reply is allowed").is_ack());
    let ch = channel(&minion).await;
    let theirs = timeout(ch.basic_consume(
        names::minion_queue(DB).into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_refused(theirs, 403, "refused");
    let command = try_publish(
        &minion,
        names::COMMANDS_EXCHANGE,
        "all",
        BasicProperties::default(),
    )
    .await;
    assert_refused(command, 403, "refused");
}
