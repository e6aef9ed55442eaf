//! Real servers on loopback for integration tests, started and stopped by the tests
//! themselves.
//!
//! [`Moto`] runs the `moto` server (PyPI `moto[server]`, installed by
//! `scripts/test.sh`) on a free port: S3, Kinesis, Glue and DynamoDB speak the AWS wire
//! protocols there. Each test gets its own server, so tests never share state; the
//! process is killed when the handle drops.
//!
//! [`Redis`] runs `redis-server` (Debian package `redis-server`) the same way: its own
//! port, no persistence, gone when the handle drops; it can be stopped, restarted on
//! its port and frozen for outage tests. [`RedisCluster`] forms a Redis Cluster of such
//! servers.
//!
//! This crate never mocks anything: if a server cannot start, the test fails with the
//! reason (a missing install is an error, not a skip).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it does not check them); set for every client.
pub const ACCESS_KEY: &str = "testing";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testing";
/// The region tests use.
pub const REGION: &str = "us-east-1";

/// Starts the moto server with one behaviour brought in line with AWS: after a shard
/// is split or merged, AWS routes new records to the open child holding their hash
/// key, while moto keeps putting them in the closed parent (the first shard whose
/// range holds the key). Resharding tests need the AWS behaviour.
const MOTO_AS_AWS_ROUTES: &str = r#"
import sys
from hashlib import md5
import moto.kinesis.models as kinesis

_first_match = kinesis.Stream.get_shard_for_key

def _open_shard_for_key(self, partition_key, explicit_hash_key):
    shard = _first_match(self, partition_key, explicit_hash_key)
    if shard is None or shard.is_open:
        return shard
    key = int(explicit_hash_key) if explicit_hash_key else int(md5(partition_key.encode("utf-8")).hexdigest(), 16)
    for candidate in self.shards.values():
        if candidate.is_open and candidate.starting_hash <= key < candidate.ending_hash:
            return candidate
    return shard

kinesis.Stream.get_shard_for_key = _open_shard_for_key

from moto.server import main
main(sys.argv[1:])
"#;

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    addr: SocketAddr,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on loopback")
}

impl Moto {
    /// Starts a moto server and waits until it accepts connections.
    ///
    /// # Panics
    /// If moto is not installed or does not come up within 30 s (test helper).
    pub fn start() -> Moto {
        let port = free_port();
        let mut child = Command::new("python3")
            .args([
                "-c",
                MOTO_AS_AWS_ROUTES,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting `python3 -m moto.server` (pip install 'moto[server]')");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut why = String::new();
                if let Some(err) = child.stderr.take() {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        why.push_str(&line);
                        why.push('\n');
                    }
                }
                panic!("moto server exited with {status}: {why}");
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Its log goes nowhere from now on; a full pipe must not block it.
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(err).lines() {});
        }
        Moto { child, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel and nothing
    /// answers, as behind a network partition.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Environment variables that point AWS clients (SDKs, `object_store`, boto3, the
    /// `lockstep` binary) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
        ]
    }

    /// Runs a boto3 snippet against this server, with `client(service)` in scope;
    /// returns its standard output.
    ///
    /// # Panics
    /// If the snippet fails (test helper).
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\n\
             def client(service):\n    return boto3.client(service, endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\n{code}\n",
            self.endpoint()
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "boto3 snippet failed:\n{code}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates an S3 bucket.
    pub fn create_bucket(&self, bucket: &str) {
        self.boto3(&format!("client('s3').create_bucket(Bucket='{bucket}')"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `redis-server`.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

fn wait_for_listener(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

impl Redis {
    /// Starts `redis-server` on a free port with extra config `args` (e.g.
    /// `["--requirepass", "x"]`) and waits until it accepts connections.
    ///
    /// # Panics
    /// If redis-server is not installed or does not come up within 10 s.
    pub fn start(args: &[&str]) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (apt-get install redis-server)");
        self.child = Some(child);
        wait_for_listener(([127, 0, 0, 1], self.port).into(), "redis-server");
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, on the same port with the same config, after
    /// [`stop`](Self::stop).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (to stop or freeze it in outage tests); 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server ignores SIGKILL's exit until resumed on some kernels.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// A Redis Cluster of masters on loopback (no replicas), its slots spread evenly,
/// ready when [`start`](Self::start) returns.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Redis>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as Redis requires) with extra config
    /// `args`, joins them with `redis-cli --cluster create` and waits until every node
    /// reports the cluster ok.
    ///
    /// # Panics
    /// If a node does not start or the cluster does not form within 20 s.
    pub fn start(masters: usize, args: &[&str]) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "lockstep-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("creating the cluster's directory");
        let nodes: Vec<Redis> = (0..masters)
            .map(|i| {
                // The bus port must be free too, and port + 10000 may not be.
                let bus = free_port().to_string();
                let conf = dir.join(format!("nodes-{i}.conf"));
                let mut node_args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    conf.to_str().expect("a UTF-8 temp dir"),
                    "--dir",
                    dir.to_str().expect("a UTF-8 temp dir"),
                ];
                node_args.extend_from_slice(args);
                Redis::start(&node_args)
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut auth = Vec::new();
        if let Some(i) = args.iter().position(|a| *a == "--requirepass") {
            auth = vec!["-a".to_owned(), args[i + 1].to_owned()];
        }
        let output = Command::new("redis-cli")
            .args(&auth)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("running redis-cli (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(&auth)
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()
                    .expect("running redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok within 20 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes, dir }
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
