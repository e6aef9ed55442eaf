use crate::{Feature, Field, Kind, Manifest, Value, ValueType};

/// Builds a [`Manifest`] step by step.
///
/// [`ManifestBuilder::build`] does not validate: call [`Manifest::validate`] (the host
/// does at load time; the SDK's `testing::check_manifest` does in a plugin's tests).
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    manifest: Manifest,
}

impl ManifestBuilder {
    /// A stateless group `name` at semantic version `version`.
    pub fn new(name: &str, version: &str) -> Self {
        ManifestBuilder {
            manifest: Manifest {
                name: name.into(),
                version: version.into(),
                description: String::new(),
                input: Vec::new(),
                entity_key: String::new(),
                event_time: String::new(),
                event_id: None,
                features: Vec::new(),
                kind: Kind::Stateless,
                state_version: 0,
                supports_read: false,
                timer_resolution: None,
            },
        }
    }

    /// What the group computes.
    pub fn description(mut self, text: &str) -> Self {
        self.manifest.description = text.into();
        self
    }

    /// Keeps per-entity state, encoded as version `state_version`. Bump the version
    /// whenever the state type changes shape: hosts refuse state of another version.
    pub fn keyed_stateful(mut self, state_version: u32) -> Self {
        self.manifest.kind = Kind::KeyedStateful;
        self.manifest.state_version = state_version;
        self
    }

    /// A required input field.
    pub fn field(mut self, name: &str, ty: ValueType, description: &str) -> Self {
        self.manifest.input.push(Field {
            name: name.into(),
            ty,
            nullable: false,
            description: description.into(),
        });
        self
    }

    /// An input field that may be null or missing; decode it into an `Option`.
    pub fn optional_field(mut self, name: &str, ty: ValueType, description: &str) -> Self {
        self.manifest.input.push(Field {
            name: name.into(),
            ty,
            nullable: true,
            description: description.into(),
        });
        self
    }

    /// The input field that identifies the entity.
    pub fn entity_key(mut self, field: &str) -> Self {
        self.manifest.entity_key = field.into();
        self
    }

    /// The input field (timestamp) that orders events.
    pub fn event_time(mut self, field: &str) -> Self {
        self.manifest.event_time = field.into();
        self
    }

    /// The input field that identifies an event (deduplication key).
    pub fn event_id(mut self, field: &str) -> Self {
        self.manifest.event_id = Some(field.into());
        self
    }

    /// An output feature with the value served when serving degrades.
    pub fn feature(mut self, name: &str, ty: ValueType, description: &str, default: Value) -> Self {
        self.manifest.features.push(Feature {
            name: name.into(),
            ty,
            description: description.into(),
            default_value: default,
        });
        self
    }

    /// Declares that the plugin implements `read(state, as_of)`.
    pub fn supports_read(mut self) -> Self {
        self.manifest.supports_read = true;
        self
    }

    /// Declares that the plugin asks to be woken at later event times, each wake-up
    /// time rounded up to a multiple of `resolution` µs (0: exact): the grid bounds
    /// how many rows wake-ups add, and is the same in every host.
    pub fn timers(mut self, resolution: u64) -> Self {
        self.manifest.timer_resolution = Some(resolution);
        self
    }

    /// The manifest.
    pub fn build(self) -> Manifest {
        self.manifest
    }
}
