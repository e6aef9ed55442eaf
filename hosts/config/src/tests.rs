use super::*;
use std::collections::HashMap;

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/repo/lockstep.toml"), &env_of(&[]))
}

const FULL: &str = r#"
[offline]
store = "s3://lake/features"
glue_database = "features"
table_format = "delta"

[online]
store = "sagemaker:http://127.0.0.1:9000"

[cache]
url = "redis://app:${REDIS_PASSWORD}@cache:6379"
ttl = "1h"
xfetch_beta = 1.5

[serving]
listen = "0.0.0.0:7000"
timeout = "20ms"
log_features = "served"

[stream]
lateness = "10m"
state = "/var/lib/lockstep"

[[group]]
name = "txn_velocity"
plugin = "plugins/txn_velocity"
version = "v2"
ttl = "7d"
kms_key = "alias/features"
owner = "fraud-team"
tenant = "fraud"
batch = { source = "data/transactions/*.parquet", format = "parquet", sql = "SELECT * FROM source" }
stream = { kinesis = "transactions" }

[[group]]
name = "churn"
plugin = "build/churn.wasm"
sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
version = "v1"
defaults = "defaults.json"
"#;

#[test]
fn every_section_is_read_and_relative_paths_resolve_against_the_file() {
    let c = Config::parse(
        FULL,
        Path::new("/repo/lockstep.toml"),
        &env_of(&[("REDIS_PASSWORD", "s3cret")]),
    )
    .expect("valid");
    assert_eq!(c.root, Path::new("/repo"));
    assert_eq!(c.offline.store, "s3://lake/features");
    assert_eq!(c.offline.glue_database.as_deref(), Some("features"));
    assert_eq!(c.offline.table_format, TableFormat::Delta);
    assert_eq!(
        c.online,
        OnlineConfig::SageMaker {
            endpoint: Some("http://127.0.0.1:9000".into())
        }
    );
    assert_eq!(c.online.to_arg(), "sagemaker:http://127.0.0.1:9000");
    let cache = c.cache.as_ref().expect("a cache");
    assert_eq!(cache.url, "redis://app:s3cret@cache:6379");
    assert_eq!(cache.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(cache.xfetch_beta, Some(1.5));
    assert_eq!(c.serving.listen, "0.0.0.0:7000".parse().expect("addr"));
    assert_eq!(c.serving.timeout, Duration::from_millis(20));
    assert_eq!(c.serving.log_features.as_deref(), Some("/repo/served"));
    assert_eq!(c.stream.lateness, Duration::from_secs(600));
    assert_eq!(c.stream.state, Path::new("/var/lib/lockstep"));
    assert_eq!(c.groups.len(), 2);
    let t = c.group("txn_velocity").expect("group");
    assert_eq!(
        t.plugin,
        PluginSource::Crate {
            dir: "/repo/plugins/txn_velocity".into()
        }
    );
    assert_eq!(t.version, "v2");
    assert_eq!(t.ttl, Some(Duration::from_secs(7 * 86_400)));
    let batch = t.batch.as_ref().expect("batch");
    assert_eq!(batch.source, "/repo/data/transactions/*.parquet");
    assert_eq!(batch.format, Some(SourceFormat::Parquet));
    assert_eq!(batch.sql.as_deref(), Some("SELECT * FROM source"));
    assert_eq!(
        t.stream.as_ref().map(|s| s.kinesis.as_str()),
        Some("transactions")
    );
    assert_eq!(t.stream.as_ref().and_then(|s| s.route.as_ref()), None);
    assert_eq!(t.kms_key.as_deref(), Some("alias/features"));
    assert_eq!(t.owner.as_deref(), Some("fraud-team"));
    assert_eq!(t.tenant.as_deref(), Some("fraud"));
    let churn = c.group("churn").expect("group");
    assert_eq!(
        churn.plugin,
        PluginSource::Component {
            path: "/repo/build/churn.wasm".into(),
            sha256: "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into()
        }
    );
    assert_eq!(
        churn.defaults.as_deref(),
        Some(Path::new("/repo/defaults.json"))
    );
    assert!(churn.batch.is_none() && churn.stream.is_none() && churn.ttl.is_none());
}

#[test]
fn an_empty_file_gives_the_embedded_defaults_under_the_repository() {
    let c = parse("").expect("valid");
    assert_eq!(c.offline.store, "/repo/store");
    assert_eq!(c.offline.table_format, TableFormat::Plain);
    assert_eq!(
        c.online,
        OnlineConfig::Embedded {
            path: "/repo/online".into()
        }
    );
    assert_eq!(c.online.to_arg(), "embedded:/repo/online");
    assert!(c.cache.is_none());
    assert_eq!(c.serving.listen, "127.0.0.1:6566".parse().expect("addr"));
    assert_eq!(c.serving.timeout, Duration::from_millis(5));
    assert_eq!(c.stream.lateness, Duration::from_secs(5));
    assert_eq!(c.stream.state, Path::new("/repo/state"));
    assert!(c.groups.is_empty());
}

#[test]
fn an_unknown_key_is_an_error_naming_the_key_and_its_line() {
    let text =
        "[offline]\nstore = \"store\"\n\n[serving]\nlisten = \"127.0.0.1:1\"\ntimeuot = \"5ms\"\n";
    let message = parse(text).expect_err("unknown key").to_string();
    assert!(message.contains("timeuot"), "{message}");
    assert!(message.contains("line 6"), "{message}");
    assert!(message.contains("/repo/lockstep.toml"), "{message}");

    let text = "[[group]]\nname = \"a\"\nplugin = \"p\"\nversion = \"v1\"\nowners = \"x\"\n";
    let message = parse(text).expect_err("unknown group key").to_string();
    assert!(
        message.contains("owners") && message.contains("line 5"),
        "{message}"
    );

    let message = parse("[onlin]\nstore = \"embedded\"\n")
        .expect_err("unknown table")
        .to_string();
    assert!(
        message.contains("onlin") && message.contains("line 1"),
        "{message}"
    );
}

#[test]
fn a_wrong_type_names_its_line() {
    let message = parse("[cache]\nurl = \"redis://h:1\"\nxfetch_beta = \"high\"\n")
        .expect_err("a string for a number")
        .to_string();
    assert!(message.contains("line 3"), "{message}");
}

#[test]
fn bad_values_name_the_setting_and_the_line() {
    let cases = [
        (
            "[serving]\n\ntimeout = \"soon\"\n",
            "serving.timeout",
            3,
            "soon",
        ),
        (
            "[serving]\nlisten = \"port 80\"\n",
            "serving.listen",
            2,
            "port 80",
        ),
        (
            "[online]\nstore = \"dynamo\"\n",
            "online.store",
            2,
            "dynamo",
        ),
        (
            "[stream]\nlateness = \"-1s\"\n",
            "stream.lateness",
            2,
            "-1s",
        ),
        (
            "[[group]]\nname = \"g\"\nplugin = \"p\"\nversion = \"v1\"\nttl = \"a week\"\n",
            "group.g.ttl",
            5,
            "a week",
        ),
    ];
    for (text, key, line, quoted) in cases {
        match parse(text) {
            Err(ConfigError::Invalid {
                key: k,
                line: l,
                message,
                ..
            }) => {
                assert_eq!((k.as_str(), l), (key, line), "{text}: {message}");
                assert!(message.contains(quoted), "{text}: {message}");
            }
            other => panic!("{text}: expected an invalid value, got {other:?}"),
        }
    }
}

#[test]
fn environment_references_resolve_and_a_missing_one_is_named() {
    let text = "[offline]\nstore = \"s3://${BUCKET}/features\"\n[online]\nstore = \"sagemaker:${FS_URL}\"\n";
    let c = Config::parse(
        text,
        Path::new("/repo/lockstep.toml"),
        &env_of(&[("BUCKET", "lake"), ("FS_URL", "http://localhost:9")]),
    )
    .expect("valid");
    assert_eq!(c.offline.store, "s3://lake/features");
    assert_eq!(c.online.to_arg(), "sagemaker:http://localhost:9");

    match Config::parse(text, Path::new("/repo/lockstep.toml"), &env_of(&[])) {
        Err(ConfigError::Invalid {
            key, line, message, ..
        }) => {
            assert_eq!((key.as_str(), line), ("offline.store", 2));
            assert!(message.contains("BUCKET"), "{message}");
        }
        other => panic!("expected a missing variable, got {other:?}"),
    }
    // `$$` is a dollar; a lone `$` stays; `${` unclosed or a bad name is refused.
    let c = Config::parse(
        "[[group]]\nname = \"g\"\nplugin = \"p\"\nversion = \"v$$1$\"\n",
        Path::new("/repo/lockstep.toml"),
        &env_of(&[]),
    )
    .expect("valid");
    assert_eq!(c.groups[0].version, "v$1$");
    for bad in ["v${X", "v${1X}", "v${}"] {
        let text = format!("[[group]]\nname = \"g\"\nplugin = \"p\"\nversion = \"{bad}\"\n");
        assert!(
            matches!(parse(&text), Err(ConfigError::Invalid { line: 4, .. })),
            "{bad}"
        );
    }
}

#[test]
fn secrets_are_never_printed() {
    let secret = "hunter2-very-secret";
    let env = env_of(&[("PW", secret), ("BAD", secret)]);
    let c = Config::parse(
        "[cache]\nurl = \"redis://app:${PW}@cache:6379/0\"\n",
        Path::new("/repo/lockstep.toml"),
        &env,
    )
    .expect("valid");
    let shown = format!("{c:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("redis://app:***@cache:6379/0"), "{shown}");
    // A bad value from the environment: the error names the variable's setting, not
    // its value.
    for text in [
        "[serving]\nlisten = \"${BAD}\"\n",
        "[serving]\ntimeout = \"${BAD}\"\n",
        "[online]\nstore = \"${BAD}\"\n",
        "[cache]\nurl = \"${BAD}\"\n",
    ] {
        let message = Config::parse(text, Path::new("/repo/lockstep.toml"), &env)
            .expect_err("invalid")
            .to_string();
        assert!(!message.contains(secret), "{message}");
        assert!(message.contains("lockstep.toml:2:"), "{message}");
    }
    assert_eq!(
        redact_url("redis://:pw@h:1"),
        "redis://:***@h:1",
        "a password without a user"
    );
    assert_eq!(redact_url("redis://pw@h:1"), "redis://***@h:1");
    assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    assert_eq!(
        redact_url("redis-cluster://u:p@h1:1,h2:2"),
        "redis-cluster://u:***@h1:1,h2:2"
    );
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn groups_are_checked_whole() {
    let two = "[[group]]\nname = \"g\"\nplugin = \"p\"\nversion = \"v1\"\n\n[[group]]\nname = \"g\"\nplugin = \"q\"\nversion = \"v1\"\n";
    match parse(two) {
        Err(ConfigError::Invalid { line, message, .. }) => {
            assert_eq!(line, 7);
            assert!(message.contains("second group named `g`"), "{message}");
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let unpinned = "[[group]]\nname = \"g\"\nplugin = \"g.wasm\"\nversion = \"v1\"\n";
    let message = parse(unpinned).expect_err("unpinned").to_string();
    assert!(
        message.contains("sha256") && message.contains(":3:"),
        "{message}"
    );
    let short =
        "[[group]]\nname = \"g\"\nplugin = \"g.wasm\"\nsha256 = \"abc\"\nversion = \"v1\"\n";
    assert!(matches!(
        parse(short),
        Err(ConfigError::Invalid { line: 4, .. })
    ));
    let crate_pinned =
        "[[group]]\nname = \"g\"\nplugin = \"plugins/g\"\nsha256 = \"abc\"\nversion = \"v1\"\n";
    assert!(matches!(
        parse(crate_pinned),
        Err(ConfigError::Invalid { line: 4, .. })
    ));
    let bad_name = "[[group]]\nname = \"g h\"\nplugin = \"p\"\nversion = \"v1\"\n";
    assert!(matches!(
        parse(bad_name),
        Err(ConfigError::Invalid { line: 2, .. })
    ));
    let empty_version = "[[group]]\nname = \"g\"\nplugin = \"p\"\nversion = \" \"\n";
    assert!(matches!(
        parse(empty_version),
        Err(ConfigError::Invalid { line: 4, .. })
    ));
    let missing = "[[group]]\nname = \"g\"\nplugin = \"p\"\n";
    let message = parse(missing).expect_err("no version").to_string();
    assert!(message.contains("version"), "{message}");
}

#[test]
fn groups_are_picked_by_name_in_the_order_asked() {
    let c = parse(
        "[[group]]\nname = \"a\"\nplugin = \"p\"\nversion = \"v1\"\n[[group]]\nname = \"b\"\nplugin = \"q\"\nversion = \"v1\"\n",
    )
    .expect("valid");
    let all: Vec<&str> = c
        .groups_named(&[])
        .expect("all")
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(all, ["a", "b"]);
    let picked: Vec<&str> = c
        .groups_named(&["b".into(), "a".into()])
        .expect("both")
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(picked, ["b", "a"]);
    let message = c.groups_named(&["c".into()]).expect_err("unknown");
    assert!(
        message.contains("no group `c`") && message.contains("a, b"),
        "{message}"
    );
}

#[test]
fn the_file_is_found_in_the_directory_or_above_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("plugins/txn/src");
    std::fs::create_dir_all(&nested).expect("mkdir");
    assert!(matches!(
        Config::discover(&nested),
        Err(ConfigError::NotFound { .. })
    ));
    std::fs::write(
        dir.path().join(FILE_NAME),
        "[online]\nstore = \"embedded:kv\"\n",
    )
    .expect("write");
    let c = Config::discover(&nested).expect("found above");
    assert_eq!(c.path, dir.path().join(FILE_NAME));
    assert_eq!(
        c.online.to_arg(),
        format!("embedded:{}", dir.path().join("kv").display())
    );
    // The nearest file wins.
    std::fs::write(dir.path().join("plugins").join(FILE_NAME), "").expect("write");
    let c = Config::discover(&nested).expect("found");
    assert_eq!(c.root, dir.path().join("plugins"));
    // Unreadable: the error names the file.
    let not_utf8 = dir.path().join("bad.toml");
    std::fs::write(&not_utf8, [0xff, 0xfe, 0x00]).expect("write");
    let message = Config::load(&not_utf8).expect_err("binary").to_string();
    assert!(message.contains("bad.toml"), "{message}");
}

#[test]
fn a_shared_stream_routes_each_group_by_a_field_and_half_a_route_is_an_error() {
    let text = "[[group]]\nname = \"a\"\nplugin = \"p\"\nversion = \"v1\"\n\
                stream = { kinesis = \"events\", field = \"kind\", equals = \"txn\" }\n";
    let c = parse(text).expect("valid");
    assert_eq!(
        c.groups[0].stream,
        Some(StreamSource {
            kinesis: "events".into(),
            route: Some(StreamRoute {
                field: "kind".into(),
                equals: "txn".into()
            })
        })
    );
    let half = "[[group]]\nname = \"a\"\nplugin = \"p\"\nversion = \"v1\"\n\n\
                [group.stream]\nkinesis = \"events\"\nequals = \"txn\"\n";
    match parse(half) {
        Err(ConfigError::Invalid {
            key, line, message, ..
        }) => {
            assert_eq!((key.as_str(), line), ("group.a.stream", 8), "{message}");
            assert!(message.contains("go together"), "{message}");
        }
        other => panic!("half a route was taken: {other:?}"),
    }
    let unknown = "[[group]]\nname = \"a\"\nplugin = \"p\"\nversion = \"v1\"\n\
                   stream = { kinesis = \"events\", filter = \"kind = txn\" }\n";
    assert!(
        parse(unknown).is_err_and(|e| e.to_string().contains("filter")),
        "an unknown key in a stream source"
    );
}
