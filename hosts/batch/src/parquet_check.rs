//! The checks of a Parquet file's footer and metadata that must pass before a reader
//! trusts them: the Parquet reader panics on some damaged files (a metadata length
//! past the file's start; a column chunk at a negative offset), so these say what is
//! wrong instead. Pure functions of the file's bytes, shared with the fuzz target
//! (`fuzz/fuzz_targets/parquet_files.rs`), which checks that a file passing them reads
//! without a panic.

use parquet::file::metadata::ParquetMetaDataReader;

/// A Parquet file ends with its metadata, the metadata's length (4 bytes, little
/// endian) and the magic `PAR1`; it also starts with `PAR1`.
const MAGIC: &[u8; 4] = b"PAR1";
/// The footer's fixed tail: the metadata length and the magic.
pub const TAIL: u64 = 8;

/// Why a file whose last 8 bytes are `tail` and whose size is `size` cannot be a
/// Parquet file, if it cannot.
pub fn footer_problem(size: u64, tail: &[u8]) -> Option<String> {
    if size < 12 || tail.len() < TAIL as usize {
        return Some(format!(
            "is {size} bytes long: too short for a Parquet file"
        ));
    }
    let tail = &tail[tail.len() - TAIL as usize..];
    if &tail[4..] == b"PARE" {
        return Some("is an encrypted Parquet file, which is not supported".into());
    }
    if &tail[4..] != MAGIC {
        return Some(
            "does not end with the Parquet magic bytes `PAR1`: damaged or not Parquet".into(),
        );
    }
    let length = metadata_length(tail);
    if length + TAIL + 4 > size {
        return Some(format!(
            "has a damaged footer: its metadata claims {length} bytes, but the file has {size}"
        ));
    }
    None
}

/// The metadata length a footer states: the 4 bytes before the closing magic of
/// `tail` (the file's last bytes, at least 8).
pub fn metadata_length(tail: &[u8]) -> u64 {
    let n = tail.len();
    u64::from(u32::from_le_bytes([
        tail[n - 8],
        tail[n - 7],
        tail[n - 6],
        tail[n - 5],
    ]))
}

/// Why the metadata at the end of `footer` (the file's last bytes, at least the
/// metadata and its 8-byte tail, the file being `size` bytes) cannot be trusted, if
/// it cannot: it does not decode, or a column chunk lies outside the file.
pub fn metadata_problem(size: u64, footer: &[u8]) -> Option<String> {
    let n = footer.len();
    if n < TAIL as usize {
        return Some("has no footer".into());
    }
    let length = metadata_length(footer) as usize;
    let Some(start) = (n - TAIL as usize).checked_sub(length) else {
        return Some("has a footer longer than the bytes read".into());
    };
    let metadata = match ParquetMetaDataReader::decode_metadata(&footer[start..n - TAIL as usize]) {
        Ok(m) => m,
        Err(e) => return Some(format!("has damaged metadata: {e}")),
    };
    let data_end = size.saturating_sub(TAIL + length as u64);
    for (g, group) in metadata.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Some(format!(
                "has damaged metadata: row group {g} claims {} rows",
                group.num_rows()
            ));
        }
        for column in group.columns() {
            let begin = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let len = column.compressed_size();
            let inside = begin >= 4
                && len >= 0
                && (begin as u64)
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= data_end);
            if !inside {
                return Some(format!(
                    "has damaged metadata: column `{}` of row group {g} claims bytes \
                     {begin}..{begin}+{len}, outside the file's {data_end} bytes of data",
                    column.column_path()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{footer_problem, metadata_problem};

    fn tail(length: u32, magic: &[u8; 4]) -> Vec<u8> {
        let mut t = length.to_le_bytes().to_vec();
        t.extend_from_slice(magic);
        t
    }

    #[test]
    fn footers_that_do_not_fit_their_file_are_named() {
        assert_eq!(footer_problem(100, &tail(88, b"PAR1")), None);
        let too_long = footer_problem(100, &tail(89, b"PAR1")).expect("too long");
        assert!(
            too_long.contains("claims 89 bytes") && too_long.contains("has 100"),
            "{too_long}"
        );
        assert!(footer_problem(100, &tail(u32::MAX, b"PAR1")).is_some());
        assert!(
            footer_problem(100, &tail(10, b"JUNK"))
                .expect("magic")
                .contains("PAR1")
        );
        assert!(
            footer_problem(100, &tail(10, b"PARE"))
                .expect("encrypted")
                .contains("encrypted")
        );
        assert!(
            footer_problem(11, &tail(0, b"PAR1"))
                .expect("short")
                .contains("too short")
        );
        assert!(footer_problem(3, &[1, 2, 3]).is_some());
    }

    #[test]
    fn metadata_that_is_not_metadata_is_named() {
        // 10 bytes of junk as "metadata", then its length and the magic.
        let mut footer = vec![0xff; 10];
        footer.extend(tail(10, b"PAR1"));
        let problem = metadata_problem(100, &footer).expect("junk");
        assert!(problem.contains("damaged metadata"), "{problem}");
        assert!(metadata_problem(100, &tail(50, b"PAR1")).is_some());
    }
}
