//! `lockstep gen …`: synthetic events, for demos, benchmarks and golden sets.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `lockstep gen …`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Realistic events as JSON lines: skewed entities, bursts, equal timestamps,
    /// rough arrival order, ~1% duplicates (transactions), malformed rows on request.
    Events {
        /// What to generate.
        #[arg(long, value_enum)]
        kind: EventKind,
        /// Number of events.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Number of distinct entities.
        #[arg(long, default_value_t = 1_000)]
        entities: u64,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace this many rows with malformed records.
        #[arg(long, default_value_t = 0)]
        malformed: usize,
        /// Output file (default: standard output). `.parquet` writes Parquet
        /// (transactions only); anything else JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The events of a golden set: generated events plus hand-written edge cases
    /// (duplicates, ties, nulls, extreme values, non-ASCII), arriving out of order
    /// by at most five minutes of event time.
    Golden {
        /// What to generate.
        #[arg(long, value_enum)]
        kind: EventKind,
        /// Seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Which generator.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Transactions,
    Logins,
    Clicks,
}

/// Runs a `gen` subcommand.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Events {
            kind,
            rows,
            entities,
            seed,
            malformed,
            out,
        } => gen_events(kind, rows, entities, seed, malformed, out.as_deref()),
        Command::Golden { kind, seed, out } => {
            let text = lockstep_gen::golden::golden_events(gen_kind(kind), seed);
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display())),
                None => std::io::stdout()
                    .lock()
                    .write_all(text.as_bytes())
                    .context("writing to standard output"),
            }
        }
    }
}

fn gen_kind(kind: EventKind) -> lockstep_gen::Kind {
    match kind {
        EventKind::Transactions => lockstep_gen::Kind::Transactions,
        EventKind::Logins => lockstep_gen::Kind::Logins,
        EventKind::Clicks => lockstep_gen::Kind::Clicks,
    }
}

fn gen_events(
    kind: EventKind,
    rows: usize,
    entities: u64,
    seed: u64,
    malformed: usize,
    out: Option<&Path>,
) -> Result<()> {
    let is_parquet = out.is_some_and(|p| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    });
    if kind == EventKind::Transactions && malformed == 0 {
        // Streamed in chunks: any size in constant memory.
        let mut stream = lockstep_gen::TransactionStream::new(rows, entities, seed);
        return match out {
            Some(path) if is_parquet => crate::gen_parquet::write(path, &mut stream),
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let mut w = std::io::BufWriter::new(file);
                while let Some(chunk) = stream.next_chunk(65_536) {
                    chunk
                        .write_json_lines(&mut w)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                w.flush()
                    .with_context(|| format!("writing {}", path.display()))
            }
            None => {
                let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                while let Some(chunk) = stream.next_chunk(65_536) {
                    chunk.write_json_lines(&mut w)?;
                }
                Ok(w.flush()?)
            }
        };
    }
    if is_parquet {
        bail!(
            "Parquet output is available for --kind transactions without --malformed; \
             write JSON lines (.jsonl) for other kinds and for malformed rows"
        );
    }
    let mut text = lockstep_gen::events(gen_kind(kind), rows, entities, seed);
    if malformed > 0 {
        let (dirty, broken) = lockstep_gen::corrupt(&text, malformed, seed);
        text = dirty;
        eprintln!("malformed rows at lines: {broken:?}");
    }
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}
