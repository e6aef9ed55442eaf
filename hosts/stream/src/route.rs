//! Routing the records of a stream shared by several feature groups: each group takes
//! the records whose top-level field (say `kind`) holds its value, so one Kinesis
//! stream can carry transactions, page views and account activity side by side.
//!
//! A record is read once for all routes: [`Router::route`] finds the values of every
//! routing field in one pass over its bytes. The pass skims: it follows the record's
//! structure (strings, nesting, commas) to find the top-level keys, but leaves the
//! grammar of the values it skips to the decoder of the group that takes the record.
//! So a record that is not a JSON object, or is cut short, goes nowhere (the unrouted
//! log, with why), while a record whose routing field is found but which is malformed
//! elsewhere goes to its group, whose decoder dead-letters it with the exact error,
//! as a stream of that group alone would.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// Which records of a shared stream a feature group takes: those whose top-level JSON
/// field `field` equals `equals` (a string value, or a number or boolean written as
/// in JSON: `7`, `true`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The top-level field.
    pub field: String,
    /// The value the group takes.
    pub equals: String,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}", self.field, self.equals)
    }
}

/// Where a record goes: to each group whose route matches (a group without a route
/// takes every record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// The groups (indices into the routes given to [`Router::new`]) that take it.
    To(Vec<usize>),
    /// No group takes it; why (for the unrouted log).
    Nowhere(String),
}

/// Routes records to the groups of a shared stream; see the [module](self) docs.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Option<Route>>,
    fields: Vec<String>,
}

impl Router {
    /// A router over the groups' routes, in group order (`None`: the group takes every
    /// record).
    pub fn new(routes: Vec<Option<Route>>) -> Self {
        let mut fields: Vec<String> = Vec::new();
        for route in routes.iter().flatten() {
            if !fields.contains(&route.field) {
                fields.push(route.field.clone());
            }
        }
        Router { routes, fields }
    }

    /// Whether every group takes every record (no routes at all).
    pub fn takes_all(&self) -> bool {
        self.fields.is_empty()
    }

    /// The groups that take `data`.
    pub fn route(&self, data: &[u8]) -> Routing {
        let mut to = Vec::new();
        if self.route_into(data, &mut to) {
            return Routing::To(to);
        }
        Routing::Nowhere(self.why_nowhere(data))
    }

    /// The groups that take `data`, into `to` (cleared first, reused record after
    /// record): whether any does. [`Self::route`] without an allocation per record.
    pub fn route_into(&self, data: &[u8], to: &mut Vec<usize>) -> bool {
        to.clear();
        if self.takes_all() {
            to.extend(0..self.routes.len());
            return true;
        }
        let mut found = [Raw::Absent; MAX_SKIMMED_FIELDS];
        let skimmed = self.fields.len() <= MAX_SKIMMED_FIELDS
            && skim_top_level(data, &self.fields, &mut found).is_ok();
        if !skimmed {
            // Not an object, cut short, or more routing fields than the skim holds:
            // the full parse decides (and says why).
            let values = field_values(data, &self.fields);
            for (i, route) in self.routes.iter().enumerate() {
                let takes = match route {
                    None => true,
                    Some(route) => values.as_ref().is_ok_and(|values| {
                        self.field_index(&route.field)
                            .and_then(|f| values[f].as_deref())
                            .is_some_and(|v| v == route.equals)
                    }),
                };
                if takes {
                    to.push(i);
                }
            }
            return !to.is_empty();
        }
        for (i, route) in self.routes.iter().enumerate() {
            let takes = match route {
                None => true,
                Some(route) => self
                    .field_index(&route.field)
                    .is_some_and(|f| found[f].equals(&route.equals)),
            };
            if takes {
                to.push(i);
            }
        }
        !to.is_empty()
    }

    fn field_index(&self, field: &str) -> Option<usize> {
        self.fields.iter().position(|f| f == field)
    }

    /// Why no group takes `data`, for the unrouted log (records that go nowhere are
    /// few, so this parses in full).
    pub fn why_nowhere(&self, data: &[u8]) -> String {
        let values = field_values(data, &self.fields);
        match values {
            Err(e) => format!("not a JSON object ({e}): no group's route can match it"),
            Ok(values) => {
                let found: Vec<String> = self
                    .fields
                    .iter()
                    .zip(&values)
                    .map(|(f, v)| match v {
                        Some(v) => format!("`{f}` is {v:?}"),
                        None => format!("`{f}` is absent or not a string, number or boolean"),
                    })
                    .collect();
                let routes: Vec<String> = self
                    .routes
                    .iter()
                    .flatten()
                    .map(|r| r.to_string())
                    .collect();
                format!(
                    "{}: no group takes it (routes: {})",
                    found.join(", "),
                    routes.join("; ")
                )
            }
        }
    }
}

/// The most routing fields the skim holds on the stack; more fall back to the full
/// parse (a stream is routed by one field, rarely two).
const MAX_SKIMMED_FIELDS: usize = 8;

/// A top-level value as the skim found it: raw bytes of the record, never built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw<'a> {
    /// The field is not there (or its value is null, an object or an array).
    Absent,
    /// A string's content between its quotes; `escaped` when it holds a `\`.
    Str { text: &'a [u8], escaped: bool },
    /// A number's or a boolean's token.
    Token(&'a [u8]),
}

impl Raw<'_> {
    /// Whether the value reads as `equals`: the same comparison as
    /// [`field_values`]' text of it.
    fn equals(&self, equals: &str) -> bool {
        match *self {
            Raw::Absent => false,
            Raw::Str {
                text,
                escaped: false,
            } => text == equals.as_bytes(),
            Raw::Str {
                text,
                escaped: true,
            } => unescape(text).is_some_and(|s| s == equals),
            Raw::Token(token @ (b"true" | b"false")) => token == equals.as_bytes(),
            // Numbers as serde_json writes them (`1e2` reads as `100.0`).
            Raw::Token(token) => serde_json::from_slice::<serde_json::Number>(token)
                .is_ok_and(|n| n.to_string() == equals),
        }
    }
}

/// A string's content with its escapes decoded as JSON does (rare: most keys and
/// values hold none); `None` when an escape is not valid JSON.
fn unescape(text: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(text.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(text);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// The skim could not follow the record's structure.
struct Unskimmable;

/// Finds the top-level values of `fields` in `data` (the last of a repeated key, as
/// JSON's own objects): `Err` unless `data` is one object, complete, with nothing
/// after it.
fn skim_top_level<'a>(
    data: &'a [u8],
    fields: &[String],
    found: &mut [Raw<'a>],
) -> Result<(), Unskimmable> {
    let mut skim = Skim { bytes: data, at: 0 };
    skim.whitespace();
    skim.expect(b'{')?;
    skim.whitespace();
    if skim.peek() == Some(b'}') {
        skim.at += 1;
    } else {
        loop {
            skim.whitespace();
            skim.expect(b'"')?;
            let (key, escaped) = skim.string()?;
            skim.whitespace();
            skim.expect(b':')?;
            let value = skim.value()?;
            let slot = if escaped {
                let key = unescape(key).ok_or(Unskimmable)?;
                fields.iter().position(|f| *f == key)
            } else {
                fields.iter().position(|f| f.as_bytes() == key)
            };
            if let Some(slot) = slot {
                found[slot] = value;
            }
            skim.whitespace();
            match skim.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(Unskimmable),
            }
        }
    }
    skim.whitespace();
    if skim.at == data.len() {
        Ok(())
    } else {
        Err(Unskimmable)
    }
}

struct Skim<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Skim<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Unskimmable> {
        match self.next() {
            Some(b) if b == byte => Ok(()),
            _ => Err(Unskimmable),
        }
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// A string whose opening quote was read: its content and whether it holds
    /// escapes; the closing quote is read.
    fn string(&mut self) -> Result<(&'a [u8], bool), Unskimmable> {
        let start = self.at;
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.at..).ok_or(Unskimmable)?;
            let k = memchr::memchr2(b'"', b'\\', rest).ok_or(Unskimmable)?;
            self.at += k;
            if self.bytes[self.at] == b'"' {
                let text = &self.bytes[start..self.at];
                self.at += 1;
                return Ok((text, escaped));
            }
            // A backslash and the byte it escapes.
            escaped = true;
            self.at += 2;
        }
    }

    /// One value: a string's or a token's bytes; an object or an array skipped.
    fn value(&mut self) -> Result<Raw<'a>, Unskimmable> {
        self.whitespace();
        match self.peek().ok_or(Unskimmable)? {
            b'"' => {
                self.at += 1;
                let (text, escaped) = self.string()?;
                Ok(Raw::Str { text, escaped })
            }
            b'{' | b'[' => {
                self.nested()?;
                Ok(Raw::Absent)
            }
            _ => {
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.at += 1;
                }
                match &self.bytes[start..self.at] {
                    b"" => Err(Unskimmable),
                    b"null" => Ok(Raw::Absent),
                    token => Ok(Raw::Token(token)),
                }
            }
        }
    }

    /// Skips an object or an array (at its opening bracket), strings and all: its
    /// brackets must balance and match.
    fn nested(&mut self) -> Result<(), Unskimmable> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.next().ok_or(Unskimmable)? {
                b'"' => {
                    self.string()?;
                }
                b @ (b'{' | b'[') => open.push(b),
                // The guard pops: a closing bracket must close the last one opened.
                b'}' if open.pop() != Some(b'{') => return Err(Unskimmable),
                b']' if open.pop() != Some(b'[') => return Err(Unskimmable),
                _ => {}
            }
            if open.is_empty() {
                return Ok(());
            }
        }
    }
}

/// The values of `fields` in the top-level JSON object `data`, in one pass: a string's
/// text, a number's or boolean's JSON text; `None` for an absent field, null, an
/// object or an array.
pub fn field_values(data: &[u8], fields: &[String]) -> Result<Vec<Option<String>>, String> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let values = Fields { fields }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(values)
}

struct Fields<'f> {
    fields: &'f [String],
}

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Vec<Option<String>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<String>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.fields.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.fields.iter().position(|f| *f == key) {
                // As JSON's own objects: a repeated key's last value counts.
                Some(i) => out[i] = map.next_value::<Scalar>()?.0,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A routing value: a string, a number or a boolean as text; anything else `None`.
struct Scalar(Option<String>);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Scalar(Some(s))),
            serde_json::Value::Number(n) => Ok(Scalar(Some(n.to_string()))),
            serde_json::Value::Bool(b) => Ok(Scalar(Some(b.to_string()))),
            _ => Ok(Scalar(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(field: &str, equals: &str) -> Option<Route> {
        Some(Route {
            field: field.into(),
            equals: equals.into(),
        })
    }

    #[test]
    fn records_go_to_the_groups_whose_value_they_carry() {
        let router = Router::new(vec![
            route("kind", "txn"),
            route("kind", "view"),
            None,
            route("tier", "7"),
        ]);
        assert_eq!(
            router.route(br#"{"a": {"kind": "view"}, "kind": "txn", "x": [1, 2]}"#),
            Routing::To(vec![0, 2])
        );
        assert_eq!(
            router.route(br#"{"kind": "view", "tier": 7}"#),
            Routing::To(vec![1, 2, 3])
        );
        // A group without a route takes even what no route matches.
        assert_eq!(router.route(b"not json"), Routing::To(vec![2]));
    }

    #[test]
    fn a_record_no_group_takes_says_why() {
        let router = Router::new(vec![route("kind", "txn"), route("kind", "view")]);
        let Routing::Nowhere(why) = router.route(br#"{"kind": "click"}"#) else {
            panic!("routed")
        };
        assert!(why.contains(r#"`kind` is "click""#), "{why}");
        assert!(why.contains(r#"kind = "txn""#), "{why}");
        let Routing::Nowhere(why) = router.route(br#"{"kind": null}"#) else {
            panic!("routed")
        };
        assert!(why.contains("absent"), "{why}");
        let Routing::Nowhere(why) = router.route(b"{\"kind\": \"txn\"") else {
            panic!("a truncated record was routed")
        };
        assert!(why.contains("not a JSON object"), "{why}");
        let Routing::Nowhere(why) = router.route(br#"["kind", "txn"]"#) else {
            panic!("an array was routed")
        };
        assert!(why.contains("not a JSON object"), "{why}");
        assert!(matches!(
            router.route(br#"{"kind": "txn"} trailing"#),
            Routing::Nowhere(_)
        ));
    }

    #[test]
    fn a_record_malformed_past_its_routing_field_goes_to_its_group() {
        // Its group's decoder dead-letters it with the exact error, as a stream of
        // that group alone would; only what is not an object, or is cut short, goes
        // nowhere.
        let router = Router::new(vec![route("kind", "txn"), route("kind", "view")]);
        for taken in [
            &br#"{"kind": "txn", "amount": 01}"#[..],
            br#"{"kind": "txn", "amount": tru}"#,
            br#"{"kind":"txn","a":{"b":[1,{"c":"]}"}]}}"#,
            b"{\"kind\": \"txn\", \"name\": \"\xff\"}",
        ] {
            assert_eq!(
                router.route(taken),
                Routing::To(vec![0]),
                "{}",
                String::from_utf8_lossy(taken)
            );
        }
        for nowhere in [
            &br#"{"kind": "txn", "a": [1, 2}"#[..],
            br#"{"kind": "txn", "a": "open}"#,
            br#"{"kind": "txn",}"#,
            br#"{"kind": "txn"}}"#,
            br#"{"kind" "txn"}"#,
            b"",
            b"   ",
            br#""kind""#,
        ] {
            assert!(
                matches!(router.route(nowhere), Routing::Nowhere(_)),
                "{}",
                String::from_utf8_lossy(nowhere)
            );
        }
    }

    #[test]
    fn escaped_keys_and_values_and_numbers_compare_as_json_text() {
        let router = Router::new(vec![route("kind", "t\"x"), route("n", "100.0")]);
        let mut to = Vec::new();
        assert!(router.route_into(br#"{"k\u0069nd": "t\"x"}"#, &mut to));
        assert_eq!(to, vec![0]);
        assert!(router.route_into(br#"{"n": 1e2}"#, &mut to));
        assert_eq!(to, vec![1]);
        assert!(!router.route_into(br#"{"n": "1e2", "kind": "t\\x"}"#, &mut to));
        assert!(to.is_empty());
        // More routing fields than the skim holds: the full parse decides alike.
        let many: Vec<Option<Route>> = (0..MAX_SKIMMED_FIELDS + 2)
            .map(|i| route(&format!("f{i}"), "v"))
            .collect();
        let router = Router::new(many);
        assert_eq!(
            router.route(br#"{"f9": "v", "f0": "w"}"#),
            Routing::To(vec![9])
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
        /// The skim routes every JSON object as the full parse does, whatever it
        /// holds and however it is spaced.
        #[test]
        fn the_skim_agrees_with_the_full_parse(
            value in json_object(),
            pretty in proptest::bool::ANY,
        ) {
            let text = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            }
            .expect("serializes");
            let routes = vec![
                route("kind", "txn"),
                route("kind", "7"),
                route("kind", "true"),
                route("tier", "a\"b"),
                route("tier", "é"),
            ];
            let router = Router::new(routes.clone());
            let values = field_values(&text, &router.fields).expect("an object");
            let expected: Vec<usize> = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    let r = r.as_ref().expect("routed");
                    let f = router.fields.iter().position(|f| *f == r.field).expect("field");
                    values[f].as_deref() == Some(r.equals.as_str())
                })
                .map(|(i, _)| i)
                .collect();
            let mut to = Vec::new();
            let any = router.route_into(&text, &mut to);
            proptest::prop_assert_eq!(&to, &expected, "{}", String::from_utf8_lossy(&text));
            proptest::prop_assert_eq!(any, !expected.is_empty());
            // Cut short anywhere, it goes nowhere, as the full parse says.
            let cut = text.len() / 2;
            proptest::prop_assert!(!router.route_into(&text[..cut], &mut to));
        }
    }

    fn json_object() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-1000i64..1000).prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            prop::sample::select(vec!["txn", "7", "true", "a\"b", "é", "{[\"", "\\", ""])
                .prop_map(serde_json::Value::from),
        ];
        let nested = scalar.clone().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(key(), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        // Mostly scalars at the top, where routing values are.
        let value = prop_oneof![3 => scalar, 1 => nested];
        prop::collection::btree_map(key(), value, 0..6)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    fn key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy;
        proptest::sample::select(vec!["kind", "tier", "x", "k\"ind", "kind "])
            .prop_map(str::to_owned)
    }

    #[test]
    fn values_are_found_in_one_pass_with_escapes_and_repeats() {
        let fields = vec!["kind".to_owned(), "n".to_owned()];
        assert_eq!(
            field_values(
                br#"{"k\u0069nd": "t\"x", "n": 1.5, "kind": "last"}"#,
                &fields
            ),
            Ok(vec![Some("last".into()), Some("1.5".into())])
        );
        assert_eq!(
            field_values(br#"{"n": true}"#, &fields),
            Ok(vec![None, Some("true".into())])
        );
    }
}
