//! Arrow arrays to and from the plugin batch layout: a copy per buffer, no per-value
//! dispatch.

use crate::CoreError;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow_buffer::{
    ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer,
};
use lockstep_abi::{AbiError, ApplyRequest, ColumnView, ValueType};
use std::sync::Arc;

fn abi(e: AbiError) -> CoreError {
    CoreError::Input(format!("cannot encode batch: {e}"))
}

/// The validity bitmap of `array` re-based to bit 0, or `None` if nothing is null.
fn validity(array: &dyn Array) -> Option<Vec<u8>> {
    let nulls = array.logical_nulls()?;
    if nulls.null_count() == 0 {
        return None;
    }
    let bits = nulls.inner();
    if bits.offset() % 8 == 0 {
        let start = bits.offset() / 8;
        return Some(bits.values()[start..start + bits.len().div_ceil(8)].to_vec());
    }
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, valid) in bits.iter().enumerate() {
        if valid {
            out[i >> 3] |= 1 << (i & 7);
        }
    }
    Some(out)
}

/// Appends `array` to `request` as a column of type `ty`.
pub fn write_column(
    request: &mut ApplyRequest,
    array: &dyn Array,
    ty: ValueType,
) -> Result<(), CoreError> {
    let valid = validity(array);
    let valid = valid.as_deref();
    let mismatch = || {
        CoreError::Input(format!(
            "column of Arrow type {} cannot carry {ty}",
            array.data_type()
        ))
    };
    match ty {
        ValueType::Int64 => {
            let a = array.as_primitive_opt::<Int64Type>().ok_or_else(mismatch)?;
            request.int64_column(ty, a.values(), valid).map_err(abi)
        }
        ValueType::Timestamp => {
            let a = array
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(mismatch)?;
            request.int64_column(ty, a.values(), valid).map_err(abi)
        }
        ValueType::Float64 => {
            let a = array
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(mismatch)?;
            request.float64_column(a.values(), valid).map_err(abi)
        }
        ValueType::Boolean => {
            let a = array.as_boolean_opt().ok_or_else(mismatch)?;
            let bytes: Vec<u8> = a.values().iter().map(u8::from).collect();
            request.boolean_column(&bytes, valid).map_err(abi)
        }
        ValueType::String => {
            let a = array.as_string_opt::<i32>().ok_or_else(mismatch)?;
            let offsets = a.value_offsets();
            let base = offsets.first().copied().unwrap_or(0);
            let end = offsets.last().copied().unwrap_or(0);
            let rebased: Vec<u32> = offsets.iter().map(|&o| (o - base) as u32).collect();
            request
                .string_column(
                    &rebased,
                    &a.value_data()[base as usize..end as usize],
                    valid,
                )
                .map_err(abi)
        }
    }
}

fn nulls(view: &ColumnView<'_>) -> Option<NullBuffer> {
    view.validity().map(|bits| {
        NullBuffer::new(BooleanBuffer::new(
            Buffer::from(bits.to_vec()),
            0,
            view.len(),
        ))
    })
}

/// A fixed-width column's values as an Arrow buffer. The layout's values are 8-byte
/// little-endian, Arrow's own layout on a little-endian machine: one copy of the bytes
/// instead of a value-by-value loop. The layout's reader checked the length
/// (`len * 8` bytes).
fn fixed<T: ArrowNativeType>(view: &ColumnView<'_>) -> ScalarBuffer<T> {
    let bytes = view.fixed_bytes();
    let buffer = if cfg!(target_endian = "little") {
        Buffer::from(bytes)
    } else {
        let values: Vec<i64> = bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        Buffer::from_vec(values)
    };
    ScalarBuffer::new(buffer, 0, view.len())
}

/// Copies a response column into an Arrow array of type `ty`.
pub fn read_column(view: &ColumnView<'_>, ty: ValueType) -> Result<ArrayRef, CoreError> {
    let n = nulls(view);
    Ok(match ty {
        ValueType::Int64 => Arc::new(Int64Array::new(fixed(view), n)),
        ValueType::Timestamp => {
            Arc::new(TimestampMicrosecondArray::new(fixed(view), n).with_timezone("UTC"))
        }
        ValueType::Float64 => Arc::new(Float64Array::new(fixed(view), n)),
        ValueType::Boolean => {
            let values: BooleanBuffer = (0..view.len()).map(|i| view.bool(i)).collect();
            Arc::new(BooleanArray::new(values, n))
        }
        ValueType::String => {
            let (offsets, data) = view.var_bytes();
            let offsets: Vec<i32> = offsets
                .chunks_exact(4)
                .map(|b| i32::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect::<Result<_, _>>()
                .map_err(|_| CoreError::Input("string column larger than 2 GiB".into()))?;
            let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
            Arc::new(StringArray::try_new(
                offsets,
                Buffer::from(data.to_vec()),
                n,
            )?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_abi::{ApplyResponse, ApplyResponseWriter};

    #[test]
    fn fixed_width_response_columns_keep_every_bit_and_null() {
        let ints = [Some(i64::MIN), None, Some(-1), Some(0), Some(i64::MAX)];
        let floats = [
            Some(-0.0),
            Some(f64::from_bits(0x7ff8_0000_0000_0001)),
            None,
            Some(f64::NEG_INFINITY),
            Some(1e-310),
        ];
        let types = [ValueType::Int64, ValueType::Float64, ValueType::Timestamp];
        let mut writer = ApplyResponseWriter::new(&types);
        for row in 0..ints.len() {
            let columns = writer.features_mut();
            match ints[row] {
                Some(v) => assert!(columns[0].push_i64(v) && columns[2].push_i64(v)),
                None => {
                    columns[0].push_null();
                    columns[2].push_null();
                }
            }
            match floats[row] {
                Some(v) => assert!(columns[1].push_f64(v)),
                None => columns[1].push_null(),
            }
            writer.end_row(row as i64, 0);
        }
        writer.end_entity(None);
        let bytes = writer.finish();
        let response = ApplyResponse::parse(&bytes, &types, 1, 1).expect("response");
        let int_column = read_column(&response.features[0], ValueType::Int64).expect("ints");
        let float_column = read_column(&response.features[1], ValueType::Float64).expect("floats");
        let time_column = read_column(&response.features[2], ValueType::Timestamp).expect("times");
        let read_ints: Vec<Option<i64>> = int_column.as_primitive::<Int64Type>().iter().collect();
        assert_eq!(read_ints, ints);
        let read_times: Vec<Option<i64>> = time_column
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect();
        assert_eq!(read_times, ints);
        let bits = |v: Option<f64>| v.map(f64::to_bits);
        let read_floats: Vec<Option<u64>> = float_column
            .as_primitive::<Float64Type>()
            .iter()
            .map(bits)
            .collect();
        assert_eq!(read_floats, floats.map(bits));
        // The event times, a column of the same kind.
        let times = read_column(&response.event_time, ValueType::Timestamp).expect("event times");
        assert_eq!(
            times.as_primitive::<TimestampMicrosecondType>().values(),
            &[0, 1, 2, 3, 4]
        );
    }
}
