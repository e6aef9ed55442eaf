//! The derive macros: a schema written once in the types, a manifest built from them,
//! and a hand-written manifest that drifted from the types caught in `cargo test`.

// Some fields here have no doc comment on purpose: what a description becomes then
// (an attribute's text, or nothing) is what is tested.
#![allow(missing_docs)]

use lockstep_sdk::prelude::*;
use lockstep_sdk::schema::{self, EventSchema, FeatureSchema};
use lockstep_sdk::testing::check_derived;

#[derive(Deserialize, Event)]
pub struct Payment<'a> {
    /// The card.
    #[event(key)]
    pub card: &'a str,
    /// When it was paid.
    #[event(time)]
    pub at: Timestamp,
    /// The payment's own id.
    #[event(id)]
    pub id: i64,
    #[event(doc = "amount in cents")]
    pub cents: i64,
    /// The merchant, when known.
    pub merchant: Option<&'a str>,
    #[serde(rename(deserialize = "is_refund"), default)]
    pub refund: Option<bool>,
}

#[derive(Serialize, Features)]
pub struct Spend {
    /// Total spent.
    #[feat(default = 0)]
    pub total: i64,
    #[feat(default = f64::NAN, doc = "mean payment")]
    pub mean: f64,
    /// The last merchant seen.
    pub last_merchant: Option<String>,
}

/// A transform whose manifest comes from its types.
pub struct Derived;

impl Transform for Derived {
    type Event<'a> = Payment<'a>;
    type Row = Spend;
    type State = (i64, i64);

    fn manifest() -> Manifest {
        schema::manifest::<Self>("spend", "1.0.0")
            .keyed_stateful(1)
            .build()
    }

    fn apply(s: &mut (i64, i64), p: Payment<'_>, out: &mut Emit<'_, Spend>) -> Result<(), Error> {
        *s = (s.0 + p.cents, s.1 + 1);
        out.emit(Spend {
            total: s.0,
            mean: s.0 as f64 / s.1 as f64,
            last_merchant: p.merchant.map(str::to_owned),
        })
    }
}

/// The same, with a manifest written by hand that says `cents` is a float.
pub struct Drifted;

impl Transform for Drifted {
    type Event<'a> = Payment<'a>;
    type Row = Spend;
    type State = (i64, i64);

    fn manifest() -> Manifest {
        ManifestBuilder::new("spend", "1.0.0")
            .keyed_stateful(1)
            .field("card", ValueType::String, "")
            .field("at", ValueType::Timestamp, "")
            .field("id", ValueType::Int64, "")
            .field("cents", ValueType::Float64, "")
            .optional_field("merchant", ValueType::String, "")
            .optional_field("is_refund", ValueType::Boolean, "")
            .entity_key("card")
            .event_time("at")
            .event_id("id")
            .feature("total", ValueType::Int64, "", Value::Int64(0))
            .feature("mean", ValueType::Float64, "", Value::Float64(f64::NAN))
            .feature("last_merchant", ValueType::String, "", Value::Null)
            .build()
    }

    fn apply(s: &mut (i64, i64), p: Payment<'_>, out: &mut Emit<'_, Spend>) -> Result<(), Error> {
        Derived::apply(s, p, out)
    }
}

#[test]
fn the_schema_is_read_from_the_types() {
    let fields = Payment::fields();
    let shape: Vec<(&str, ValueType, bool, &str)> = fields
        .iter()
        .map(|f| (f.name.as_str(), f.ty, f.nullable, f.description.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("card", ValueType::String, false, "The card."),
            ("at", ValueType::Timestamp, false, "When it was paid."),
            ("id", ValueType::Int64, false, "The payment's own id."),
            ("cents", ValueType::Int64, false, "amount in cents"),
            (
                "merchant",
                ValueType::String,
                true,
                "The merchant, when known."
            ),
            ("is_refund", ValueType::Boolean, true, ""),
        ]
    );
    assert_eq!(
        (
            Payment::entity_key(),
            Payment::event_time(),
            Payment::event_id()
        ),
        ("card", "at", Some("id"))
    );
    let features = Spend::features();
    assert_eq!(features[0].default_value, Value::Int64(0));
    assert!(matches!(features[1].default_value, Value::Float64(x) if x.is_nan()));
    assert_eq!(features[1].description, "mean payment");
    assert_eq!(features[2].default_value, Value::Null);
    assert_eq!(features[2].ty, ValueType::String);

    let manifest = Derived::manifest();
    manifest.validate().expect("a derived manifest is valid");
    assert_eq!(manifest.event_id.as_deref(), Some("id"));
    assert_eq!(manifest.features.len(), 3);
    check_derived::<Derived>().expect("a derived manifest matches its types");
}

#[test]
fn a_manifest_that_drifted_from_its_types_fails_in_cargo_test() {
    let err = check_derived::<Drifted>().expect_err("cents is an int64 in the struct");
    assert!(err.contains("input fields"), "{err}");
    assert!(err.contains("\"cents\", Float64"), "{err}");
    assert!(err.contains("\"cents\", Int64"), "{err}");
}
