//! Real servers on loopback for integration tests, started and stopped by the tests
//! themselves.
//!
//! [`Moto`] runs the `moto` server (PyPI `moto[server]`, installed by
//! `scripts/test.sh`) on a free port: S3, Kinesis, Glue and DynamoDB speak the AWS wire
//! protocols there. Each test gets its own server, so tests never share state; the
//! process is killed when the handle drops.
//!
//! [`Redis`] runs `redis-server` (Debian package `redis-server`) the same way: its own
//! port, no persistence, gone when the handle drops.
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
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` on a free port with extra config `args` (e.g.
    /// `["--requirepass", "x"]`) and waits until it accepts connections.
    ///
    /// # Panics
    /// If redis-server is not installed or does not come up within 10 s.
    pub fn start(args: &[&str]) -> Redis {
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .expect("starting redis-server (apt-get install redis-server)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (to stop or freeze it in outage tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
