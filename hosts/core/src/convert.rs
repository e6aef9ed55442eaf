//! Arrow arrays to and from the plugin batch layout: a copy per buffer, no per-value
//! dispatch.

use crate::CoreError;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
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

fn fixed(view: &ColumnView<'_>) -> Vec<i64> {
    view.fixed_bytes()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect()
}

/// Copies a response column into an Arrow array of type `ty`.
pub fn read_column(view: &ColumnView<'_>, ty: ValueType) -> Result<ArrayRef, CoreError> {
    let n = nulls(view);
    Ok(match ty {
        ValueType::Int64 => Arc::new(Int64Array::new(ScalarBuffer::from(fixed(view)), n)),
        ValueType::Timestamp => Arc::new(
            TimestampMicrosecondArray::new(ScalarBuffer::from(fixed(view)), n).with_timezone("UTC"),
        ),
        ValueType::Float64 => {
            let values: Vec<f64> = fixed(view)
                .into_iter()
                .map(|x| f64::from_bits(x as u64))
                .collect();
            Arc::new(Float64Array::new(ScalarBuffer::from(values), n))
        }
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
