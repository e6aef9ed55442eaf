//! `lockstep init [DIR]`: a new feature repository — `lockstep.toml`, one plugin crate,
//! sample events and a README — in which `lockstep backfill` and `lockstep serve` work
//! at once on embedded defaults.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// `lockstep init`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to make the repository (default: the working directory). It may exist,
    /// but must not hold a lockstep.toml or any file init writes.
    pub dir: Option<PathBuf>,
    /// The example group's name (and its plugin crate's): a-z, 0-9 and _.
    #[arg(long, default_value = "my_features")]
    pub name: String,
    /// The Lockstep SDK the plugin depends on, by path (default: the one this binary
    /// was built with, when built from a checkout).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// Sample events the repository starts with: enough to see windows move, small
/// enough to read.
const SAMPLE_EVENTS: usize = 2_000;
const SAMPLE_ENTITIES: u64 = 40;

/// Makes the repository.
pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let sdk = match args.sdk.or_else(crate::scaffold::default_sdk) {
        Some(sdk) => sdk,
        None => {
            bail!("this lockstep was not built from a checkout: name the SDK with --sdk PATH")
        }
    };
    init(&dir, &args.name, &sdk)?;
    let shown = dir.display();
    println!(
        "made a feature repository in {shown}: {file}, plugins/{name}, data/events.jsonl\n\
         next:\n  cd {shown}\n  lockstep apply       # build the plugin, register group {name}\n  \
         lockstep backfill    # history into the offline store (store/), latest rows online (online/)\n  \
         lockstep serve       # http://127.0.0.1:6566/v1/features\n  \
         lockstep stream      # once a group names a Kinesis stream: keep the online store current",
        file = lockstep_config::FILE_NAME,
        name = args.name,
    );
    Ok(())
}

/// Writes the repository into `dir`, refusing to overwrite anything.
pub fn init(dir: &Path, name: &str, sdk: &Path) -> Result<()> {
    let config = dir.join(lockstep_config::FILE_NAME);
    if config.exists() {
        bail!(
            "{} exists: {} is a feature repository already",
            config.display(),
            dir.display()
        );
    }
    let plugin_dir = dir.join("plugins").join(name);
    let files = [
        (config.clone(), config_text(name)),
        (dir.join("data").join("events.jsonl"), sample_events()),
        (dir.join("README.md"), readme(name)),
        (dir.join(".gitignore"), GITIGNORE.to_owned()),
    ];
    for (path, _) in &files {
        if path.exists() {
            bail!(
                "{} exists: init writes it, and overwrites nothing; use an empty directory",
                path.display()
            );
        }
    }
    // The plugin crate first: it checks the name and the SDK, and refuses a folder
    // that holds anything.
    crate::scaffold::new_plugin(name, &plugin_dir, sdk)?;
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn config_text(name: &str) -> String {
    format!(
        r#"# The feature repository: where everything is, and which feature groups exist.
# Relative paths are relative to this file; ${{VAR}} reads the environment.

[offline]
store = "store"              # a directory, or s3://bucket/prefix
# glue_database = "features" # register tables in the AWS Glue Data Catalog
# table_format = "delta"     # plain (default) or delta

[online]
store = "embedded"           # embedded (online/), embedded:DIR, sagemaker, sagemaker:URL

# [cache]
# url = "redis://127.0.0.1:6379"
# ttl = "1h"

[serving]
listen = "127.0.0.1:6566"
timeout = "5ms"

[stream]
lateness = "5s"
state = "state"

[[group]]
name = "{name}"
plugin = "plugins/{name}"    # a crate, built on demand; or a .wasm with sha256 = "…"
version = "0.1.0"            # the plugin manifest's version
batch = {{ source = "data/events.jsonl", format = "json" }}
# stream = {{ kinesis = "events" }}  # groups may share a stream: add field = "kind", equals = "…"
# ttl = "7d"
# owner = "your-team"
"#
    )
}

/// Events in the scaffolded plugin's input schema (`entity`, `ts` in microseconds,
/// `amount`), deterministic: the same bytes every time.
fn sample_events() -> String {
    let start: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        // SplitMix64: a fixed sequence, no dependency.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = String::with_capacity(SAMPLE_EVENTS * 64);
    let mut ts = start;
    for _ in 0..SAMPLE_EVENTS {
        // 1 s to 2 min apart: no two events share an instant.
        ts += 1_000_000 + (next() % 119_000_000) as i64;
        let entity = next() % SAMPLE_ENTITIES;
        let cents = next() % 50_000;
        let amount = if next() % 20 == 0 {
            "null".to_owned()
        } else {
            format!("{}.{:02}", cents / 100, cents % 100)
        };
        out.push_str(&format!(
            "{{\"entity\":\"user-{entity:03}\",\"ts\":{ts},\"amount\":{amount}}}\n"
        ));
    }
    out
}

fn readme(name: &str) -> String {
    format!(
        r#"# Feature repository

`lockstep.toml` says where the stores are and which feature groups exist; the plugin
that computes group `{name}` is the crate in `plugins/{name}`.

```sh
lockstep apply        # build the plugins, show and register what changed
lockstep backfill     # history (data/events.jsonl) into the offline store (store/)
lockstep materialize  # each entity's latest row into the online store (online/)
lockstep serve        # features over HTTP on 127.0.0.1:6566
curl -s localhost:6566/v1/features -d '{{"group":"{name}","entities":["user-001"]}}'
```

Change a plugin's rows? Bump `version` in both the plugin's manifest and
`lockstep.toml`: a changed plugin is refused for a version that already has rows.
Swap the online store by editing `[online]` and running `lockstep materialize`.
"#
    )
}

const GITIGNORE: &str = "/store\n/online\n/state\n/.lockstep\n/plugins/*/target\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_made_once_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = crate::scaffold::default_sdk().expect("built from a checkout");
        let repo = dir.path().join("demo");
        init(&repo, "my_features", &sdk).expect("init");
        let config = lockstep_config::Config::discover(&repo.join("plugins/my_features"))
            .expect("the made config reads");
        let group = config.group("my_features").expect("the example group");
        assert_eq!(group.version, "0.1.0");
        assert_eq!(
            group.batch.as_ref().map(|b| b.source.clone()),
            Some(repo.join("data/events.jsonl").display().to_string())
        );
        let events = std::fs::read_to_string(repo.join("data/events.jsonl")).expect("events");
        assert_eq!(events.lines().count(), SAMPLE_EVENTS);
        assert_eq!(events, sample_events(), "the same bytes every time");
        for line in events.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
            assert!(v["entity"].is_string() && v["ts"].is_i64(), "{line}");
        }
        // Again: refused, and nothing changed.
        std::fs::write(repo.join("README.md"), "mine").expect("write");
        let err = init(&repo, "my_features", &sdk).expect_err("a repository already");
        assert!(err.to_string().contains("lockstep.toml exists"), "{err}");
        assert_eq!(
            std::fs::read_to_string(repo.join("README.md")).expect("read"),
            "mine"
        );
        // A directory holding one of init's files is refused before anything is written.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::fs::write(other.join("README.md"), "theirs").expect("write");
        let err = init(&other, "my_features", &sdk).expect_err("README.md exists");
        assert!(err.to_string().contains("README.md exists"), "{err}");
        assert!(!other.join("lockstep.toml").exists());
        assert!(!other.join("plugins").exists());
        // A bad name is refused by the plugin's rule.
        let err = init(&dir.path().join("bad"), "Bad-Name", &sdk).expect_err("bad name");
        assert!(err.to_string().contains("cannot name a plugin"), "{err}");
    }
}
