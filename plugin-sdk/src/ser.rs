//! Encodes one output row (a struct) into the feature columns of a response.

use lockstep_abi::{ColumnBuilder, Feature};
use serde::ser::{self, Impossible, Serialize, SerializeStruct};
use std::fmt;

/// An encoding failure, naming the feature when known.
#[derive(Debug)]
pub(crate) struct SerError(pub(crate) String);

impl fmt::Display for SerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerError {}

impl ser::Error for SerError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SerError(msg.to_string())
    }
}

/// Serializer for a whole row into `columns`, one value per feature.
pub(crate) struct RowSerializer<'w> {
    pub(crate) columns: &'w mut [ColumnBuilder],
    pub(crate) features: &'w [Feature],
    /// Compare field names with feature names; needed once per batch, since a row
    /// type's field order cannot change between rows.
    pub(crate) check_names: bool,
}

fn not_a_struct<T>() -> Result<T, SerError> {
    Err(SerError(
        "the row type must be a struct with one field per feature".into(),
    ))
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), SerError> { not_a_struct() })*
    };
}

impl<'w> ser::Serializer for RowSerializer<'w> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Impossible<(), SerError>;
    type SerializeTuple = Impossible<(), SerError>;
    type SerializeTupleStruct = Impossible<(), SerError>;
    type SerializeTupleVariant = Impossible<(), SerError>;
    type SerializeMap = Impossible<(), SerError>;
    type SerializeStruct = RowFields<'w>;
    type SerializeStructVariant = Impossible<(), SerError>;

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<RowFields<'w>, SerError> {
        if len != self.columns.len() {
            return Err(SerError(format!(
                "the row type has {len} fields but the manifest declares {} features",
                self.columns.len()
            )));
        }
        Ok(RowFields {
            columns: self.columns,
            features: self.features,
            check_names: self.check_names,
            next: 0,
        })
    }

    reject!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), SerError> {
        not_a_struct()
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), SerError> {
        not_a_struct()
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), SerError> {
        not_a_struct()
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        not_a_struct()
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerError> {
        not_a_struct()
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        not_a_struct()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        not_a_struct()
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        not_a_struct()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        not_a_struct()
    }
}

pub(crate) struct RowFields<'w> {
    columns: &'w mut [ColumnBuilder],
    features: &'w [Feature],
    check_names: bool,
    next: usize,
}

impl SerializeStruct for RowFields<'_> {
    type Ok = ();
    type Error = SerError;

    #[inline]
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        let i = self.next;
        let feature = &self.features[i];
        if self.check_names && feature.name != key {
            return Err(SerError(format!(
                "row field `{key}` is at position {i}, where the manifest declares feature `{}`",
                feature.name
            )));
        }
        value
            .serialize(ValueSerializer {
                column: &mut self.columns[i],
            })
            .map_err(|e| SerError(format!("feature `{}`: {e}", feature.name)))?;
        self.next += 1;
        Ok(())
    }

    fn end(self) -> Result<(), SerError> {
        Ok(())
    }
}

struct ValueSerializer<'w> {
    column: &'w mut ColumnBuilder,
}

impl ValueSerializer<'_> {
    #[inline]
    fn pushed(&self, ok: bool, given: &str) -> Result<(), SerError> {
        if ok {
            Ok(())
        } else {
            Err(SerError(format!(
                "declared {} but the row gives {given}",
                self.column.value_type()
            )))
        }
    }
}

fn unsupported<T>(what: &str) -> Result<T, SerError> {
    Err(SerError(format!("{what} is not a supported feature value")))
}

impl ser::Serializer for ValueSerializer<'_> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = Impossible<(), SerError>;
    type SerializeTuple = Impossible<(), SerError>;
    type SerializeTupleStruct = Impossible<(), SerError>;
    type SerializeTupleVariant = Impossible<(), SerError>;
    type SerializeMap = Impossible<(), SerError>;
    type SerializeStruct = Impossible<(), SerError>;
    type SerializeStructVariant = Impossible<(), SerError>;

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), SerError> {
        let ok = self.column.push_i64(v);
        self.pushed(ok, "an integer")
    }
    fn serialize_i8(self, v: i8) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u8(self, v: u8) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), SerError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), SerError> {
        match i64::try_from(v) {
            Ok(v) => self.serialize_i64(v),
            Err(_) => Err(SerError(format!("{v} does not fit in int64"))),
        }
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), SerError> {
        let ok = self.column.push_f64(v);
        self.pushed(ok, "a float")
    }
    fn serialize_f32(self, v: f32) -> Result<(), SerError> {
        self.serialize_f64(v.into())
    }
    fn serialize_bool(self, v: bool) -> Result<(), SerError> {
        let ok = self.column.push_bool(v);
        self.pushed(ok, "a boolean")
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), SerError> {
        let ok = self.column.push_str(v);
        self.pushed(ok, "a string")
    }
    fn serialize_char(self, v: char) -> Result<(), SerError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    #[inline]
    fn serialize_none(self) -> Result<(), SerError> {
        self.column.push_null();
        Ok(())
    }
    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), SerError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), SerError> {
        self.serialize_none()
    }
    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), SerError> {
        value.serialize(self)
    }
    /// Unit enum variants encode as their names, mirroring the event decoder.
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), SerError> {
        self.serialize_str(variant)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), SerError> {
        unsupported("bytes")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), SerError> {
        unsupported("a unit struct")
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), SerError> {
        unsupported("an enum with data")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerError> {
        unsupported("a list")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerError> {
        unsupported("a tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerError> {
        unsupported("a tuple struct")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerError> {
        unsupported("an enum with data")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerError> {
        unsupported("a map")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SerError> {
        unsupported("a nested struct")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerError> {
        unsupported("an enum with data")
    }
}
