//! Harness for the broker integration tests (`tests/broker_*.rs`).
//!
//! Every test talks to a real broker over real TCP:
//!
//! - by default [`TestBroker::start`] runs the `dispatch-broker` binary of this package on
//!   `127.0.0.1:0` in a temporary data dir and reads back the address it printed;
//! - when `DISPATCH_TEST_BROKER_URL` is set (e.g.
//!   `amqp://guest:guest@127.0.0.1:5672/%2f`), every test uses that broker instead, which
//!   is how the same checks run against RabbitMQ. Tests that need the broker process itself
//!   (signals, command-line flags) call [`TestBroker::start_process`], which returns `None`
//!   and says so on stderr in that case. Such a broker can be stopped or killed and then
//!   [restarted](TestBroker::restart) on the same data dir, which outlives every run.
//!
//! Every await goes through [`timeout`], so a broker that never answers fails the test
//! instead of hanging it. Names come from [`unique`], so tests can run in parallel against
//! one shared broker. [`raw`] speaks AMQP frame by frame over a plain `TcpStream` for the
//! checks lapin cannot make (bad headers, oversized frames, heartbeats).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Environment variable naming an already running broker to test instead of the binary.
pub const EXTERNAL_URL_VAR: &str = "DISPATCH_TEST_BROKER_URL";

/// How long any single await in a test may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test waits to be reasonably sure that something does *not* happen (no
/// further delivery, no message left). A bounded wait, never used to order events.
pub const QUIET_PERIOD: Duration = Duration::from_millis(400);

/// Awaits `fut`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn timeout<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(output) => output,
        Err(_) => panic!("a broker operation did not complete within {STEP_TIMEOUT:?}"),
    }
}

/// A name no other test (or earlier run against the same external broker) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("test.{prefix}.{}.{nanos:x}.{n}", std::process::id())
}

/// The dispatch-broker process behind a [`TestBroker`], and the temporary dir that holds
/// its data dir and logs across restarts.
struct Process {
    child: Child,
    /// Kept open so the broker never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// Holds `data/` (the `--data-dir`) and `broker.N.log` (stderr of run N).
    home: tempfile::TempDir,
    /// Flags after `--listen` and `--data-dir`, reused by [`TestBroker::restart`].
    args: Vec<String>,
    /// Runs so far, counting this one.
    runs: u32,
    log_path: PathBuf,
}

/// A freshly started dispatch-broker process and where it listens.
struct Launched {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    log_path: PathBuf,
}

/// A broker under test: either our own binary, or the external one named by
/// [`EXTERNAL_URL_VAR`].
pub struct TestBroker {
    addr: SocketAddr,
    user: String,
    password: String,
    vhost: String,
    process: Option<Process>,
}

impl TestBroker {
    /// The broker every ordinary test uses: the external one if configured, else a fresh
    /// `dispatch-broker` with default flags.
    pub async fn start() -> TestBroker {
        match external_url() {
            Some(url) => TestBroker::external(&url),
            None => TestBroker::spawn(&[]).await,
        }
    }

    /// A fresh `dispatch-broker` process started with `args` (after `--listen` and
    /// `--data-dir`), or `None` with a visible note when the tests run against an external
    /// broker, whose process and flags are not ours to control.
    pub async fn start_process(test: &str, args: &[&str]) -> Option<TestBroker> {
        if external_url().is_some() {
            eprintln!(
                "SKIPPED {test}: it needs the dispatch-broker process itself, \
                 and {EXTERNAL_URL_VAR} points the tests at an external broker"
            );
            return None;
        }
        Some(TestBroker::spawn(args).await)
    }

    fn external(url: &str) -> TestBroker {
        let uri: lapin::uri::AMQPUri = url
            .parse()
            .unwrap_or_else(|e| panic!("{EXTERNAL_URL_VAR}={url} is not an AMQP URL: {e}"));
        let host = uri.authority.host.clone();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), uri.authority.port))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the host of {EXTERNAL_URL_VAR}={url}"));
        TestBroker {
            addr,
            user: uri.authority.userinfo.username.clone(),
            password: uri.authority.userinfo.password.clone(),
            vhost: uri.vhost.clone(),
            process: None,
        }
    }

    async fn spawn(args: &[&str]) -> TestBroker {
        let home = tempfile::tempdir().expect("create a temporary data dir");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let launched = launch(home.path(), 1, &args).await;
        TestBroker {
            addr: launched.addr,
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            process: Some(Process {
                child: launched.child,
                _stdout: launched.stdout,
                home,
                args,
                runs: 1,
                log_path: launched.log_path,
            }),
        }
    }

    /// Starts the broker again, with the same flags and the same data dir, after
    /// [`stop`](Self::stop) or [`kill`](Self::kill). It listens on a new port: connect
    /// again afterwards. [`log`](Self::log) then shows the new run's stderr.
    pub async fn restart(&mut self) {
        let process = self
            .process
            .as_mut()
            .expect("restart() needs a broker started by start_process()");
        let exited = process.child.try_wait().expect("check the broker process");
        assert!(
            exited.is_some(),
            "restart() needs the broker stopped or killed first: two brokers must not share \
             a data dir"
        );
        let run = process.runs + 1;
        let launched = launch(process.home.path(), run, &process.args).await;
        process.child = launched.child;
        process._stdout = launched.stdout;
        process.runs = run;
        process.log_path = launched.log_path;
        self.addr = launched.addr;
    }

    /// The `--data-dir` of a broker started by [`start_process`](Self::start_process); it
    /// stays the same across [`restart`](Self::restart)s.
    pub fn data_dir(&self) -> PathBuf {
        let process = self
            .process
            .as_ref()
            .expect("data_dir() needs a broker started by start_process()");
        data_dir_in(process.home.path())
    }

    /// The broker's TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An AMQP URL for the default user, e.g. `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        self.url_for(&self.user, &self.password)
    }

    /// An AMQP URL for other credentials on the same broker and vhost.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        let vhost = self.vhost.replace('%', "%25").replace('/', "%2f");
        format!("amqp://{user}:{password}@{}/{vhost}", self.addr)
    }

    /// The default user's name and password.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// The broker's stderr so far, of its current run since the last
    /// [`restart`](Self::restart) (empty for an external broker).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .and_then(|p| std::fs::read_to_string(&p.log_path).ok())
            .unwrap_or_default()
    }

    /// Sends SIGTERM to the broker process and waits (bounded) for it to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let process = self
            .process
            .as_mut()
            .expect("stop() needs a broker started by start_process()");
        let pid = process.child.id().expect("the broker is still running");
        // `kill` keeps the test crate free of unsafe code and of a signal-handling crate.
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        timeout(process.child.wait())
            .await
            .expect("wait for the broker to exit")
    }

    /// Kills the broker process with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        let process = self
            .process
            .as_mut()
            .expect("kill() needs a broker started by start_process()");
        process.child.start_kill().expect("SIGKILL the broker");
        let _ = timeout(process.child.wait()).await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(process) = self.process.as_mut() {
            let _ = process.child.start_kill();
        }
    }
}

/// The `--data-dir` inside a broker's temporary `home`.
fn data_dir_in(home: &Path) -> PathBuf {
    home.join("data")
}

/// Starts run number `run` of `dispatch-broker` on `127.0.0.1:0` with its data dir and
/// log in `home`, and waits (bounded) for the address it prints when ready.
async fn launch(home: &Path, run: u32, args: &[String]) -> Launched {
    let log_path = home.join(format!("broker.{run}.log"));
    let log = std::fs::File::create(&log_path).expect("create the broker log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatch-broker"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir_in(home))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dispatch-broker");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, stdout.read_line(&mut line)).await;
    let prefix = dispatch_common::READY_LINE_PREFIX;
    let addr = match read {
        Ok(Ok(n)) if n > 0 => line
            .trim_end()
            .strip_prefix(prefix)
            .and_then(|a| a.parse::<SocketAddr>().ok()),
        _ => None,
    };
    let Some(addr) = addr else {
        let _ = child.start_kill();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!(
            "dispatch-broker {args:?} (run {run}) did not print `{prefix}ADDR` within \
             {STEP_TIMEOUT:?} (stdout: {line:?}); its stderr:\n{log}"
        );
    };
    Launched {
        child,
        stdout,
        addr,
        log_path,
    }
}

fn external_url() -> Option<String> {
    std::env::var(EXTERNAL_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Connects lapin to `url` within [`STEP_TIMEOUT`].
pub async fn connect_url(url: &str) -> lapin::Result<Connection> {
    timeout(Connection::connect(url, ConnectionProperties::default())).await
}

/// Connects lapin to the broker as its default user; panics on failure.
pub async fn connect(broker: &TestBroker) -> Connection {
    connect_url(&broker.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", broker.url()))
}

/// Opens a channel on `conn`; panics on failure.
pub async fn channel(conn: &Connection) -> Channel {
    timeout(conn.create_channel())
        .await
        .expect("open a channel")
}

/// Opens a channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    timeout(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
    ch
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn amqp_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Asserts that `result` failed with the AMQP reply code `code`.
pub fn assert_amqp_error<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16) {
    match result {
        Ok(value) => panic!("expected AMQP error {code}, got success: {value:?}"),
        Err(error) => assert_eq!(
            amqp_code(&error),
            Some(code),
            "expected AMQP error {code}, got: {error}"
        ),
    }
}

/// Declares a transient, non-exclusive queue named `name`.
pub async fn declare_queue(ch: &Channel, name: &str) -> lapin::Queue {
    declare_queue_with(ch, name, QueueDeclareOptions::default()).await
}

/// Declares a queue with `options`; panics on failure.
pub async fn declare_queue_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
) -> lapin::Queue {
    timeout(ch.queue_declare(name.into(), options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"))
}

/// Declares a durable (not exclusive, not auto-delete) queue; panics on failure.
pub async fn declare_durable_queue(ch: &Channel, name: &str) -> lapin::Queue {
    declare_queue_with(
        ch,
        name,
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
    )
    .await
}

/// Checks whether a queue exists (passive declare) on a throw-away channel of `conn`,
/// returning its message count, or the error the broker answered with.
pub async fn queue_exists(conn: &Connection, name: &str) -> lapin::Result<u32> {
    let ch = channel(conn).await;
    let queue = timeout(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await?;
    let _ = timeout(ch.close(200, "done".into())).await;
    Ok(queue.message_count())
}

/// Checks whether an exchange exists (passive declare) on a throw-away channel of `conn`.
pub async fn exchange_exists(conn: &Connection, name: &str) -> lapin::Result<()> {
    let ch = channel(conn).await;
    timeout(ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    ))
    .await?;
    let _ = timeout(ch.close(200, "done".into())).await;
    Ok(())
}

/// Declares an exchange of `kind`; panics on failure.
pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    timeout(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// Binds `queue` to `exchange` with `key`; panics on failure.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_with(ch, queue, exchange, key, FieldTable::default()).await
}

/// Binds `queue` to `exchange` with `key` and binding `arguments`; panics on failure.
pub async fn bind_with(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    timeout(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    ))
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

/// Publishes on a channel in confirm mode and waits for the broker's ack.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await
}

/// Publishes with `properties` on a channel in confirm mode and waits for the ack.
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = timeout(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        properties,
    ))
    .await
    .expect("basic.publish");
    let confirmation = timeout(confirm).await.expect("publisher confirm");
    assert!(
        confirmation.is_ack(),
        "publish to {exchange:?}/{key:?} was not acked"
    );
}

/// Starts a consumer with an empty (server-generated) tag.
pub async fn consume(ch: &Channel, queue: &str, options: BasicConsumeOptions) -> Consumer {
    timeout(ch.basic_consume(queue.into(), "".into(), options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("consume from {queue}: {e}"))
}

/// The next delivery of `consumer`; panics if none arrives in time or the consumer ends.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match timeout(consumer.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(e)) => panic!("consumer failed: {e}"),
        None => panic!("consumer was cancelled while a delivery was expected"),
    }
}

/// The next `n` deliveries of `consumer`.
pub async fn next_deliveries(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_delivery(consumer).await);
    }
    out
}

/// Asserts that `consumer` receives nothing during [`QUIET_PERIOD`] (a bounded wait).
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET_PERIOD, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery (tag {}, body {:?})",
                d.delivery_tag,
                String::from_utf8_lossy(&d.data)
            ),
            Some(Err(e)) => panic!("consumer failed while it should stay idle: {e}"),
            None => panic!("consumer was cancelled while it should stay idle"),
        }
    }
}

/// Waits until the consumer's stream ends, i.e. the broker cancelled it.
pub async fn assert_cancelled(consumer: &mut Consumer) {
    loop {
        match timeout(consumer.next()).await {
            None => return,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("consumer failed instead of being cancelled: {e}"),
        }
    }
}

/// Waits for the error that ends `consumer`'s stream (its channel was closed by the
/// broker) and returns it.
pub async fn consumer_error(consumer: &mut Consumer) -> lapin::Error {
    loop {
        match timeout(consumer.next()).await {
            Some(Err(e)) => return e,
            Some(Ok(_)) => continue,
            None => panic!("consumer ended without an error"),
        }
    }
}

/// Retries `check` until it returns true, for state the broker changes asynchronously
/// (e.g. after a connection has gone); fails after [`STEP_TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still not true after {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Body bytes of a delivery as text, for readable assertions.
pub fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

/// AMQP frame by frame over a plain TCP stream, for what lapin cannot do on purpose.
pub mod raw {
    use super::{STEP_TIMEOUT, timeout};
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// The protocol header of AMQP 0-9-1.
    pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

    /// What the broker proposed in `connection.tune`.
    #[derive(Debug, Clone, Copy)]
    pub struct Tune {
        pub channel_max: u16,
        pub frame_max: u32,
        pub heartbeat: u16,
    }

    /// A hand-driven AMQP client connection.
    pub struct RawConnection {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    /// One item read from the socket.
    // Read one at a time in tests, so boxing the frame would only make matching clumsier.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug)]
    pub enum Incoming {
        Frame(AMQPFrame),
        /// The broker closed the TCP connection (or reset it).
        Closed,
    }

    impl RawConnection {
        /// Opens a TCP connection, nothing sent yet.
        pub async fn connect(addr: SocketAddr) -> RawConnection {
            let stream = timeout(TcpStream::connect(addr))
                .await
                .expect("tcp connect");
            RawConnection {
                stream,
                buf: Vec::new(),
            }
        }

        /// Sends raw bytes.
        pub async fn send_bytes(&mut self, bytes: &[u8]) {
            timeout(self.stream.write_all(bytes))
                .await
                .expect("write to the broker");
        }

        /// Serialises and sends one frame.
        pub async fn send_frame(&mut self, frame: &AMQPFrame) {
            let bytes = encode(frame);
            self.send_bytes(&bytes).await;
        }

        /// Sends a method frame.
        pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
            self.send_frame(&AMQPFrame::Method(channel, method)).await;
        }

        /// Reads everything until the broker closes the socket (bounded by the step
        /// timeout) and returns it.
        pub async fn read_to_end(&mut self) -> Vec<u8> {
            let mut out = std::mem::take(&mut self.buf);
            let _ = timeout(self.stream.read_to_end(&mut out)).await;
            out
        }

        /// Reads one frame, or [`Incoming::Closed`] at end of stream.
        pub async fn read(&mut self) -> Incoming {
            self.read_within(STEP_TIMEOUT)
                .await
                .unwrap_or_else(|| panic!("no frame from the broker within {STEP_TIMEOUT:?}"))
        }

        /// Reads one frame within `limit`; `None` if nothing complete arrived in time.
        /// Cancel-safe: partial data stays in the buffer.
        pub async fn read_within(&mut self, limit: std::time::Duration) -> Option<Incoming> {
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if self.buf.len() >= 7 {
                    let size =
                        u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                            as usize;
                    let total = 7 + size + 1;
                    if self.buf.len() >= total {
                        let bytes: Vec<u8> = self.buf.drain(..total).collect();
                        let frame = match parse_frame(bytes.as_slice()) {
                            Ok((_, frame)) => frame,
                            Err(e) => panic!("the broker sent an unparsable frame: {e:?}"),
                        };
                        return Some(Incoming::Frame(frame));
                    }
                }
                let mut chunk = [0u8; 8192];
                match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(Incoming::Closed),
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// Opens channel `ch` and waits for `open-ok`.
        pub async fn open_channel(&mut self, ch: u16) {
            self.send_method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            )
            .await;
            assert!(matches!(
                self.read_method().await,
                (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch
            ));
        }

        /// Puts channel `ch` in confirm mode and waits for `select-ok`.
        pub async fn select_confirms(&mut self, ch: u16) {
            self.send_method(
                ch,
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: false,
                })),
            )
            .await;
            assert!(matches!(
                self.read_method().await,
                (c, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) if c == ch
            ));
        }

        /// Reads the next method frame, skipping heartbeats; panics on anything else.
        pub async fn read_method(&mut self) -> (u16, AMQPClass) {
            loop {
                match self.read().await {
                    Incoming::Frame(AMQPFrame::Method(ch, method)) => return (ch, method),
                    Incoming::Frame(AMQPFrame::Heartbeat) => continue,
                    other => panic!("expected a method frame, got {other:?}"),
                }
            }
        }

        /// Sends the protocol header and reads `connection.start`.
        pub async fn start(&mut self) -> connection::Start {
            self.send_bytes(PROTOCOL_HEADER).await;
            match self.read_method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => start,
                other => panic!("expected connection.start, got {other:?}"),
            }
        }

        /// Sends `connection.start-ok` with PLAIN credentials and reads `connection.tune`.
        pub async fn login(&mut self, user: &str, password: &str) -> Tune {
            let response = format!("\0{user}\0{password}");
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties: client_properties(),
                    mechanism: "PLAIN".into(),
                    response: LongString::from(response),
                    locale: "en_US".into(),
                })),
            )
            .await;
            match self.read_method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => Tune {
                    channel_max: t.channel_max,
                    frame_max: t.frame_max,
                    heartbeat: t.heartbeat,
                },
                other => panic!("expected connection.tune, got {other:?}"),
            }
        }

        /// Sends `connection.tune-ok` with the given values.
        pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max,
                    frame_max,
                    heartbeat,
                })),
            )
            .await;
        }

        /// Sends `connection.open` for `/` and reads `connection.open-ok`.
        pub async fn open(&mut self) {
            self.send_method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            )
            .await;
            match self.read_method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
                other => panic!("expected connection.open-ok, got {other:?}"),
            }
        }

        /// The whole handshake: header, PLAIN login, tune-ok with `frame_max` and
        /// `heartbeat` (channel_max as proposed), open.
        pub async fn handshake(
            addr: SocketAddr,
            (user, password): (&str, &str),
            frame_max: u32,
            heartbeat: u16,
        ) -> (RawConnection, Tune) {
            let mut conn = RawConnection::connect(addr).await;
            conn.start().await;
            let tune = conn.login(user, password).await;
            conn.tune_ok(tune.channel_max, frame_max, heartbeat).await;
            conn.open().await;
            (conn, tune)
        }

        /// Reads until the broker sends `connection.close` and returns its code and text;
        /// panics if the socket closes first.
        pub async fn expect_connection_close(&mut self) -> (u16, String) {
            loop {
                match self.read().await {
                    Incoming::Frame(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                    )) => return (close.reply_code, close.reply_text.to_string()),
                    Incoming::Frame(_) => continue,
                    Incoming::Closed => {
                        panic!("the broker closed the socket without connection.close")
                    }
                }
            }
        }

        /// Reads (bounded) until end of stream, failing if the broker keeps it open.
        pub async fn expect_socket_closed(&mut self) {
            loop {
                match self.read().await {
                    Incoming::Closed => return,
                    Incoming::Frame(_) => continue,
                }
            }
        }

        /// `basic.publish` of `body` to `queue` through the default exchange on channel
        /// `ch`, with `properties`, as one write.
        pub async fn publish(
            &mut self,
            ch: u16,
            queue: &str,
            body: &[u8],
            properties: basic::AMQPProperties,
        ) {
            let mut bytes = encode(&AMQPFrame::Method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "".into(),
                    routing_key: queue.into(),
                    mandatory: false,
                    immediate: false,
                })),
            ));
            bytes.extend(encode(&AMQPFrame::Header(
                ch,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties,
                },
            )));
            bytes.extend(encode(&AMQPFrame::Body(ch, body.to_vec())));
            self.send_bytes(&bytes).await;
        }
    }

    /// Client properties announcing the capabilities lapin announces that change what a
    /// broker sends: RabbitMQ answers a failed login with connection.close 403 only to
    /// clients with `authentication_failure_close`, and cancels consumers of deleted
    /// queues only for `consumer_cancel_notify`.
    pub fn client_properties() -> FieldTable {
        let mut capabilities = FieldTable::default();
        for cap in [
            "authentication_failure_close",
            "consumer_cancel_notify",
            "publisher_confirms",
            "basic.nack",
        ] {
            capabilities.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString("dispatch raw test".into()),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        props
    }

    /// Serialises one frame.
    pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
        let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("serialise a frame");
        ctx.write
    }
}
