//! Misbehaves on request. The event's `mode` says how: `ok` emits a row, `spin` loops
//! forever, `hog` allocates without bound, `panic` panics, `fail` returns an error.
//! The `clock`, `random` and `fs` features make the component import what the sandbox
//! refuses.

use lockstep_sdk::prelude::*;

#[derive(Deserialize)]
pub struct Order<'a> {
    pub key: &'a str,
    pub ts: Timestamp,
    pub mode: &'a str,
}

#[derive(Serialize)]
pub struct Done {
    pub n: i64,
}

pub struct Hostile;

#[inline(never)]
fn forbidden() -> i64 {
    #[cfg(feature = "clock")]
    {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
    }
    #[cfg(feature = "random")]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(1);
        return h.finish() as i64;
    }
    #[cfg(feature = "fs")]
    {
        return std::fs::read("/etc/passwd")
            .map(|b| b.len() as i64)
            .unwrap_or(-1);
    }
    #[allow(unreachable_code)]
    0
}

impl Transform for Hostile {
    type Event<'a> = Order<'a>;
    type Row = Done;
    type State = i64;

    fn manifest() -> Manifest {
        ManifestBuilder::new("hostile", "0.1.0")
            .keyed_stateful(1)
            .field("key", ValueType::String, "entity")
            .field("ts", ValueType::Timestamp, "time")
            .field("mode", ValueType::String, "how to misbehave")
            .entity_key("key")
            .event_time("ts")
            .feature("n", ValueType::Int64, "events so far", Value::Int64(0))
            .build()
    }

    fn apply(n: &mut i64, order: Order<'_>, out: &mut Emit<'_, Done>) -> Result<(), Error> {
        match order.mode {
            "spin" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("asked to panic at {}", order.ts.micros()),
            "fail" => Err(Error::new(format!("asked to fail for {}", order.key))),
            "forbidden" => {
                *n += forbidden();
                out.emit(Done { n: *n })
            }
            _ => {
                *n += 1;
                out.emit(Done { n: *n })
            }
        }
    }
}

lockstep_sdk::export!(Hostile);
