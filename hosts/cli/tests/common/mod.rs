//! Helpers shared by the CLI test files (each file uses some of them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// Runs the `lockstep` binary with `args`.
pub fn lockstep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .expect("run lockstep")
}

/// Process output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A path under the repository root.
pub fn repo(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Builds a plugin crate once per features, each variant in its own target
/// directory so that no build overwrites another's component.
pub fn built(crate_dir: &Path, features: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let id = format!("{}:{}", crate_dir.display(), features.join(","));
    let mut map = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(id)
        .or_insert_with(|| {
            let options = lockstep_build::BuildOptions {
                features: features.iter().map(|f| f.to_string()).collect(),
                verbose: false,
                target_dir: (!features.is_empty()).then(|| {
                    Path::new(env!("CARGO_TARGET_TMPDIR"))
                        .join(format!("variant-{}", features.join("-")))
                }),
            };
            let out = lockstep_build::build(crate_dir, &options).expect("build plugin");
            // A private copy: later builds cannot change the bytes under a test.
            let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "{}-{}.wasm",
                crate_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("plugin"),
                &out.sha256[..16]
            ));
            std::fs::copy(&out.path, &copy).expect("copy component");
            copy
        })
        .clone()
}

pub fn plugin(name: &str) -> PathBuf {
    built(&repo("plugins").join(name), &[])
}

/// The group version a built plugin writes.
pub fn group(wasm: &Path) -> lockstep_online::GroupRef {
    let runtime = lockstep_runtime::Runtime::new(lockstep_runtime::RuntimeConfig::default())
        .expect("runtime");
    let plugin = runtime.load_file(wasm).expect("load plugin");
    lockstep_online::GroupRef::of(plugin.manifest(), plugin.hash())
}

/// A featurestore-local process, killed on drop.
pub struct FeatureStoreLocal {
    /// The process.
    pub child: Child,
    /// Its endpoint, http://127.0.0.1:PORT.
    pub url: String,
}

impl FeatureStoreLocal {
    /// Starts one on a free port, keeping its data in `data`, with `groups`
    /// (`NAME=ID[:EVENT_TIME]`).
    pub fn start(data: &Path, groups: &[&str]) -> FeatureStoreLocal {
        FeatureStoreLocal::start_on(data, groups, lockstep_testkit::free_port())
    }

    /// [`Self::start`] on `port`.
    pub fn start_on(data: &Path, groups: &[&str], port: u16) -> FeatureStoreLocal {
        let mut args = vec![
            "featurestore-local".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data".into(),
            s(data).to_owned(),
        ];
        for g in groups {
            args.extend(["--group".to_owned(), g.to_string()]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn featurestore-local");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the listening line");
        assert!(first.contains("listening on"), "{first}");
        FeatureStoreLocal {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs a boto3 snippet with `fs` (a featurestore-runtime client) in scope.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\n\
             fs = boto3.client('sagemaker-featurestore-runtime', endpoint_url='{}', \
             region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x')\n{code}\n",
            self.url
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3 snippet failed:\n{code}\n{}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for FeatureStoreLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `lockstep serve` process, killed on drop.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// Its base URL, http://127.0.0.1:PORT.
    pub base: String,
}

impl Serve {
    /// Spawns `command` (a `lockstep serve …` with its stdout free) and waits for the
    /// line that names the bound address.
    pub fn spawn(mut command: Command) -> Serve {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn lockstep serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the listening line");
        let base = first
            .trim()
            .strip_prefix("lockstep serve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_owned();
        Serve { child, base }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to `base` (`http://host:port`): the status and the body.
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(base, method, path, token, body);
    (status, body)
}

/// One HTTP/1.1 request to `base`: the status, the header lines and the body.
pub fn http_full(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    (status, head, body)
}
