use serde::{Deserialize, Serialize};
use std::fmt;

/// The type of an input field or an output feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// 64-bit signed integer (SageMaker `Integral`).
    Int64,
    /// 64-bit IEEE float (SageMaker `Fractional`).
    Float64,
    /// true / false.
    Boolean,
    /// UTF-8 text (SageMaker `String`).
    String,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
}

impl ValueType {
    /// The lowercase name used in manifests, errors and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Int64 => "int64",
            ValueType::Float64 => "float64",
            ValueType::Boolean => "boolean",
            ValueType::String => "string",
            ValueType::Timestamp => "timestamp",
        }
    }

    /// Parses the names [`ValueType::name`] produces.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "int64" => ValueType::Int64,
            "float64" => ValueType::Float64,
            "boolean" => ValueType::Boolean,
            "string" => ValueType::String,
            "timestamp" => ValueType::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One scalar value. Used for manifest defaults and in tests, never on the hot path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    /// Absent.
    Null,
    /// See [`ValueType::Int64`].
    Int64(i64),
    /// See [`ValueType::Float64`].
    Float64(f64),
    /// See [`ValueType::Boolean`].
    Boolean(bool),
    /// See [`ValueType::String`].
    String(String),
    /// See [`ValueType::Timestamp`].
    Timestamp(i64),
}

impl Value {
    /// The type of this value, or `None` for null.
    pub fn value_type(&self) -> Option<ValueType> {
        Some(match self {
            Value::Null => return None,
            Value::Int64(_) => ValueType::Int64,
            Value::Float64(_) => ValueType::Float64,
            Value::Boolean(_) => ValueType::Boolean,
            Value::String(_) => ValueType::String,
            Value::Timestamp(_) => ValueType::Timestamp,
        })
    }
}

/// Bitwise equality: floats compare by bit pattern, so `NaN == NaN` and `0.0 != -0.0`.
/// This is the equality the skew check needs.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Int64(a), Value::Int64(b)) => a == b,
            (Value::Float64(a), Value::Float64(b)) => a.to_bits() == b.to_bits(),
            (Value::Boolean(a), Value::Boolean(b)) => a == b,
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Int64(x) | Value::Timestamp(x) => write!(f, "{x}"),
            Value::Float64(x) => write!(f, "{x:?}"),
            Value::Boolean(x) => write!(f, "{x}"),
            Value::String(x) => write!(f, "{x:?}"),
        }
    }
}
