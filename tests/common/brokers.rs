//! Real message brokers on ephemeral ports of 127.0.0.1: tansu (the Kafka protocol),
//! rabbitmq-server (AMQP 0-9-1) and nats-server with JetStream. scripts/install-brokers.sh
//! installs them.
//!
//! A test binary that uses them declares, next to `mod common;`:
//!
//! ```ignore
//! #[path = "common/brokers.rs"]
//! mod brokers;
//! ```
//!
//! It is not a submodule of `common`, so that the test binaries that use no broker do not compile
//! it and its client crates.
//!
//! Each broker comes two ways: `shared()`, one instance per test binary that tests isolate
//! themselves on by unique names (`unique`), and `start()`, an instance of the test's own that
//! it may `stop()` and `restart()` on the same ports, for "broker down, then back". Either way
//! the broker process dies with the test process, however that ends: it is spawned from one
//! long-lived thread with SIGKILL as its parent-death signal (a static's destructor never runs,
//! and a panicking test must not leave a broker behind). Owned instances are also killed on drop.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Once, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OnceCell;

use crate::common::{client, free_port, Gateway};

/// Kafka's readiness: tansu starts in well under a second, but a loaded machine stretches that.
const KAFKA_READY: Duration = Duration::from_secs(60);
/// RabbitMQ boots an Erlang VM and its database: ~5 s idle, much longer when builds run beside it.
const RABBITMQ_READY: Duration = Duration::from_secs(90);
/// A failed boot's reason comes first in a log of some 50 lines, before the crash reports.
const RABBITMQ_LOG_LINES: usize = 100;
const NATS_READY: Duration = Duration::from_secs(30);
/// How long the read helpers wait for the records a test expects; only a hang reaches it.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A name no other test of this process uses (`prefix-<pid>-<n>`): topics, exchanges, queues,
/// streams and subjects on a shared broker. Only letters, digits and `-`, valid in all three.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The gateway's view of its brokers

/// Bounds waits that only a hang reaches.
pub const HANG: Duration = Duration::from_secs(60);

/// Waits until the gateway's `/brokers` says `name` is in `state` (`up` or `down`).
pub async fn wait_broker(gw: &Gateway, name: &str, state: &str) -> serde_json::Value {
    let url = format!("http://{}/brokers", gw.admin);
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let body: serde_json::Value = client()
            .get(&url)
            .send()
            .await
            .expect("/brokers")
            .json()
            .await
            .expect("/brokers json");
        let found = body["brokers"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == name).cloned());
        if let Some(b) = found.filter(|b| b["state"] == state) {
            return b;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker `{name}` never became {state}: {body}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let text = client()
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Processes

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` in a process group of its own, so that it dies with this process.
///
/// The parent-death signal fires when the *thread* that forked the child ends, and every test runs
/// on a thread of its own, so a shared broker started by one test would die when that test ends.
/// All brokers are therefore forked by one thread that lives as long as the process.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions (prctl,
    // getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // Had this process died between fork and prctl, no signal would ever come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    // A group of its own: `stop()` kills the broker's helper processes (Erlang's port programs)
    // with it.
    cmd.process_group(0);
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("broker-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the broker spawner thread");
        tx
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .send((cmd, tx))
        .expect("the broker spawner thread lives as long as the process");
    rx.recv()
        .expect("the broker spawner thread answers every request")
}

/// A broker process and its process group; killed on drop.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn spawn(what: &str, cmd: Command) -> Proc {
        let program = cmd.get_program().to_string_lossy().into_owned();
        match spawn_tied(cmd) {
            Ok(child) => Proc { child: Some(child) },
            Err(e) => panic!(
                "{what}: cannot run {program}: {e} (scripts/install-brokers.sh installs the brokers)"
            ),
        }
    }

    /// Sends `signal` to the broker's process group (SIGSTOP / SIGCONT: a broker that hangs).
    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) has no memory-safety preconditions; the group is ours and not yet
            // reaped, so its id cannot have been reused.
            unsafe { libc::kill(-(child.id() as libc::pid_t), signal) };
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        // Reaped: its id (and group id) may be reused now, so `kill` must not signal it.
        self.child = None;
        Some(status)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = child.id() as libc::pid_t;
            // SAFETY: kill(2) has no memory-safety preconditions; the group is ours and not yet
            // reaped, so its id cannot have been reused.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory of the broker's own under target/tmp/brokers, named after this process: a shared
/// broker's directory outlives the process (statics are never dropped), so each process removes
/// those of processes that are gone.
fn work_dir(kind: &str) -> tempfile::TempDir {
    static SWEPT: Once = Once::new();
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("brokers");
    std::fs::create_dir_all(&base).expect("create target/tmp/brokers");
    SWEPT.call_once(|| sweep(&base));
    tempfile::Builder::new()
        .prefix(&format!("{}-{kind}-", std::process::id()))
        .tempdir_in(&base)
        .expect("create a broker's work directory")
}

fn sweep(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The last `lines` lines of each file, headed by its name; what a start failure shows.
fn tails(files: &[PathBuf], lines: usize) -> String {
    let mut out = String::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        out.push_str(&format!("--- {} (last {lines} lines)\n", file.display()));
        for line in &all[from..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The first of `candidates` that exists, else `fallback` (looked up on PATH).
fn program(candidates: &[PathBuf], fallback: &str) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// Polls `probe` until it succeeds; panics with the broker's log tail when the process exits or
/// `timeout` passes. Returns how long it took.
async fn wait_ready<F, Fut>(
    what: &str,
    proc: &mut Proc,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut probe: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut last = String::from("not probed yet");
    loop {
        if let Some(status) = proc.exited() {
            panic!(
                "{what} exited ({status}) before it was ready; last probe: {last}\n{}",
                logs()
            );
        }
        match tokio::time::timeout(Duration::from_secs(10), probe()).await {
            Ok(Ok(())) => {
                let took = started.elapsed();
                eprintln!("{what} ready in {took:.2?}");
                return took;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "the probe itself timed out after 10 s".into(),
        }
        if started.elapsed() > timeout {
            proc.kill();
            panic!(
                "{what} was not ready after {timeout:?}; last probe: {last}\n{}",
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The environment brokers get: nothing of the test's own (tansu reads its settings from
/// variables such as STORAGE_ENGINE, RabbitMQ from RABBITMQ_*), only PATH and a HOME that is
/// their work directory (Erlang writes its cookie there).
fn clean_env(cmd: &mut Command, home: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .current_dir(home)
        .stdin(Stdio::null());
}

/// A TCP relay from a port of 127.0.0.1 to another, on a thread and runtime of its own: it serves
/// every test of the binary, whichever test's runtime started it (each `#[tokio::test]` has its
/// own, gone when that test ends).
struct Relay {
    port: u16,
    commands: tokio::sync::mpsc::UnboundedSender<RelayCommand>,
}

enum RelayCommand {
    Open(mpsc::Sender<io::Result<()>>),
    Close(mpsc::Sender<()>),
}

impl Relay {
    fn start(port: u16, target_port: u16) -> Relay {
        let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the relay's runtime");
                runtime.block_on(relay(port, target_port, rx));
            })
            .expect("start a relay thread");
        let relay = Relay { port, commands };
        relay
            .open()
            .unwrap_or_else(|e| panic!("relay on 127.0.0.1:{port}: {e}"));
        relay
    }

    /// Listens (again); returns once the port accepts.
    fn open(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(RelayCommand::Open(tx))
            .expect("the relay thread runs while its Relay exists");
        rx.recv().expect("the relay answers")
    }

    /// Stops listening and closes every relayed connection; returns once that is done.
    fn close(&self) {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(RelayCommand::Close(tx))
            .expect("the relay thread runs while its Relay exists");
        rx.recv().expect("the relay answers");
    }
}

/// The relay's loop; ends (and with its runtime, every connection) when the `Relay` is dropped.
async fn relay(
    port: u16,
    target_port: u16,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<RelayCommand>,
) {
    use tokio::net::{TcpListener, TcpStream};
    let mut listener: Option<TcpListener> = None;
    // Each connection holds a receiver; a close sends on it.
    let (cut, _) = tokio::sync::broadcast::channel::<()>(1);
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(RelayCommand::Open(reply)) => {
                    let opened = match listener {
                        Some(_) => Ok(()),
                        None => TcpListener::bind(("127.0.0.1", port)).await.map(|l| {
                            listener = Some(l);
                        }),
                    };
                    let _ = reply.send(opened);
                }
                Some(RelayCommand::Close(reply)) => {
                    listener = None;
                    let _ = cut.send(());
                    let _ = reply.send(());
                }
            },
            accepted = accept => {
                let Ok((mut client, _)) = accepted else { continue };
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka (tansu)

/// A tansu broker with in-memory storage: speaks the Kafka protocol, so rdkafka is its client.
///
/// Clients reach it through a relay of the harness (`address()`, also what the broker advertises
/// in metadata). `stop()` closes the relay, so that the broker is down as clients see it: its port
/// refuses connections and open ones are cut. tansu itself keeps running behind it, because its
/// memory storage would not survive a restart, unlike a real Kafka's log: topics would be gone,
/// and an idempotent producer would be stuck retrying UNKNOWN_PRODUCER_ID until its messages time
/// out.
pub struct Kafka {
    relay: Relay,
    /// tansu's own listener, behind the relay.
    broker_port: u16,
    dir: tempfile::TempDir,
    proc: Proc,
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// In order, duplicates kept, as the record carries them.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Timestamp,
}

fn tansu_program() -> PathBuf {
    let tools = std::env::var_os("TOLLGATE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tollgate-tools")));
    let candidates: Vec<PathBuf> = tools.into_iter().map(|t| t.join("bin/tansu")).collect();
    program(&candidates, "tansu")
}

impl Kafka {
    /// A broker of the test's own.
    pub async fn start() -> Kafka {
        let broker_port = free_port();
        let mut kafka = Kafka {
            relay: Relay::start(free_port(), broker_port),
            broker_port,
            dir: work_dir("kafka"),
            proc: Proc { child: None },
        };
        kafka.launch().await;
        kafka
    }

    /// The test binary's shared broker; tests isolate themselves by topic names (`unique`).
    pub async fn shared() -> &'static Kafka {
        static SHARED: OnceCell<Kafka> = OnceCell::const_new();
        SHARED.get_or_init(Kafka::start).await
    }

    async fn launch(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.broker_port);
        let advertised = format!("tcp://{}", self.address());
        let log = self.log_path();
        let mut cmd = Command::new(tansu_program());
        clean_env(&mut cmd, self.dir.path());
        cmd.args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(log_file(&log))
            .stderr(log_file(&log));
        self.proc = Proc::spawn("tansu", cmd);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let address = self.address();
        let log = self.log_path();
        let logs = || tails(std::slice::from_ref(&log), 40);
        let what = format!("tansu on {address}");
        wait_ready(&what, &mut self.proc, KAFKA_READY, logs, || {
            let address = address.clone();
            async move {
                tokio::task::spawn_blocking(move || probe_kafka(&address))
                    .await
                    .map_err(|e| e.to_string())?
            }
        })
        .await;
    }

    /// `127.0.0.1:port`, for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.relay.port)
    }

    pub fn port(&self) -> u16 {
        self.relay.port
    }

    /// A client configuration with this broker as `bootstrap.servers`.
    pub fn client_config(&self) -> ClientConfig {
        kafka_config(&self.address())
    }

    /// Creates `name` with `partitions` partitions and waits until every partition has a leader
    /// (a producer that asks before that is told the topic does not exist).
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .expect("create a Kafka admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = tokio::time::timeout(READ_TIMEOUT, admin.create_topics([&topic], &opts))
            .await
            .unwrap_or_else(|_| panic!("CreateTopics {name} hung\n{}", self.logs()))
            .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}\n{}", self.logs()));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("CreateTopics {topic}: {code}\n{}", self.logs());
            }
        }
        let address = self.address();
        let topic = name.to_owned();
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let (addr, t) = (address.clone(), topic.clone());
            let ready = tokio::task::spawn_blocking(move || topic_ready(&addr, &t, partitions))
                .await
                .expect("metadata task");
            match ready {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("topic {name} has no leaders: {e}\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The first `n` records of `topic`, read from the beginning of every partition, sorted by
    /// partition and offset. Panics when fewer than `n` arrive in time.
    pub async fn read(&self, topic: &str, n: usize) -> Vec<KafkaRecord> {
        let address = self.address();
        let topic = topic.to_owned();
        let read = tokio::task::spawn_blocking(move || read_records(&address, &topic, n))
            .await
            .expect("Kafka read task");
        read.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Takes the broker down as its clients see it: its port refuses connections, and the open
    /// ones are closed. Its topics, records, groups and producer ids stay, as on a real Kafka.
    pub fn stop(&mut self) {
        self.relay.close();
    }

    /// The broker is back on the same port, with the state it had.
    pub async fn restart(&mut self) {
        self.relay
            .open()
            .unwrap_or_else(|e| panic!("listen on {} again: {e}", self.address()));
        self.wait_ready().await;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// The tail of the broker's log, for a failing assertion's message.
    pub fn logs(&self) -> String {
        tails(&[self.log_path()], 40)
    }
}

fn kafka_config(address: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("broker.address.family", "v4")
        // A broker that was just (re)started must not cost the client its default back-off of
        // up to 10 s.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    config
}

/// A metadata request: the broker answers the Kafka protocol and lists itself.
fn probe_kafka(address: &str) -> Result<(), String> {
    let consumer: BaseConsumer = kafka_config(address)
        .create()
        .map_err(|e| format!("client: {e}"))?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(2))
        .map_err(|e| format!("metadata: {e}"))?;
    if metadata.brokers().is_empty() {
        return Err("metadata lists no broker".into());
    }
    Ok(())
}

fn topic_ready(address: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let consumer: BaseConsumer = kafka_config(address).create().map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err("not in metadata".into());
    };
    if let Some(e) = t.error() {
        return Err(format!("{e:?}"));
    }
    let led = t.partitions().iter().filter(|p| p.leader() >= 0).count();
    if led != partitions as usize {
        return Err(format!("{led} of {partitions} partitions have a leader"));
    }
    Ok(())
}

fn read_records(address: &str, topic: &str, n: usize) -> Result<Vec<KafkaRecord>, String> {
    // Assigned partitions, no consumer group: a plain read from offset 0, independent of the
    // broker's group coordination.
    let consumer: BaseConsumer = kafka_config(address)
        .set("group.id", unique("tollgate-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut records = Vec::new();
    while records.len() < n {
        if Instant::now() > deadline {
            return Err(format!(
                "{topic}: {} of {n} records after {READ_TIMEOUT:?}: {records:?}",
                records.len()
            ));
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = polled.map_err(|e| format!("{topic}: {e}"))?;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        records.push(KafkaRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp(),
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

/// A RabbitMQ node of its own: AMQP and Erlang distribution on free ports of 127.0.0.1, node name
/// `tollgate-<amqp port>@localhost`, its database, logs and config in its work directory, no
/// plugins. It runs as the test's user (the Debian wrapper in /usr/sbin would `su` to rabbitmq,
/// a fork that the parent-death signal does not follow).
pub struct RabbitMq {
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    proc: Proc,
}

/// A message fetched from a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpMessage {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: lapin::BasicProperties,
    pub data: Vec<u8>,
}

fn rabbitmq_program() -> PathBuf {
    // Debian's /usr/sbin/rabbitmq-server is a wrapper that `su`s to the rabbitmq user; this is
    // the server script itself.
    program(
        &[PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server")],
        "rabbitmq-server",
    )
}

impl RabbitMq {
    pub async fn start() -> RabbitMq {
        let mut rabbit = RabbitMq {
            port: free_port(),
            dist_port: free_port(),
            dir: work_dir("rabbitmq"),
            proc: Proc { child: None },
        };
        rabbit.configure();
        rabbit.launch().await;
        rabbit
    }

    /// The test binary's shared node; tests isolate themselves by exchange and queue names
    /// (`unique`).
    pub async fn shared() -> &'static RabbitMq {
        static SHARED: OnceCell<RabbitMq> = OnceCell::const_new();
        SHARED.get_or_init(RabbitMq::start).await
    }

    fn node(&self) -> String {
        format!("tollgate-{}@localhost", self.port)
    }

    fn configure(&self) {
        let dir = self.dir.path();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"))
        };
        // Empty: /etc/rabbitmq/rabbitmq-env.conf must not apply.
        write("rabbitmq-env.conf", "");
        // No plugins: the management plugin would want port 15672.
        write("enabled_plugins", "[].\n");
        // The listener comes from RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT.
        write("rabbitmq.conf", "log.file.level = info\n");
    }

    async fn launch(&mut self) {
        let dir = self.dir.path().to_owned();
        let stdout = dir.join("stdout.log");
        let mut cmd = Command::new(rabbitmq_program());
        clean_env(&mut cmd, &dir);
        cmd
            // Without a console the VM must not read stdin; RABBITMQ_ALLOW_INPUT below drops the
            // script's own -noinput.
            .arg("-noinput")
            // The script then execs the VM instead of forking it and waiting: the process we
            // spawn is beam itself, which the parent-death signal and `stop()` reach.
            .env("RABBITMQ_ALLOW_INPUT", "true")
            .env("RABBITMQ_NODENAME", self.node())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            // Distribution on loopback only; epmd too, when this node is the one starting it
            // (an epmd already running on 4369 is shared, and stays after the tests).
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(log_file(&stdout))
            .stderr(log_file(&stdout));
        self.proc = Proc::spawn("rabbitmq-server", cmd);
        let url = self.url();
        let files = self.log_files();
        let logs = || tails(&files, RABBITMQ_LOG_LINES);
        let what = format!("rabbitmq-server {} on 127.0.0.1:{}", self.node(), self.port);
        wait_ready(&what, &mut self.proc, RABBITMQ_READY, logs, || {
            let url = url.clone();
            async move {
                let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close(200, "ready".into()).await;
                Ok(())
            }
        })
        .await;
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from loopback only).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("AMQP connect to {}: {e}\n{}", self.url(), self.logs()))
    }

    async fn channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.expect("open an AMQP channel");
        (conn, channel)
    }

    /// Declares a non-durable exchange of `kind`.
    pub async fn declare_exchange(&self, exchange: &str, kind: lapin::ExchangeKind) {
        let (conn, channel) = self.channel().await;
        channel
            .exchange_declare(
                exchange.into(),
                kind,
                lapin::options::ExchangeDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare exchange {exchange}: {e}"));
        let _ = conn.close(200, "done".into()).await;
    }

    /// Declares a queue of the test's own, binds it to `exchange` with `routing_key`, and returns
    /// its name. The queue outlives the connection, so a test reads it whenever it likes.
    pub async fn bind_queue(&self, exchange: &str, routing_key: &str) -> String {
        let queue = unique("tollgate-test-queue");
        let (conn, channel) = self.channel().await;
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare queue {queue}: {e}"));
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                lapin::options::QueueBindOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {queue} to {exchange} ({routing_key}): {e}"));
        let _ = conn.close(200, "done".into()).await;
        queue
    }

    /// Takes `n` messages from `queue` (basic.get, acknowledged), in queue order. Panics when
    /// fewer arrive in time.
    pub async fn get(&self, queue: &str, n: usize) -> Vec<AmqpMessage> {
        let (conn, channel) = self.channel().await;
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut messages = Vec::new();
        while messages.len() < n {
            let got = channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"));
            match got {
                Some(m) => messages.push(AmqpMessage {
                    exchange: m.delivery.exchange.to_string(),
                    routing_key: m.delivery.routing_key.to_string(),
                    redelivered: m.delivery.redelivered,
                    properties: m.delivery.properties.clone(),
                    data: m.delivery.data.clone(),
                }),
                None if Instant::now() > deadline => panic!(
                    "{queue}: {} of {n} messages after {READ_TIMEOUT:?}: {messages:?}",
                    messages.len()
                ),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let _ = conn.close(200, "done".into()).await;
        messages
    }

    /// Kills the node (SIGKILL: a crash). Its ports stay reserved for `restart()`.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts the node again on the same ports and database.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.launch().await;
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let dir = self.dir.path();
        vec![
            dir.join("stdout.log"),
            dir.join("log").join(format!("{}.log", self.node())),
        ]
    }

    pub fn logs(&self) -> String {
        tails(&self.log_files(), RABBITMQ_LOG_LINES)
    }
}

// ---------------------------------------------------------------------------------------------
// NATS

/// A nats-server with JetStream (file storage in its work directory) on a free client port.
pub struct Nats {
    port: u16,
    dir: tempfile::TempDir,
    proc: Proc,
}

fn nats_program() -> PathBuf {
    // /usr/sbin is not on a normal user's PATH.
    program(&[PathBuf::from("/usr/sbin/nats-server")], "nats-server")
}

impl Nats {
    pub async fn start() -> Nats {
        let mut nats = Nats {
            port: free_port(),
            dir: work_dir("nats"),
            proc: Proc { child: None },
        };
        nats.launch().await;
        nats
    }

    /// The test binary's shared server; tests isolate themselves by stream names and subjects
    /// (`unique`).
    pub async fn shared() -> &'static Nats {
        static SHARED: OnceCell<Nats> = OnceCell::const_new();
        SHARED.get_or_init(Nats::start).await
    }

    async fn launch(&mut self) {
        let dir = self.dir.path().to_owned();
        let log = dir.join("nats.log");
        let mut cmd = Command::new(nats_program());
        clean_env(&mut cmd, &dir);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(dir.join("jetstream"))
        .stdout(log_file(&log))
        .stderr(log_file(&log));
        self.proc = Proc::spawn("nats-server", cmd);
        let url = self.url();
        let logs = || tails(std::slice::from_ref(&log), 40);
        let what = format!("nats-server on 127.0.0.1:{}", self.port);
        wait_ready(&what, &mut self.proc, NATS_READY, logs, || {
            let url = url.clone();
            async move {
                // connect() returns once the server's INFO arrived and CONNECT was answered.
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = client.drain().await;
                Ok(())
            }
        })
        .await;
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("NATS connect to {}: {e}\n{}", self.url(), self.logs()))
    }

    /// Creates a file-backed stream `name` over `subjects`.
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        let js = async_nats::jetstream::new(self.connect().await);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create stream {name} over {subjects:?}: {e}"));
    }

    /// A core NATS subscription to `subject`, registered with the server before this returns (a
    /// message published afterwards, from any connection, reaches it). The subscriber keeps its
    /// connection open.
    pub async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let client = self.connect().await;
        let sub = client
            .subscribe(subject.to_owned())
            .await
            .unwrap_or_else(|e| panic!("subscribe {subject}: {e}"));
        // The server has processed SUB once it answered the PING that flush sends after it.
        client.flush().await.expect("flush the subscription");
        sub
    }

    /// The first `n` messages of stream `name`, in sequence order, with their headers (an
    /// ephemeral pull consumer from the start, no acks).
    pub async fn read_stream(&self, name: &str, n: usize) -> Vec<async_nats::jetstream::Message> {
        use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        use futures_util::StreamExt;
        let js = async_nats::jetstream::new(self.connect().await);
        let stream = js
            .get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("stream {name}: {e}"));
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("consumer on {name}: {e}"));
        let mut messages = consumer
            .messages()
            .await
            .unwrap_or_else(|e| panic!("pull from {name}: {e}"));
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(m))) => got.push(m),
                Ok(Some(Err(e))) => panic!("pull from {name}: {e}"),
                Ok(None) => panic!("{name}: the pull ended after {} of {n}", got.len()),
                Err(_) => panic!(
                    "{name}: {} of {n} messages after {READ_TIMEOUT:?}",
                    got.len()
                ),
            }
        }
        got
    }

    /// Kills the server (SIGKILL: a crash). Its port stays reserved for `restart()`.
    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as a
    /// broker that hangs. [`Nats::resume`] thaws it.
    pub fn pause(&self) {
        self.proc.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server.
    pub fn resume(&self) {
        self.proc.signal(libc::SIGCONT);
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port and JetStream directory.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.launch().await;
    }

    pub fn logs(&self) -> String {
        tails(&[self.dir.path().join("nats.log")], 40)
    }
}
