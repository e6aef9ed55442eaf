//! The state codec: a version prefix and a compact binary body.
//!
//! State is opaque to hosts but versioned: the first four bytes are the plugin's
//! `state_version` (little-endian), the rest is `postcard`, a compact, stable,
//! non-self-describing serde format. A version mismatch is an error, never a
//! silent misread. A plugin with timers keeps its pending wake-up times between the
//! version and the body (see `lockstep_abi::timers`).

use crate::Error;
use serde::{Serialize, de::DeserializeOwned};

/// Encodes `state` as version `version`.
pub fn encode<S: Serialize>(state: &S, version: u32) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_into(state, version, &mut out)?;
    Ok(out)
}

/// Appends `state`, encoded as version `version`, to `out`; on error `out` may hold a
/// partial state, which the caller discards.
pub fn encode_into<S: Serialize>(state: &S, version: u32, out: &mut Vec<u8>) -> Result<(), Error> {
    out.extend_from_slice(&version.to_le_bytes());
    postcard::serialize_with_flavor(state, AppendTo(out))
        .map_err(|e| Error::new(format!("cannot encode state: {e}")))
}

/// A postcard output that appends to a borrowed buffer: states are written in place
/// in the response, with no buffer of their own.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the body of `state` (no version prefix) to `out`: what follows the wake-up
/// list in a timer plugin's state.
pub fn encode_body_into<S: Serialize>(state: &S, out: &mut Vec<u8>) -> Result<(), Error> {
    postcard::serialize_with_flavor(state, AppendTo(out))
        .map_err(|e| Error::new(format!("cannot encode state: {e}")))
}

/// Splits a timer plugin's state of `version` into its wake-up times and its body.
pub fn split_timers(bytes: &[u8], version: u32) -> Result<(Vec<i64>, &[u8]), Error> {
    check_version(bytes, version)?;
    let (timers, body) = lockstep_abi::timers::split_state(bytes)
        .map_err(|e| Error::new(format!("cannot decode state: {e}")))?;
    Ok((timers.iter().collect(), body))
}

/// Decodes a state body written by [`encode_body_into`].
pub fn decode_body<S: DeserializeOwned>(body: &[u8]) -> Result<S, Error> {
    let (state, rest) = postcard::take_from_bytes(body)
        .map_err(|e| Error::new(format!("cannot decode state: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::new(format!(
            "{} trailing bytes after state",
            rest.len()
        )));
    }
    Ok(state)
}

fn check_version(bytes: &[u8], version: u32) -> Result<(), Error> {
    match lockstep_abi::state_version(bytes) {
        Some(v) if v == version => Ok(()),
        Some(v) => Err(Error::new(format!(
            "state was written by state version {v}, this plugin reads version {version}"
        ))),
        None => Err(Error::new("state is shorter than its version header")),
    }
}

/// Decodes a state written by [`encode`] with the same `version`.
pub fn decode<S: DeserializeOwned>(bytes: &[u8], version: u32) -> Result<S, Error> {
    check_version(bytes, version)?;
    decode_body(&bytes[4..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn round_trips_and_refuses_other_versions_and_garbage() {
        let state: VecDeque<(i64, f64)> = [(1, 2.5), (3, -0.0)].into_iter().collect();
        let bytes = encode(&state, 7).expect("encode");
        let back: VecDeque<(i64, f64)> = decode(&bytes, 7).expect("decode");
        assert_eq!(back, state);
        let err = decode::<VecDeque<(i64, f64)>>(&bytes, 8).expect_err("version");
        assert!(err.message().contains("state version 7"), "{err}");
        assert!(decode::<VecDeque<(i64, f64)>>(&bytes[..2], 7).is_err());
        assert!(decode::<VecDeque<(i64, f64)>>(&bytes[..bytes.len() - 1], 7).is_err());
        let mut appended = vec![9, 9];
        encode_into(&state, 7, &mut appended).expect("encode into");
        assert_eq!(&appended[..2], &[9, 9], "what was there is kept");
        assert_eq!(&appended[2..], &bytes[..], "the same bytes as encode");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<VecDeque<(i64, f64)>>(&longer, 7).is_err());
    }
}
