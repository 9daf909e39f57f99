//! The minion against the real embedded broker, in process: the test plays the master
//! (a [`KeyAuthority`] that accepts or leaves the key pending, the topology, signed
//! commands) and reads the minion's signed replies and presence events.

use dispatch_broker::broker::Broker;
use dispatch_broker::config::BrokerConfig;
use dispatch_broker::identity::{KeyAuthority, Permissions};
use dispatch_common::envelope::{Envelope, domain};
use dispatch_common::keys::{KeyPair, PublicKey};
use dispatch_common::message::{Command, Exec, Outcome, Presence, Reply, now_ms};
use dispatch_common::names;
use dispatch_common::sasl::Proof;
use dispatch_common::target::Target;
use dispatch_minion::config::Config;
use dispatch_minion::connector;
use dispatch_minion::daemon::{Minion, MinionError};
use dispatch_minion::journal::Journal;
use dispatch_minion::pin::Trust;
use dispatch_minion::session::Session;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;
use uuid::Uuid;

const ID: &str = "web.01";
const WAIT: Duration = Duration::from_secs(10);

/// The master's side of key logins: pending until `accepted`.
struct Registry {
    key: PublicKey,
    accepted: AtomicBool,
}

impl KeyAuthority for Registry {
    fn broker_key(&self) -> PublicKey {
        self.key
    }

    fn admit(&self, proof: &Proof, _: &PublicKey, _: SocketAddr) -> Result<Permissions, String> {
        if self.accepted.load(Ordering::SeqCst) {
            Ok(Permissions::Minion {
                id: proof.id.clone(),
            })
        } else {
            Err(format!(
                "key pending, ask the operator to run `dispatch key accept {}`",
                proof.id
            ))
        }
    }
}

/// An embedded broker on an ephemeral port, with the topology the master declares, and
/// a `guest` channel consuming the results queue and the minion's events.
struct Master {
    key: KeyPair,
    addr: SocketAddr,
    registry: Arc<Registry>,
    channel: Channel,
    results: Consumer,
    events: Consumer,
    _stop: oneshot::Sender<()>,
}

impl Master {
    async fn start(key: KeyPair, accepted: bool) -> Self {
        let registry = Arc::new(Registry {
            key: key.public(),
            accepted: AtomicBool::new(accepted),
        });
        let config = BrokerConfig {
            key_authority: Some(registry.clone()),
            ..BrokerConfig::default()
        };
        let broker = Arc::new(Broker::open(config).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(dispatch_broker::server::serve(listener, broker, async {
            let _ = stopped.await;
        }));
        let url = format!("amqp://guest:guest@{addr}");
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let none = FieldTable::default;
        for exchange in [names::COMMANDS_EXCHANGE, names::EVENTS_EXCHANGE] {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(exchange.into(), ExchangeKind::Topic, options, none())
                .await
                .unwrap();
        }
        let queue = names::minion_queue(ID);
        for name in [names::RESULTS_QUEUE, queue.as_str(), "test.events"] {
            channel
                .queue_declare(name.into(), durable, none())
                .await
                .unwrap();
        }
        let bind = |queue: &str, exchange: &str, key: String| {
            let channel = channel.clone();
            let (queue, exchange) = (queue.to_owned(), exchange.to_owned());
            async move {
                channel
                    .queue_bind(
                        queue.into(),
                        exchange.into(),
                        key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
            }
        };
        bind(&queue, names::COMMANDS_EXCHANGE, names::minion_binding(ID)).await;
        bind("test.events", names::EVENTS_EXCHANGE, "minion.#".into()).await;
        let consume = |queue: &'static str| {
            let channel = channel.clone();
            async move {
                let options = BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                };
                channel
                    .basic_consume(queue.into(), "".into(), options, FieldTable::default())
                    .await
                    .unwrap()
            }
        };
        let results = consume(names::RESULTS_QUEUE).await;
        let events = consume("test.events").await;
        Self {
            key,
            addr,
            registry,
            channel,
            results,
            events,
            _stop: stop,
        }
    }

    fn command(&self, argv: &[&str]) -> Command {
        Command {
            job_id: Uuid::now_v7(),
            target: Target::pattern("web.*").unwrap(),
            issued_at_ms: now_ms(),
            expires_at_ms: now_ms() + 60_000,
            exec: Exec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                shell: false,
                env: vec![],
                cwd: None,
                timeout_ms: Some(5_000),
            },
            recipients: Vec::new(),
        }
    }

    async fn publish(&self, bytes: &[u8]) {
        self.channel
            .basic_publish(
                names::COMMANDS_EXCHANGE.into(),
                names::minion_binding(ID).into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }

    /// The next reply, checked to be signed by `minion` and published as it (a key
    /// login).
    async fn reply(&mut self, minion: &PublicKey) -> Reply {
        self.reply_with_user_id(minion, Some(ID)).await
    }

    async fn reply_with_user_id(&mut self, minion: &PublicKey, user_id: Option<&str>) -> Reply {
        let delivery = timeout(WAIT, self.results.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            delivery.properties.user_id().as_ref().map(|u| u.as_str()),
            user_id
        );
        let envelope = Envelope::decode(&delivery.data).unwrap();
        envelope.open(domain::REPLY, minion).unwrap()
    }

    /// The routing key of the next presence event, checked to be signed by `minion`
    /// under the presence domain.
    async fn event(&mut self, minion: &PublicKey) -> String {
        let delivery = timeout(WAIT, self.events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let presence: Presence = Envelope::decode(&delivery.data)
            .unwrap()
            .open(domain::PRESENCE, minion)
            .unwrap();
        assert_eq!(presence.minion, ID);
        delivery.routing_key.to_string()
    }

    fn seal(&self, command: &Command) -> Vec<u8> {
        Envelope::seal(domain::COMMAND, &self.key, "master", command)
    }
}

fn config(addr: SocketAddr, dir: &Path) -> Config {
    Config {
        master: format!("amqp://{addr}"),
        external_broker: false,
        id: ID.into(),
        groups: vec!["web".into()],
        data_dir: dir.to_owned(),
        master_fingerprint: None,
        skew: Duration::from_secs(60),
        concurrency: 2,
        reconnect_max: Duration::from_millis(300),
        max_output: 1024,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_minion_gets_in_once_accepted_runs_commands_once_and_drains_on_shutdown() {
    let mut master = Master::start(KeyPair::generate(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::load_or_create(&dir.path().join("minion.key")).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let minion = Minion::new(config(master.addr, dir.path()), pair.clone()).unwrap();
    let daemon = tokio::spawn(minion.run(stop_rx));

    // Refused while pending: nothing pinned yet. Accepted: in without a restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!dir.path().join("master.pub").exists());
    master.registry.accepted.store(true, Ordering::SeqCst);
    assert_eq!(master.event(&pair.public()).await, "minion.web.01.up");
    let pinned = std::fs::read_to_string(dir.path().join("master.pub")).unwrap();
    assert_eq!(PublicKey::from_hex(&pinned), Some(master.key.public()));

    let echo = master.command(&["echo", "hello"]);
    let bytes = Envelope::seal(domain::COMMAND, &master.key, "master", &echo);
    master.publish(&bytes).await;
    let reply = master.reply(&pair.public()).await;
    assert_eq!((reply.job_id, reply.minion.as_str()), (echo.job_id, ID));
    match reply.outcome {
        Outcome::Finished(result) => assert_eq!(result.stdout, b"hello\n"),
        other => panic!("{other:?}"),
    }

    // The same bytes again: refused as a replay, not run.
    master.publish(&bytes).await;
    let reply = master.reply(&pair.public()).await;
    assert_eq!(reply.job_id, echo.job_id);
    assert!(
        matches!(&reply.outcome, Outcome::Refused { reason } if reason.contains("replayed")),
        "{reply:?}"
    );

    // Signed by someone else, or tampered with: logged, never answered (a reply would
    // be a minion-signed refusal under a job id the forger chose). The next reply is
    // the next good command's.
    let forged = master.command(&["id"]);
    let forger = KeyPair::generate();
    master
        .publish(&Envelope::seal(domain::COMMAND, &forger, "master", &forged))
        .await;
    let mut tampered = Envelope::decode(&master.seal(&master.command(&["true"]))).unwrap();
    let mut evil = master.command(&["id"]);
    evil.job_id = echo.job_id;
    tampered.payload = rmp_serde::to_vec_named(&evil).unwrap();
    master
        .publish(&rmp_serde::to_vec_named(&tampered).unwrap())
        .await;
    let good = master.command(&["true"]);
    master.publish(&master.seal(&good)).await;
    let reply = master.reply(&pair.public()).await;
    assert_eq!(reply.job_id, good.job_id, "{reply:?}");
    assert!(matches!(reply.outcome, Outcome::Finished(_)), "{reply:?}");

    // A job running at shutdown finishes within the grace and is replied; then `down`.
    let slow = master.command(&["sleep", "1"]);
    master
        .publish(&Envelope::seal(
            domain::COMMAND,
            &master.key,
            "master",
            &slow,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    let reply = master.reply(&pair.public()).await;
    assert_eq!(reply.job_id, slow.job_id);
    assert!(
        matches!(reply.outcome, Outcome::Finished(ref r) if r.succeeded()),
        "{reply:?}"
    );
    timeout(WAIT, daemon).await.unwrap().unwrap().unwrap();
    let mut events = Vec::new();
    while let Ok(Some(Ok(event))) = timeout(Duration::from_millis(500), master.events.next()).await
    {
        events.push(event.routing_key.to_string());
    }
    assert!(
        events.contains(&"minion.web.01.down".to_owned()),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_re_keyed_master_stops_the_minion_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::load_or_create(&dir.path().join("minion.key")).unwrap();
    let old_master = KeyPair::generate();
    dispatch_minion::pin::save(&dir.path().join("master.pub"), &old_master.public()).unwrap();
    let master = Master::start(KeyPair::generate(), true).await;
    let (_stop, stop_rx) = watch::channel(false);
    let minion = Minion::new(config(master.addr, dir.path()), pair).unwrap();
    let err = timeout(WAIT, minion.run(stop_rx))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, MinionError::MasterKeyChanged(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&old_master.public().fingerprint().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&master.key.public().fingerprint().to_string()),
        "{text}"
    );
    assert!(
        text.contains("remove") && text.contains("master.pub"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cut_short_by_a_crash_is_reported_interrupted_and_never_run_again() {
    let mut master = Master::start(KeyPair::generate(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::load_or_create(&dir.path().join("minion.key")).unwrap();
    // The previous life of the minion took the job, then died.
    let command = master.command(&["touch", "ran"]);
    {
        let (mut journal, _) =
            Journal::open(&dir.path().join("journal"), 60_000, now_ms()).unwrap();
        assert!(
            journal
                .begin(command.job_id, command.expires_at_ms, now_ms())
                .unwrap()
        );
    }
    let (stop, stop_rx) = watch::channel(false);
    let minion = Minion::new(config(master.addr, dir.path()), pair.clone()).unwrap();
    let daemon = tokio::spawn(minion.run(stop_rx));
    let reply = master.reply(&pair.public()).await;
    assert_eq!(
        (reply.job_id, reply.outcome),
        (command.job_id, Outcome::Interrupted)
    );
    // The command comes again: not run.
    master
        .publish(&Envelope::seal(
            domain::COMMAND,
            &master.key,
            "master",
            &command,
        ))
        .await;
    let reply = master.reply(&pair.public()).await;
    assert!(
        matches!(reply.outcome, Outcome::Refused { .. }),
        "{reply:?}"
    );
    stop.send(true).unwrap();
    timeout(WAIT, daemon).await.unwrap().unwrap().unwrap();
    assert!(!dir.path().join("ran").exists() && !Path::new("ran").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_password_login_replies_carry_no_user_id_of_their_own() {
    // PLAIN as `guest`: the broker, like RabbitMQ, refuses (406) a user_id other than
    // the user name, so the minion must not set its id.
    let mut master = Master::start(KeyPair::generate(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::load_or_create(&dir.path().join("minion.key")).unwrap();
    let mut config = config(master.addr, dir.path());
    config.master = format!("amqp://guest:guest@{}", master.addr);
    config.external_broker = true;
    config.master_fingerprint = Some(master.key.public().fingerprint());
    let (stop, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(Minion::new(config, pair.clone()).unwrap().run(stop_rx));
    assert_eq!(master.event(&pair.public()).await, "minion.web.01.up");
    let echo = master.command(&["echo", "plain"]);
    master.publish(&master.seal(&echo)).await;
    let reply = master.reply_with_user_id(&pair.public(), None).await;
    assert_eq!(reply.job_id, echo.job_id);
    match reply.outcome {
        Outcome::Finished(result) => assert_eq!(result.stdout, b"plain\n"),
        other => panic!("{other:?}"),
    }
    stop.send(true).unwrap();
    timeout(WAIT, daemon).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_before_the_queue_is_declared_is_told_it_may_have_been_accepted_a_moment_ago() {
    let master = Master::start(KeyPair::generate(), true).await;
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::generate();
    let mut config = config(master.addr, dir.path());
    config.id = "db.01".into(); // the test master declared only web.01's queue
    let trust = Trust::load(&config.pin_path(), None).unwrap();
    let connected = connector::connect(&config, &pair, &trust).await.unwrap();
    let Err(err) = Session::open(connected.connection, &config, &pair).await else {
        panic!("the queue does not exist");
    };
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "queue {} not found: the key is not accepted yet, or was accepted a moment ago \
             (retrying)",
            names::minion_queue("db.01")
        )
    );
}
