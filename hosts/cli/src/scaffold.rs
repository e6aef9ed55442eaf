//! `lockstep plugin new NAME`: a working plugin crate to start from — a transform whose
//! schema is derived from its types, a native test, and the lints that keep it
//! deterministic.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where the SDK this binary was built with lives, when it was built from a checkout.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin-sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// Refuses a name the manifest would refuse: the crate and the group share it.
fn check_name(name: &str) -> Result<()> {
    if !lockstep_abi::is_identifier(name) {
        bail!(
            "`{name}` cannot name a plugin: use 1-64 characters of a-z, 0-9 and _, starting \
             with a letter (it is the feature group's name too)"
        );
    }
    Ok(())
}

/// Writes the plugin crate `name` into `dir`, depending on the SDK at `sdk`.
pub fn new_plugin(name: &str, dir: &Path, sdk: &Path) -> Result<()> {
    check_name(name)?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "{} is not the Lockstep SDK (no Cargo.toml); name it with --sdk",
            sdk.display()
        );
    }
    if dir.exists()
        && dir
            .read_dir()
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("resolving {}", sdk.display()))?;
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("clippy.toml", CLIPPY_TOML.to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", lib_rs(name)),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    let sdk = sdk.to_string_lossy().replace('\\', "/");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the component; rlib: native tests and benchmarks.
crate-type = ["cdylib", "rlib"]

[dependencies]
lockstep-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", default-features = false, features = ["derive", "alloc"] }}

# Not a member of any workspace above this folder.
[workspace]
"#
    )
}

/// Lints that keep a plugin deterministic: a std hash map's random seed imports
/// `wasi:random`, which the sandbox refuses at load.
const CLIPPY_TOML: &str = r#"# `cargo clippy` refuses what the Lockstep sandbox would refuse at load time.
disallowed-types = [
    { path = "std::collections::HashMap", reason = "its random seed imports wasi:random, refused at load: use BTreeMap" },
    { path = "std::collections::HashSet", reason = "its random seed imports wasi:random, refused at load: use BTreeSet" },
]
"#;

fn lib_rs(name: &str) -> String {
    let row = to_camel(name);
    format!(
        r#"//! The `{name}` feature group: events per entity and the last amount seen.

use lockstep_sdk::prelude::*;

/// One input event; the input schema is read from these fields.
#[derive(Deserialize, Event)]
pub struct Input<'a> {{
    /// The entity.
    #[event(key)]
    pub entity: &'a str,
    /// When it happened.
    #[event(time)]
    pub ts: Timestamp,
    /// An amount, when known.
    pub amount: Option<f64>,
}}

/// One output row; the features are read from these fields.
#[derive(Serialize, Features, Debug, PartialEq)]
pub struct {row}Row {{
    /// Events of this entity so far.
    #[feat(default = 0)]
    pub events: i64,
    /// The last amount seen.
    pub last_amount: Option<f64>,
}}

/// What is kept per entity between events.
#[derive(Serialize, Deserialize, Default)]
pub struct Seen {{
    events: i64,
    last_amount: Option<f64>,
}}

pub struct {row};

impl Transform for {row} {{
    type Event<'a> = Input<'a>;
    type Row = {row}Row;
    type State = Seen;

    fn manifest() -> Manifest {{
        lockstep_sdk::schema::manifest::<Self>("{name}", "0.1.0")
            .keyed_stateful(1) // bump when `Seen` changes shape
            .build()
    }}

    fn apply(seen: &mut Seen, event: Input<'_>, out: &mut Emit<'_, {row}Row>) -> Result<(), Error> {{
        seen.events += 1;
        if event.amount.is_some() {{
            seen.last_amount = event.amount;
        }}
        out.emit({row}Row {{
            events: seen.events,
            last_amount: seen.last_amount,
        }})
    }}
}}

lockstep_sdk::export!({row});

#[cfg(test)]
mod tests {{
    use super::*;
    use lockstep_sdk::testing::{{check_derived, check_manifest, run_timed}};

    #[test]
    fn counts_events_and_keeps_the_last_amount() {{
        check_manifest::<{row}>().unwrap();
        check_derived::<{row}>().unwrap();
        let event = |secs: i64, amount| {{
            let ts = Timestamp::from_secs(secs);
            (ts, Input {{ entity: "e", ts, amount }})
        }};
        let rows = run_timed::<{row}>(
            &mut Seen::default(),
            [event(1, Some(2.5)), event(2, None)],
        )
        .unwrap();
        assert_eq!(rows[1].1, {row}Row {{ events: 2, last_amount: Some(2.5) }});
    }}
}}
"#
    )
}

/// `my_plugin` → `MyPlugin`.
fn to_camel(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_group_rule_and_a_full_folder_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = default_sdk().expect("built from a checkout");
        for bad in ["", "Caps", "9lives", "has-dash", &"x".repeat(65)] {
            let err = new_plugin(bad, &dir.path().join("p"), &sdk).expect_err(bad);
            assert!(err.to_string().contains("cannot name a plugin"), "{err}");
        }
        let taken = dir.path().join("taken");
        std::fs::create_dir_all(&taken).expect("mkdir");
        std::fs::write(taken.join("keep.txt"), "mine").expect("write");
        let err = new_plugin("ok_name", &taken, &sdk).expect_err("not empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
            "mine"
        );
        let err = new_plugin("ok_name", &dir.path().join("q"), dir.path()).expect_err("no sdk");
        assert!(err.to_string().contains("is not the Lockstep SDK"), "{err}");
        assert_eq!(to_camel("my_2nd_plugin"), "My2ndPlugin");
    }
}
