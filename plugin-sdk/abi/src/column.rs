//! One column of the batch layout: the reader, the in-place view and the builders.

use crate::{AbiError, ValueType};

pub(crate) const TAG_INT64: u8 = 0;
pub(crate) const TAG_FLOAT64: u8 = 1;
pub(crate) const TAG_BOOLEAN: u8 = 2;
pub(crate) const TAG_STRING: u8 = 3;
pub(crate) const TAG_TIMESTAMP: u8 = 4;
pub(crate) const TAG_BINARY: u8 = 5;

pub(crate) fn tag_of(ty: ValueType) -> u8 {
    match ty {
        ValueType::Int64 => TAG_INT64,
        ValueType::Float64 => TAG_FLOAT64,
        ValueType::Boolean => TAG_BOOLEAN,
        ValueType::String => TAG_STRING,
        ValueType::Timestamp => TAG_TIMESTAMP,
    }
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        TAG_INT64 => "int64",
        TAG_FLOAT64 => "float64",
        TAG_BOOLEAN => "boolean",
        TAG_STRING => "string",
        TAG_TIMESTAMP => "timestamp",
        TAG_BINARY => "binary",
        _ => "unknown",
    }
}

/// Cursor over a payload; every read is bounds-checked and names what it was reading.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AbiError> {
        let end = self.pos.checked_add(n).ok_or(AbiError::Truncated(what))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(AbiError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, AbiError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, AbiError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn magic(&mut self, magic: &[u8; 4], name: &'static str) -> Result<(), AbiError> {
        if self.bytes(4, "magic")? != magic {
            return Err(AbiError::BadMagic { expected: name });
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(), AbiError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(AbiError::Trailing(n)),
        }
    }

    /// Reads one column of `len` values and checks its type against `expected`
    /// (`None` = binary).
    pub(crate) fn column(
        &mut self,
        len: usize,
        index: usize,
        expected: Option<ValueType>,
    ) -> Result<ColumnView<'a>, AbiError> {
        let tag = self.u8("column type")?;
        let want = expected.map(tag_of).unwrap_or(TAG_BINARY);
        // Timestamps may travel in int64 columns and the reverse: same physical layout.
        let compatible = tag == want
            || (tag == TAG_INT64 && want == TAG_TIMESTAMP)
            || (tag == TAG_TIMESTAMP && want == TAG_INT64);
        if tag > TAG_BINARY {
            return Err(AbiError::UnknownType(tag));
        }
        if !compatible {
            return Err(AbiError::TypeMismatch {
                index,
                expected: tag_name(want),
                found: tag_name(tag),
            });
        }
        let has_validity = self.u8("validity flag")?;
        let validity = match has_validity {
            0 => None,
            1 => Some(self.bytes(len.div_ceil(8), "validity bitmap")?),
            _ => return Err(AbiError::Inconsistent("validity flag is not 0 or 1")),
        };
        let mut view = ColumnView {
            tag,
            len,
            validity,
            values: &[],
            offsets: &[],
            text: "",
        };
        match tag {
            TAG_INT64 | TAG_FLOAT64 | TAG_TIMESTAMP => {
                let n = len.checked_mul(8).ok_or(AbiError::Truncated("values"))?;
                view.values = self.bytes(n, "fixed-width values")?;
            }
            TAG_BOOLEAN => view.values = self.bytes(len, "boolean values")?,
            _ => {
                let n = (len + 1)
                    .checked_mul(4)
                    .ok_or(AbiError::Truncated("offsets"))?;
                view.offsets = self.bytes(n, "string offsets")?;
                let data_len = read_u32(view.offsets, len) as usize;
                view.values = self.bytes(data_len, "string data")?;
                let mut prev = 0u32;
                for i in 0..=len {
                    let off = read_u32(view.offsets, i);
                    if off < prev || off as usize > data_len {
                        return Err(AbiError::BadStrings(index));
                    }
                    prev = off;
                }
                if tag == TAG_STRING {
                    let text = std::str::from_utf8(view.values)
                        .map_err(|_| AbiError::BadStrings(index))?;
                    if (0..=len).any(|i| !text.is_char_boundary(read_u32(view.offsets, i) as usize))
                    {
                        return Err(AbiError::BadStrings(index));
                    }
                    view.text = text;
                }
            }
        }
        Ok(view)
    }
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], i: usize) -> u32 {
    let b = &buf[i * 4..i * 4 + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A column read in place from a payload. Accessors take a row index below
/// [`ColumnView::len`]; the layout was checked when the view was made.
#[derive(Debug, Clone, Copy)]
pub struct ColumnView<'a> {
    tag: u8,
    len: usize,
    validity: Option<&'a [u8]>,
    values: &'a [u8],
    offsets: &'a [u8],
    text: &'a str,
}

impl<'a> ColumnView<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the column has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value type, or `None` for a binary column.
    pub fn value_type(&self) -> Option<ValueType> {
        Some(match self.tag {
            TAG_INT64 => ValueType::Int64,
            TAG_FLOAT64 => ValueType::Float64,
            TAG_BOOLEAN => ValueType::Boolean,
            TAG_STRING => ValueType::String,
            TAG_TIMESTAMP => ValueType::Timestamp,
            _ => return None,
        })
    }

    /// Whether row `i` holds a value (not null).
    #[inline]
    pub fn is_valid(&self, i: usize) -> bool {
        match self.validity {
            None => true,
            Some(bits) => bits[i >> 3] & (1 << (i & 7)) != 0,
        }
    }

    /// The packed validity bitmap (LSB first), if any value may be null.
    pub fn validity(&self) -> Option<&'a [u8]> {
        self.validity
    }

    /// Row `i` of an int64 or timestamp column.
    #[inline]
    pub fn i64(&self, i: usize) -> i64 {
        let b = &self.values[i * 8..i * 8 + 8];
        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Row `i` of a float64 column.
    #[inline]
    pub fn f64(&self, i: usize) -> f64 {
        f64::from_bits(self.i64(i) as u64)
    }

    /// Row `i` of a boolean column.
    #[inline]
    pub fn bool(&self, i: usize) -> bool {
        self.values[i] != 0
    }

    /// Row `i` of a string column.
    #[inline]
    pub fn str(&self, i: usize) -> &'a str {
        let (start, end) = self.range(i);
        self.text.get(start..end).unwrap_or_default()
    }

    /// Row `i` of a string or binary column, as bytes.
    #[inline]
    pub fn bytes(&self, i: usize) -> &'a [u8] {
        let (start, end) = self.range(i);
        &self.values[start..end]
    }

    #[inline]
    fn range(&self, i: usize) -> (usize, usize) {
        (
            read_u32(self.offsets, i) as usize,
            read_u32(self.offsets, i + 1) as usize,
        )
    }

    /// Raw little-endian fixed-width values (int64, float64, timestamp), 8 bytes each.
    pub fn fixed_bytes(&self) -> &'a [u8] {
        self.values
    }

    /// Raw offsets (u32 LE, `len + 1` of them) and data of a string or binary column.
    pub fn var_bytes(&self) -> (&'a [u8], &'a [u8]) {
        (self.offsets, self.values)
    }
}

/// Appends columns to a payload.
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn header(&mut self, tag: u8, len: usize, validity: Option<&[u8]>) {
        self.buf.push(tag);
        match validity {
            None => self.buf.push(0),
            Some(bits) => {
                self.buf.push(1);
                let n = len.div_ceil(8);
                self.buf.extend_from_slice(&bits[..n.min(bits.len())]);
                // A short bitmap means "null" for the rows it does not cover.
                self.buf
                    .resize(self.buf.len() + n.saturating_sub(bits.len()), 0);
            }
        }
    }

    /// Appends 8-byte little-endian values in one pass over pre-sized space.
    fn words<T: Copy>(&mut self, values: &[T], to_le: impl Fn(T) -> [u8; 8]) {
        let start = self.buf.len();
        self.buf.resize(start + values.len() * 8, 0);
        for (slot, &v) in self.buf[start..].chunks_exact_mut(8).zip(values) {
            slot.copy_from_slice(&to_le(v));
        }
    }

    pub(crate) fn fixed(&mut self, tag: u8, values: &[i64], validity: Option<&[u8]>) {
        self.header(tag, values.len(), validity);
        self.words(values, i64::to_le_bytes);
    }

    pub(crate) fn floats(&mut self, values: &[f64], validity: Option<&[u8]>) {
        self.header(TAG_FLOAT64, values.len(), validity);
        self.words(values, |v: f64| v.to_bits().to_le_bytes());
    }

    pub(crate) fn bools(&mut self, values: &[u8], validity: Option<&[u8]>) {
        self.header(TAG_BOOLEAN, values.len(), validity);
        self.buf.extend(values.iter().map(|&b| (b != 0) as u8));
    }

    /// `offsets` has `len + 1` entries relative to `data[0]`.
    pub(crate) fn var(&mut self, tag: u8, offsets: &[u32], data: &[u8], validity: Option<&[u8]>) {
        let len = offsets.len().saturating_sub(1);
        self.header(tag, len, validity);
        for o in offsets {
            self.buf.extend_from_slice(&o.to_le_bytes());
        }
        if offsets.is_empty() {
            self.buf.extend_from_slice(&0u32.to_le_bytes());
        }
        self.buf.extend_from_slice(data);
    }
}

/// A typed column that is being built, one value at a time.
///
/// Plugins fill these through the SDK; hosts use them to build requests from values
/// they hold row by row (tests, the CLI). Bulk producers write whole buffers through
/// [`crate::ApplyRequest`] instead.
#[derive(Debug, Clone)]
pub struct ColumnBuilder {
    ty: ValueType,
    len: usize,
    validity: Vec<u8>,
    has_null: bool,
    fixed: Vec<i64>,
    floats: Vec<f64>,
    bools: Vec<u8>,
    offsets: Vec<u32>,
    data: Vec<u8>,
}

impl ColumnBuilder {
    /// An empty column of type `ty`.
    pub fn new(ty: ValueType) -> Self {
        ColumnBuilder {
            ty,
            len: 0,
            validity: Vec::new(),
            has_null: false,
            fixed: Vec::new(),
            floats: Vec::new(),
            bools: Vec::new(),
            offsets: vec![0],
            data: Vec::new(),
        }
    }

    /// The column's type.
    pub fn value_type(&self) -> ValueType {
        self.ty
    }

    /// Number of values pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mark(&mut self, valid: bool) {
        let i = self.len;
        if i.is_multiple_of(8) {
            self.validity.push(0);
        }
        if valid {
            self.validity[i >> 3] |= 1 << (i & 7);
        } else {
            self.has_null = true;
        }
        self.len += 1;
    }

    /// Appends a null.
    pub fn push_null(&mut self) {
        match self.ty {
            ValueType::Int64 | ValueType::Timestamp => self.fixed.push(0),
            ValueType::Float64 => self.floats.push(0.0),
            ValueType::Boolean => self.bools.push(0),
            ValueType::String => self.offsets.push(self.data.len() as u32),
        }
        self.mark(false);
    }

    /// Appends an int64 or timestamp. Returns `false` (and appends nothing) if the
    /// column has another type.
    #[inline]
    pub fn push_i64(&mut self, v: i64) -> bool {
        match self.ty {
            ValueType::Int64 | ValueType::Timestamp => self.fixed.push(v),
            _ => return false,
        }
        self.mark(true);
        true
    }

    /// Appends a float64; see [`ColumnBuilder::push_i64`] for the return value.
    #[inline]
    pub fn push_f64(&mut self, v: f64) -> bool {
        if self.ty != ValueType::Float64 {
            return false;
        }
        self.floats.push(v);
        self.mark(true);
        true
    }

    /// Appends a boolean; see [`ColumnBuilder::push_i64`] for the return value.
    #[inline]
    pub fn push_bool(&mut self, v: bool) -> bool {
        if self.ty != ValueType::Boolean {
            return false;
        }
        self.bools.push(v as u8);
        self.mark(true);
        true
    }

    /// Appends a string; see [`ColumnBuilder::push_i64`] for the return value.
    #[inline]
    pub fn push_str(&mut self, v: &str) -> bool {
        if self.ty != ValueType::String {
            return false;
        }
        self.data.extend_from_slice(v.as_bytes());
        self.offsets.push(self.data.len() as u32);
        self.mark(true);
        true
    }

    /// Appends any [`crate::Value`]; `false` if its type does not match.
    pub fn push_value(&mut self, v: &crate::Value) -> bool {
        use crate::Value;
        match v {
            Value::Null => {
                self.push_null();
                true
            }
            Value::Int64(x) if self.ty == ValueType::Int64 => self.push_i64(*x),
            Value::Timestamp(x) if self.ty == ValueType::Timestamp => self.push_i64(*x),
            Value::Float64(x) => self.push_f64(*x),
            Value::Boolean(x) => self.push_bool(*x),
            Value::String(x) => self.push_str(x),
            _ => false,
        }
    }

    pub(crate) fn write_to(&self, w: &mut Writer) {
        let validity = self.has_null.then_some(self.validity.as_slice());
        match self.ty {
            ValueType::Int64 | ValueType::Timestamp => {
                w.fixed(tag_of(self.ty), &self.fixed, validity)
            }
            ValueType::Float64 => w.floats(&self.floats, validity),
            ValueType::Boolean => w.bools(&self.bools, validity),
            ValueType::String => w.var(TAG_STRING, &self.offsets, &self.data, validity),
        }
    }

    /// Reserves room for `additional` more values (strings: `additional` offsets).
    pub fn reserve(&mut self, additional: usize) {
        self.validity.reserve(additional.div_ceil(8));
        match self.ty {
            ValueType::Int64 | ValueType::Timestamp => self.fixed.reserve(additional),
            ValueType::Float64 => self.floats.reserve(additional),
            ValueType::Boolean => self.bools.reserve(additional),
            ValueType::String => self.offsets.reserve(additional),
        }
    }

    /// Forgets all values, keeping the allocations.
    pub fn clear(&mut self) {
        self.len = 0;
        self.has_null = false;
        self.validity.clear();
        self.fixed.clear();
        self.floats.clear();
        self.bools.clear();
        self.offsets.clear();
        self.offsets.push(0);
        self.data.clear();
    }
}

/// An owned copy of a column, for callers that outlive the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Int64 values and validity.
    Int64(Vec<Option<i64>>),
    /// Float64 values and validity.
    Float64(Vec<Option<f64>>),
    /// Boolean values and validity.
    Boolean(Vec<Option<bool>>),
    /// String values and validity.
    String(Vec<Option<String>>),
    /// Timestamp values and validity.
    Timestamp(Vec<Option<i64>>),
}

impl Column {
    /// Copies a view; binary columns are not representable and give `None`.
    pub fn from_view(view: &ColumnView<'_>) -> Option<Column> {
        let n = view.len();
        let get = |i: usize| view.is_valid(i);
        Some(match view.value_type()? {
            ValueType::Int64 => {
                Column::Int64((0..n).map(|i| get(i).then(|| view.i64(i))).collect())
            }
            ValueType::Timestamp => {
                Column::Timestamp((0..n).map(|i| get(i).then(|| view.i64(i))).collect())
            }
            ValueType::Float64 => {
                Column::Float64((0..n).map(|i| get(i).then(|| view.f64(i))).collect())
            }
            ValueType::Boolean => {
                Column::Boolean((0..n).map(|i| get(i).then(|| view.bool(i))).collect())
            }
            ValueType::String => Column::String(
                (0..n)
                    .map(|i| get(i).then(|| view.str(i).to_owned()))
                    .collect(),
            ),
        })
    }

    /// Value at row `i` as a [`crate::Value`] (`Null` past the end).
    pub fn value(&self, i: usize) -> crate::Value {
        use crate::Value;
        let v = match self {
            Column::Int64(v) => v.get(i).copied().flatten().map(Value::Int64),
            Column::Float64(v) => v.get(i).copied().flatten().map(Value::Float64),
            Column::Boolean(v) => v.get(i).copied().flatten().map(Value::Boolean),
            Column::String(v) => v.get(i).cloned().flatten().map(Value::String),
            Column::Timestamp(v) => v.get(i).copied().flatten().map(Value::Timestamp),
        };
        v.unwrap_or(Value::Null)
    }
}
