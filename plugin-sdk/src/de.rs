//! Decodes one row of an apply batch into the plugin's event type, in place.
//!
//! Event structs are matched to input columns by field name once per batch; after that
//! each event is a walk over its fields with no lookups and no allocation (strings can
//! borrow from the batch).

use lockstep_abi::{ColumnView, Field, ValueType};
use serde::de::{self, DeserializeSeed, IntoDeserializer, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use std::fmt;

/// A decoding failure, naming the field when known.
#[derive(Debug)]
pub(crate) struct DeError(pub(crate) String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(msg.to_string())
    }
}

/// Struct field position → input column, resolved on the first event of a batch.
#[derive(Default)]
pub(crate) struct FieldMap {
    key: Option<(usize, usize)>,
    columns: Vec<usize>,
}

impl FieldMap {
    fn resolve(
        &mut self,
        fields: &'static [&'static str],
        schema: &[Field],
    ) -> Result<&[usize], DeError> {
        let key = (fields.as_ptr() as usize, fields.len());
        if self.key != Some(key) {
            self.columns.clear();
            for name in fields {
                match schema.iter().position(|f| f.name == *name) {
                    Some(i) => self.columns.push(i),
                    None => {
                        return Err(DeError(format!(
                            "event type field `{name}` is not in the manifest input schema"
                        )));
                    }
                }
            }
            self.key = Some(key);
        }
        Ok(&self.columns)
    }
}

/// Deserializer for the whole event (a struct) at `row`.
pub(crate) struct RowDeserializer<'r, 'a> {
    pub(crate) columns: &'r [ColumnView<'a>],
    pub(crate) schema: &'r [Field],
    pub(crate) map: &'r mut FieldMap,
    pub(crate) row: usize,
}

impl<'de> de::Deserializer<'de> for RowDeserializer<'_, 'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError(
            "the event type must be a struct with named fields".into(),
        ))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let columns = self.map.resolve(fields, self.schema)?;
        visitor.visit_seq(RowFields {
            columns: self.columns,
            schema: self.schema,
            order: columns,
            next: 0,
            row: self.row,
        })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

struct RowFields<'r, 'a> {
    columns: &'r [ColumnView<'a>],
    schema: &'r [Field],
    order: &'r [usize],
    next: usize,
    row: usize,
}

impl<'de> SeqAccess<'de> for RowFields<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(&column) = self.order.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let value = ValueDeserializer {
            column: &self.columns[column],
            row: self.row,
        };
        seed.deserialize(value)
            .map(Some)
            .map_err(|e| DeError(format!("field `{}`: {e}", self.schema[column].name)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.order.len() - self.next)
    }
}

/// Deserializer for one value: column `column`, row `row`.
struct ValueDeserializer<'r, 'a> {
    column: &'r ColumnView<'a>,
    row: usize,
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_, 'de> {
    type Error = DeError;

    #[inline]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (c, i) = (self.column, self.row);
        if !c.is_valid(i) {
            return Err(DeError("is null; decode it into an Option".into()));
        }
        match c.value_type() {
            Some(ValueType::Int64 | ValueType::Timestamp) => visitor.visit_i64(c.i64(i)),
            Some(ValueType::Float64) => visitor.visit_f64(c.f64(i)),
            Some(ValueType::Boolean) => visitor.visit_bool(c.bool(i)),
            Some(ValueType::String) => visitor.visit_borrowed_str(c.str(i)),
            None => visitor.visit_borrowed_bytes(c.bytes(i)),
        }
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.column.is_valid(self.row) {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    /// Unit-only enums decode from strings, so `enum Channel { Web, App }` works.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (c, i) = (self.column, self.row);
        if c.value_type() != Some(ValueType::String) || !c.is_valid(i) {
            return Err(DeError("an enum must come from a non-null string".into()));
        }
        visitor.visit_enum(c.str(i).into_deserializer())
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}
