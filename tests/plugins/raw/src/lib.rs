//! A guest written against the WIT world directly, the way a plugin in another
//! language or a hand-rolled one would be: no SDK checks its output. Every event
//! carries a `mode`; the first event's mode decides what `apply` returns:
//!
//! - `ok`: one row per event, feature `n` = the event's index (a well-formed answer);
//! - `garbage`: bytes that are not a response at all;
//! - `wrong_entities`: a response for one entity more than the request had;
//! - `rows_dont_add_up`: entity row counts that do not add up to the row count;
//! - `huge_row_count`: a header claiming 4 billion rows over a few bytes;
//! - `bad_offsets`: a string column whose offsets point past its bytes;
//! - `source_out_of_range`: a row claiming to come from an event that does not exist;
//! - `truncated`: a well-formed response cut short;
//! - `trailing`: a well-formed response with bytes after its end;
//! - `deep`: unbounded recursion (the stack runs out);
//! - `gigantic`: a 48 MiB answer of zeros.

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../../plugin-sdk/wit",
        world: "plugin",
    });

    use lockstep::plugin::types as wit;

    struct Raw;

    impl Guest for Raw {
        fn manifest() -> wit::Manifest {
            let field = |name: &str, ty| wit::Field {
                name: name.into(),
                ty,
                nullable: false,
                description: String::new(),
            };
            wit::Manifest {
                name: "raw_guest".into(),
                version: "0.1.0".into(),
                description: "breaks the batch layout on request".into(),
                input: vec![
                    field("key", wit::ValueType::String),
                    field("ts", wit::ValueType::Timestamp),
                    field("mode", wit::ValueType::String),
                ],
                entity_key: "key".into(),
                event_time: "ts".into(),
                event_id: None,
                features: vec![wit::Feature {
                    name: "n".into(),
                    ty: wit::ValueType::Int64,
                    description: "the event's index in the request".into(),
                    default_value: wit::Value::Int64(0),
                }],
                kind: wit::Kind::Stateless,
                state_version: 0,
                supports_read: false,
                timer_resolution: None,
            }
        }

        fn apply(request: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
            super::apply(&request).map_err(|message| wit::PluginError {
                event_index: None,
                message,
            })
        }

        fn read(_request: Vec<u8>) -> Result<Vec<u8>, wit::PluginError> {
            Err(wit::PluginError {
                event_index: None,
                message: "read is not supported".into(),
            })
        }
    }

    export!(Raw);
}

use lockstep_abi::{ApplyRequestView, ApplyResponseWriter, ValueType};

const INPUT: [ValueType; 3] = [ValueType::String, ValueType::Timestamp, ValueType::String];

/// A well-formed response: one row per event.
fn rows(request: &ApplyRequestView<'_>) -> Vec<u8> {
    let mut out = ApplyResponseWriter::new(&[ValueType::Int64]);
    let ts = &request.columns[1];
    let mut event = 0;
    for entity in 0..request.n_entities() {
        for _ in 0..request.event_count(entity) {
            out.features_mut()[0].push_i64(event as i64);
            out.end_row(ts.i64(event), event as u32);
            event += 1;
        }
        out.end_entity(None);
    }
    out.finish()
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Counts down `depth` frames, each keeping a little of its own stack.
#[inline(never)]
fn recurse(depth: u64, pad: &mut [u8; 64]) -> u64 {
    pad[(depth % 64) as usize] = depth as u8;
    let mut mine = [0u8; 64];
    mine.copy_from_slice(pad);
    if depth == 0 {
        return u64::from(mine[0]);
    }
    recurse(std::hint::black_box(depth - 1), &mut mine) + u64::from(mine[1])
}

pub fn apply(request: &[u8]) -> Result<Vec<u8>, String> {
    let view = ApplyRequestView::parse(request, &INPUT).map_err(|e| e.to_string())?;
    let mode = if view.n_events() > 0 {
        view.columns[2].str(0).to_owned()
    } else {
        "ok".to_owned()
    };
    // Header: magic (4 bytes), entity count, row count, feature count (u32 LE each),
    // then the row table (a u32 per entity) and the columns.
    let mut answer = rows(&view);
    match mode.as_str() {
        "ok" => {}
        "garbage" => answer = b"\xffthis is not an apply response".to_vec(),
        "wrong_entities" => {
            let n = view.n_entities() as u32 + 1;
            put_u32(&mut answer, 4, n);
        }
        "rows_dont_add_up" => put_u32(&mut answer, 8, view.n_events() as u32 + 5),
        "huge_row_count" => {
            // One entity with u32::MAX rows: the counts add up, the bytes do not exist.
            answer.truncate(16);
            put_u32(&mut answer, 4, 1);
            put_u32(&mut answer, 8, u32::MAX);
            answer.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        "bad_offsets" => {
            // The first column after the row table holds the states (binary, with a
            // validity bitmap): its last offset, which gives its data's length, is
            // made to point far past the payload.
            let entities = view.n_entities();
            let offsets = 16 + 4 * entities + 2 + entities.div_ceil(8);
            put_u32(&mut answer, offsets + 4 * entities, 0x7fff_fff0);
        }
        "source_out_of_range" => {
            // The source-event table sits just before the feature column; the last
            // row's entry is its last four bytes before that column (an int64 column
            // of n rows: tag, validity flag, 8n bytes).
            let feature_bytes = 1 + 1 + 8 * view.n_events();
            let at = answer.len() - feature_bytes - 4;
            put_u32(&mut answer, at, view.n_events() as u32 + 7);
        }
        "truncated" => answer.truncate(answer.len() / 2),
        "trailing" => answer.extend_from_slice(b"and some more"),
        "deep" => {
            let mut pad = [0u8; 64];
            let depth = recurse(u64::MAX, &mut pad);
            answer.push(depth as u8);
        }
        "gigantic" => answer = vec![0u8; 48 << 20],
        other => return Err(format!("unknown mode `{other}`")),
    }
    Ok(answer)
}
