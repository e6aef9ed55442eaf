//! The feature repository's one file: `lockstep.toml`.
//!
//! A team keeps its feature groups in git the way Feast users keep
//! `feature_store.yaml`: one file says where the offline store, the online store, the
//! cache and the serving endpoint are, and which groups exist (plugin, version, batch
//! and stream sources, TTL, owner). Every command takes its defaults from it and its
//! flags still override.
//!
//! This crate owns reading that file: finding it ([`Config::discover`] walks up from a
//! directory), parsing it strictly (an unknown key is an error naming the key and its
//! line), resolving `${VAR}` references from the environment, resolving relative paths
//! against the file's directory, and checking what can be checked without I/O beyond
//! the file (group names unique, a `.wasm` plugin pinned by its SHA-256, durations and
//! addresses well formed).
//!
//! It never prints a secret: a cache URL's password is shown as `***` by
//! [`CacheConfig`]'s `Debug` and [`redact_url`], and an error about a value taken
//! from the environment names the variable, never its value. It never builds plugins,
//! reaches a store or starts a runtime: the commands do.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The file's name, looked for in a directory and each of its parents.
pub const FILE_NAME: &str = "lockstep.toml";

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `lockstep.toml` in the directory or any parent.
    #[error(
        "no {FILE_NAME} in {start} or any directory above it (run `lockstep init` to make a \
         feature repository, or pass --config)"
    )]
    NotFound {
        /// Where the search started.
        start: PathBuf,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or holds a key or a type the configuration does
    /// not have. The message names the line and the key.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// A value is well-formed TOML but not a valid setting.
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the value.
        line: usize,
        /// The setting, as a dotted path (`group.txn_velocity.ttl`).
        key: String,
        /// What is wrong, never quoting a value taken from the environment.
        message: String,
    },
}

/// The feature repository's configuration, as read from one `lockstep.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The file's directory: relative paths in it are relative to this.
    pub root: PathBuf,
    /// Where history is written (`[offline]`).
    pub offline: OfflineConfig,
    /// Where the latest rows are kept (`[online]`).
    pub online: OnlineConfig,
    /// The Redis cache in front of the online store (`[cache]`), if any.
    pub cache: Option<CacheConfig>,
    /// The inference read path (`[serving]`).
    pub serving: ServingConfig,
    /// The stream host (`[stream]`).
    pub stream: StreamConfig,
    /// The feature groups (`[[group]]`), in file order.
    pub groups: Vec<GroupConfig>,
}

/// `[offline]`: the offline store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineConfig {
    /// A directory (resolved against the repository root) or `s3://bucket/prefix`.
    pub store: String,
    /// Register tables and partitions in this AWS Glue database, if set.
    pub glue_database: Option<String>,
    /// `plain` (one Parquet file per hour) or `delta` (a Delta Lake table).
    pub table_format: TableFormat,
}

/// How a group version is kept in the offline store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// One Parquet file per hour, each replaced atomically.
    Plain,
    /// A Delta Lake table: a backfill is one commit.
    Delta,
}

/// `[online]`: the online store, in the form the commands' `--online-store` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineConfig {
    /// The embedded store in a directory (resolved against the repository root).
    Embedded {
        /// Its directory.
        path: PathBuf,
    },
    /// The SageMaker Feature Store runtime API: AWS itself, or an endpoint such as
    /// `featurestore-local`.
    SageMaker {
        /// The endpoint; AWS's when absent.
        endpoint: Option<String>,
    },
}

impl OnlineConfig {
    /// The `--online-store` argument that names this store.
    pub fn to_arg(&self) -> String {
        match self {
            OnlineConfig::Embedded { path } => format!("embedded:{}", path.display()),
            OnlineConfig::SageMaker { endpoint: None } => "sagemaker".into(),
            OnlineConfig::SageMaker {
                endpoint: Some(url),
            } => format!("sagemaker:{url}"),
        }
    }
}

/// `[cache]`: the Redis cache in front of the online store.
#[derive(Clone, PartialEq)]
pub struct CacheConfig {
    /// `redis://[user:password@]host:port` or `redis-cluster://host:port,host:port,…`.
    /// May hold a password: print it with [`redact_url`].
    pub url: String,
    /// Expiry of entries (none: they stay until replaced).
    pub ttl: Option<Duration>,
    /// XFetch β: how early entries refresh before they expire (0: never).
    pub xfetch_beta: Option<f64>,
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &redact_url(&self.url))
            .field("ttl", &self.ttl)
            .field("xfetch_beta", &self.xfetch_beta)
            .finish()
    }
}

/// `[serving]`: the inference read path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    /// Address `serve` listens on.
    pub listen: SocketAddr,
    /// A request's hard deadline.
    pub timeout: Duration,
    /// Where every answer is logged (a directory or `s3://…`), if anywhere.
    pub log_features: Option<String>,
}

/// `[stream]`: the stream host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// How late an event may arrive and still be applied in order.
    pub lateness: Duration,
    /// Checkpoints and logs (resolved against the repository root).
    pub state: PathBuf,
}

/// A `[[group]]`: one feature group and where its events come from.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// The group's name (the plugin's manifest must name the same group).
    pub name: String,
    /// The plugin that computes it.
    pub plugin: PluginSource,
    /// The group version the rows are written under.
    pub version: String,
    /// Where the batch host reads history, if it does.
    pub batch: Option<BatchSource>,
    /// The Kinesis stream the stream host reads, if any.
    pub stream: Option<StreamSource>,
    /// Rows older than this are not served or joined (none: no limit).
    pub ttl: Option<Duration>,
    /// A default-feature snapshot (JSON) replacing the manifest's defaults.
    pub defaults: Option<PathBuf>,
    /// The KMS key every object of this group is encrypted under on S3.
    pub kms_key: Option<String>,
    /// Who answers for the group.
    pub owner: Option<String>,
    /// The tenant whose token may read it.
    pub tenant: Option<String>,
}

/// `[group.stream]`: the Kinesis stream a group's events arrive on, and which of its
/// records the group takes when several groups share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSource {
    /// The stream's name.
    pub kinesis: String,
    /// `field = "kind"`, `equals = "txn"`: the group takes the records whose top-level
    /// field holds the value (`None`: every record).
    pub route: Option<StreamRoute>,
}

/// Which records of a shared stream a group takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamRoute {
    /// A top-level field of the records.
    pub field: String,
    /// The value (a string; `"7"` also matches the JSON number 7).
    pub equals: String,
}

/// Where a group's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A plugin crate, built on demand (reproducibly) into a component.
    Crate {
        /// The crate's directory.
        dir: PathBuf,
    },
    /// A built component, pinned by the SHA-256 of its bytes.
    Component {
        /// The `.wasm` file.
        path: PathBuf,
        /// The SHA-256 its bytes must have (64 lowercase hex digits).
        sha256: String,
    },
}

/// Where the batch host reads a group's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSource {
    /// A file, a directory or a glob (resolved against the repository root), or
    /// `s3://bucket/…`.
    pub source: String,
    /// `parquet`, `csv` or `json` (default: from the file extension).
    pub format: Option<SourceFormat>,
    /// Shapes the source into the plugin's input: `SELECT … FROM source`.
    pub sql: Option<String>,
}

/// A batch source's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Parquet files.
    Parquet,
    /// CSV with a header.
    Csv,
    /// JSON lines.
    Json,
}

impl Config {
    /// The `lockstep.toml` in `start` or the nearest directory above it.
    pub fn find(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .map(|dir| dir.join(FILE_NAME))
            .find(|candidate| candidate.is_file())
    }

    /// Reads the `lockstep.toml` in `start` or the nearest directory above it.
    pub fn discover(start: &Path) -> Result<Config, ConfigError> {
        let path = Config::find(start).ok_or_else(|| ConfigError::NotFound {
            start: start.to_owned(),
        })?;
        Config::load(&path)
    }

    /// Reads `path`, resolving `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `path`, resolving `${VAR}` with `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let root = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let cx = Resolver {
            path,
            text,
            env,
            root: &root,
        };
        cx.config(raw)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The groups called `names` in that order, or every group when `names` is empty;
    /// an unknown name is an error that lists the known ones.
    pub fn groups_named(&self, names: &[String]) -> Result<Vec<&GroupConfig>, String> {
        if names.is_empty() {
            return Ok(self.groups.iter().collect());
        }
        names
            .iter()
            .map(|name| {
                self.group(name).ok_or_else(|| {
                    let known: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
                    format!(
                        "no group `{name}` in {} (groups: {})",
                        self.path.display(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )
                })
            })
            .collect()
    }
}

/// `url` with the password of its user part (`scheme://user:password@host`) shown as
/// `***`; anything else as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, hosts)) => {
            let user = match user.split_once(':') {
                Some((name, _)) => format!("{name}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The file as written: every key it may hold, nothing else (`deny_unknown_fields`),
/// strings with their spans for errors and `${VAR}` resolution.
mod raw {
    use super::{SourceFormat, TableFormat};
    use serde::Deserialize;
    use toml::Spanned;

    pub type Text = Spanned<String>;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        #[serde(default)]
        pub offline: Option<Offline>,
        #[serde(default)]
        pub online: Option<Online>,
        #[serde(default)]
        pub cache: Option<Cache>,
        #[serde(default)]
        pub serving: Option<Serving>,
        #[serde(default)]
        pub stream: Option<Stream>,
        #[serde(default)]
        pub group: Vec<Spanned<Group>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Offline {
        pub store: Option<Text>,
        pub glue_database: Option<Text>,
        pub table_format: Option<TableFormat>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Online {
        pub store: Text,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cache {
        pub url: Text,
        pub ttl: Option<Text>,
        pub xfetch_beta: Option<Spanned<f64>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Serving {
        pub listen: Option<Text>,
        pub timeout: Option<Text>,
        pub log_features: Option<Text>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Stream {
        pub lateness: Option<Text>,
        pub state: Option<Text>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Group {
        pub name: Text,
        pub plugin: Text,
        pub sha256: Option<Text>,
        pub version: Text,
        pub batch: Option<Batch>,
        pub stream: Option<GroupStream>,
        pub ttl: Option<Text>,
        pub defaults: Option<Text>,
        pub kms_key: Option<Text>,
        pub owner: Option<Text>,
        pub tenant: Option<Text>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Batch {
        pub source: Text,
        pub format: Option<SourceFormat>,
        pub sql: Option<Text>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GroupStream {
        pub kinesis: Text,
        pub field: Option<Text>,
        pub equals: Option<Text>,
    }
}

/// Turns the file as written into a [`Config`]: values resolved and checked, errors
/// located.
struct Resolver<'a> {
    path: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    root: &'a Path,
}

/// A resolved string and whether any of it came from the environment (then an error
/// must not quote it).
struct Value {
    text: String,
    from_env: bool,
    line: usize,
}

impl Resolver<'_> {
    fn line_of(&self, at: usize) -> usize {
        let at = at.min(self.text.len());
        self.text.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// `text` with every `${VAR}` replaced by the variable's value; `$$` is a `$`.
    fn value(&self, text: &Spanned<String>, key: &str) -> Result<Value, ConfigError> {
        let line = self.line_of(text.span().start);
        let raw = text.get_ref();
        let mut out = String::with_capacity(raw.len());
        let mut from_env = false;
        let mut rest = raw.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail.find('}').ok_or_else(|| {
                    self.invalid(
                        line,
                        key,
                        "`${` without its closing `}` (write `$$` for a `$`)",
                    )
                })?;
                let name = &tail[..end];
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(self.invalid(
                        line,
                        key,
                        format!("`${{{name}}}` is not an environment variable name"),
                    ));
                }
                let found = (self.env)(name).ok_or_else(|| {
                    self.invalid(
                        line,
                        key,
                        format!("the environment variable {name} is not set"),
                    )
                })?;
                out.push_str(&found);
                from_env = true;
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(Value {
            text: out,
            from_env,
            line,
        })
    }

    fn string(&self, text: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let v = self.value(text, key)?;
        if v.text.trim().is_empty() {
            return Err(self.invalid(v.line, key, "must not be empty"));
        }
        Ok(v.text)
    }

    fn optional(
        &self,
        text: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        text.as_ref().map(|t| self.string(t, key)).transpose()
    }

    /// What an error may say of a value: the value itself, unless it came from the
    /// environment.
    fn shown(v: &Value) -> String {
        if v.from_env {
            "the value from the environment".to_owned()
        } else {
            format!("`{}`", v.text)
        }
    }

    fn duration(&self, text: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let v = self.value(text, key)?;
        humantime::parse_duration(v.text.trim()).map_err(|_| {
            self.invalid(
                v.line,
                key,
                format!(
                    "{} is not a duration like 20ms, 5s, 10m, 1h or 7d",
                    Self::shown(&v)
                ),
            )
        })
    }

    /// A local path (resolved against the repository root) or a URL, kept as given.
    fn location(&self, text: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = self.string(text, key)?;
        if s.contains("://") {
            Ok(s)
        } else {
            Ok(self.path_in_root(&s).display().to_string())
        }
    }

    fn path_in_root(&self, s: &str) -> PathBuf {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }

    fn config(&self, raw: raw::File) -> Result<Config, ConfigError> {
        let offline = match &raw.offline {
            Some(o) => OfflineConfig {
                store: match &o.store {
                    Some(s) => self.location(s, "offline.store")?,
                    None => self.root.join("store").display().to_string(),
                },
                glue_database: self.optional(&o.glue_database, "offline.glue_database")?,
                table_format: o.table_format.unwrap_or(TableFormat::Plain),
            },
            None => OfflineConfig {
                store: self.root.join("store").display().to_string(),
                glue_database: None,
                table_format: TableFormat::Plain,
            },
        };
        let online = match &raw.online {
            Some(o) => self.online(&o.store)?,
            None => OnlineConfig::Embedded {
                path: self.root.join("online"),
            },
        };
        let cache = raw
            .cache
            .as_ref()
            .map(|c| -> Result<CacheConfig, ConfigError> {
                let url = self.value(&c.url, "cache.url")?;
                if !(url.text.starts_with("redis://")
                    || url.text.starts_with("rediss://")
                    || url.text.starts_with("redis-cluster://"))
                {
                    // Never quoted: a cache URL may carry a password.
                    return Err(self.invalid(
                        url.line,
                        "cache.url",
                        "must start with redis://, rediss:// or redis-cluster://",
                    ));
                }
                let xfetch_beta = match &c.xfetch_beta {
                    Some(b) if !(b.get_ref().is_finite() && *b.get_ref() >= 0.0) => {
                        return Err(self.invalid(
                            self.line_of(b.span().start),
                            "cache.xfetch_beta",
                            "must be a finite number ≥ 0",
                        ));
                    }
                    Some(b) => Some(*b.get_ref()),
                    None => None,
                };
                Ok(CacheConfig {
                    url: url.text,
                    ttl: c
                        .ttl
                        .as_ref()
                        .map(|t| self.duration(t, "cache.ttl"))
                        .transpose()?,
                    xfetch_beta,
                })
            })
            .transpose()?;
        let serving = {
            let s = raw.serving.as_ref();
            let listen = match s.and_then(|s| s.listen.as_ref()) {
                Some(t) => {
                    let v = self.value(t, "serving.listen")?;
                    v.text.parse::<SocketAddr>().map_err(|_| {
                        self.invalid(
                            v.line,
                            "serving.listen",
                            format!("{} is not an address like 127.0.0.1:6566", Self::shown(&v)),
                        )
                    })?
                }
                None => SocketAddr::from(([127, 0, 0, 1], 6566)),
            };
            ServingConfig {
                listen,
                timeout: match s.and_then(|s| s.timeout.as_ref()) {
                    Some(t) => self.duration(t, "serving.timeout")?,
                    None => Duration::from_millis(5),
                },
                log_features: match s.and_then(|s| s.log_features.as_ref()) {
                    Some(t) => Some(self.location(t, "serving.log_features")?),
                    None => None,
                },
            }
        };
        let stream = {
            let s = raw.stream.as_ref();
            StreamConfig {
                lateness: match s.and_then(|s| s.lateness.as_ref()) {
                    Some(t) => self.duration(t, "stream.lateness")?,
                    None => Duration::from_secs(5),
                },
                state: match s.and_then(|s| s.state.as_ref()) {
                    Some(t) => self.path_in_root(&self.string(t, "stream.state")?),
                    None => self.root.join("state"),
                },
            }
        };
        let mut names = BTreeSet::new();
        let mut groups = Vec::with_capacity(raw.group.len());
        for g in &raw.group {
            let group = self.group(g.get_ref())?;
            if !names.insert(group.name.clone()) {
                return Err(self.invalid(
                    self.line_of(g.get_ref().name.span().start),
                    "group.name",
                    format!("a second group named `{}`", group.name),
                ));
            }
            groups.push(group);
        }
        Ok(Config {
            path: self.path.to_owned(),
            root: self.root.to_owned(),
            offline,
            online,
            cache,
            serving,
            stream,
            groups,
        })
    }

    fn online(&self, store: &Spanned<String>) -> Result<OnlineConfig, ConfigError> {
        let v = self.value(store, "online.store")?;
        let text = v.text.as_str();
        if text == "embedded" {
            return Ok(OnlineConfig::Embedded {
                path: self.root.join("online"),
            });
        }
        if let Some(dir) = text.strip_prefix("embedded:")
            && !dir.is_empty()
        {
            return Ok(OnlineConfig::Embedded {
                path: self.path_in_root(dir),
            });
        }
        if text == "sagemaker" {
            return Ok(OnlineConfig::SageMaker { endpoint: None });
        }
        if let Some(url) = text.strip_prefix("sagemaker:")
            && (url.starts_with("http://") || url.starts_with("https://"))
        {
            return Ok(OnlineConfig::SageMaker {
                endpoint: Some(url.to_owned()),
            });
        }
        Err(self.invalid(
            v.line,
            "online.store",
            format!(
                "{} is not one of embedded, embedded:DIR, sagemaker, sagemaker:URL",
                Self::shown(&v)
            ),
        ))
    }

    fn group(&self, g: &raw::Group) -> Result<GroupConfig, ConfigError> {
        let name = self.string(&g.name, "group.name")?;
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(self.invalid(
                self.line_of(g.name.span().start),
                "group.name",
                format!("`{name}` may hold only letters, digits, `_` and `-`"),
            ));
        }
        let key = |field: &str| format!("group.{name}.{field}");
        let plugin_text = self.string(&g.plugin, &key("plugin"))?;
        let plugin_line = self.line_of(g.plugin.span().start);
        let plugin = if plugin_text.ends_with(".wasm") {
            let sha = g.sha256.as_ref().ok_or_else(|| {
                self.invalid(
                    plugin_line,
                    &key("plugin"),
                    "a built component must be pinned: add `sha256 = \"…\"` (the SHA-256 of \
                     its bytes, as `lockstep plugin inspect` prints it), or name the plugin \
                     crate's directory to have it built",
                )
            })?;
            let sha256 = self.string(sha, &key("sha256"))?.to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.invalid(
                    self.line_of(sha.span().start),
                    &key("sha256"),
                    "must be 64 hex digits",
                ));
            }
            PluginSource::Component {
                path: self.path_in_root(&plugin_text),
                sha256,
            }
        } else {
            if let Some(sha) = &g.sha256 {
                return Err(self.invalid(
                    self.line_of(sha.span().start),
                    &key("sha256"),
                    "only a `.wasm` plugin is pinned by hash; a crate is built, and its \
                     component's hash is what `lockstep apply` registers",
                ));
            }
            PluginSource::Crate {
                dir: self.path_in_root(&plugin_text),
            }
        };
        let version = self.string(&g.version, &key("version"))?;
        let batch = g
            .batch
            .as_ref()
            .map(|b| -> Result<BatchSource, ConfigError> {
                Ok(BatchSource {
                    source: self.location(&b.source, &key("batch.source"))?,
                    format: b.format,
                    sql: self.optional(&b.sql, &key("batch.sql"))?,
                })
            })
            .transpose()?;
        let stream = g
            .stream
            .as_ref()
            .map(|s| -> Result<StreamSource, ConfigError> {
                let kinesis = self.string(&s.kinesis, &key("stream.kinesis"))?;
                let field = self.optional(&s.field, &key("stream.field"))?;
                let equals = self.optional(&s.equals, &key("stream.equals"))?;
                let route = match (field, equals) {
                    (Some(field), Some(equals)) if !field.is_empty() => {
                        Some(StreamRoute { field, equals })
                    }
                    (None, None) => None,
                    _ => {
                        let at = s
                            .field
                            .as_ref()
                            .or(s.equals.as_ref())
                            .map_or(self.line_of(s.kinesis.span().start), |t| {
                                self.line_of(t.span().start)
                            });
                        return Err(self.invalid(
                            at,
                            &key("stream"),
                            "`field` and `equals` go together: the group takes the records \
                             whose top-level `field` holds `equals` (e.g. field = \"kind\", \
                             equals = \"txn\")",
                        ));
                    }
                };
                Ok(StreamSource { kinesis, route })
            })
            .transpose()?;
        Ok(GroupConfig {
            plugin,
            version,
            batch,
            stream,
            ttl: g
                .ttl
                .as_ref()
                .map(|t| self.duration(t, &key("ttl")))
                .transpose()?,
            defaults: self
                .optional(&g.defaults, &key("defaults"))?
                .map(|d| self.path_in_root(&d)),
            kms_key: self.optional(&g.kms_key, &key("kms_key"))?,
            owner: self.optional(&g.owner, &key("owner"))?,
            tenant: self.optional(&g.tenant, &key("tenant"))?,
            name,
        })
    }
}

#[cfg(test)]
mod tests;
