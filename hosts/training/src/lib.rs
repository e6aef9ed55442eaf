//! Point-in-time-correct training sets; see the crate README.
//!
//! [`TrainingSet::plan`] turns a [`TrainingSetJob`] (a labels file, groups in the
//! offline store, the as-of rule) into a DataFusion plan around [`AsOfJoinExec`], and
//! [`TrainingSet::write_parquet`] runs it.

pub mod asof;
mod error;
pub mod exact;
mod features;
mod join;
mod labels;
mod set;

pub use asof::AsOf;
pub use error::TrainingError;
pub use exact::{ExactReadExec, PointReader};
pub use join::{AsOfJoinExec, LabelColumns};
pub use set::{
    COLUMN_SEPARATOR, GroupSelection, LINEAGE_KEY, LabelsFormat, ResolvedGroup, TrainingSet,
    TrainingSetJob, Written,
};
