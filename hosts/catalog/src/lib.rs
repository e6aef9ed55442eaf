//! Registers offline-store tables and their partitions in the AWS Glue Data Catalog,
//! as a Glue job does, so Athena, Spark, Trino and Redshift Spectrum can query them.
//!
//! One Glue table per feature group (named after it), partitioned by `version`, `year`,
//! `month`, `day`, `hour` — the offline store's directory levels, values spelled as the
//! directories spell them. Each partition carries its own columns, so versions with
//! different features coexist; the table's columns are those of the version written
//! last. Registration is idempotent: the database and table are created if absent (the
//! table updated if its columns changed) and partitions that exist are left alone.
//!
//! This crate owns the catalog only: it never reads or writes data files.

use arrow_schema::DataType;
use aws_sdk_glue::types::{
    Column, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, TableInput,
};
use lockstep_offline::layout::Hour;
use lockstep_offline::{GroupVersion, OfflineStore};
use thiserror::Error;

/// Glue accepts at most this many partitions per BatchCreatePartition call.
const PARTITIONS_PER_CALL: usize = 100;

/// A catalog operation that failed, naming the database, table or call.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// A Glue API call failed.
    #[error("glue {call} on {target}: {message}")]
    Glue {
        /// The API call.
        call: &'static str,
        /// The database or table.
        target: String,
        /// What the service said.
        message: String,
    },
    /// A request could not be built (a name Glue would refuse, say).
    #[error("glue catalog: building the {what} request")]
    Input {
        /// Which request part.
        what: String,
        /// Why.
        #[source]
        source: aws_sdk_glue::error::BuildError,
    },
}

/// What a registration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// `database.table`.
    pub table: String,
    /// Whether the table was created (else it existed).
    pub created_table: bool,
    /// Partitions added.
    pub partitions_added: usize,
    /// Partitions that were already registered.
    pub partitions_existing: usize,
}

/// A group's table as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    /// `database.table`.
    pub table: String,
    /// Where its data is.
    pub location: Option<String>,
    /// The group version written last (the table's columns are its), if recorded.
    pub latest_version: Option<String>,
}

/// A Glue Data Catalog database.
#[derive(Debug, Clone)]
pub struct GlueCatalog {
    client: aws_sdk_glue::Client,
    database: String,
}

fn glue_error(call: &'static str, target: &str) -> impl FnOnce(String) -> CatalogError {
    let target = target.to_owned();
    move |message| CatalogError::Glue {
        call,
        target,
        message,
    }
}

/// Renders an SDK error with its service message, not just "service error".
fn describe<E: std::error::Error>(e: &E) -> String {
    // The SDK's own rendering walks the source chain, so the service's message shows.
    aws_sdk_glue::error::DisplayErrorContext(e).to_string()
}

/// The Hive type of an offline-store column.
fn hive_type(ty: &DataType) -> &'static str {
    use DataType::*;
    match ty {
        Utf8 | LargeUtf8 | Utf8View => "string",
        Int64 => "bigint",
        Int32 => "int",
        Float64 => "double",
        Float32 => "float",
        Boolean => "boolean",
        Timestamp(_, _) => "timestamp",
        Binary | LargeBinary | FixedSizeBinary(_) => "binary",
        _ => "string",
    }
}

impl GlueCatalog {
    /// A client for `database` with `aws`'s endpoint, region and credentials (unset:
    /// the standard AWS environment).
    pub async fn connect(database: &str, aws: &lockstep_aws::AwsOptions) -> Self {
        let config = aws.sdk_config().await;
        GlueCatalog {
            client: aws_sdk_glue::Client::new(&config),
            database: database.to_owned(),
        }
    }

    /// Registers `group`'s table, located at `location` (the store root's URL joined
    /// with the group name), and the hour partitions `hours` of its version.
    pub async fn register(
        &self,
        group: &GroupVersion,
        location: &str,
        hours: &[Hour],
    ) -> Result<Registered, CatalogError> {
        self.ensure_database().await?;
        let table = group.name.to_ascii_lowercase();
        let target = format!("{}.{table}", self.database);
        let columns = columns(group)?;
        let partition_keys = ["version", "year", "month", "day", "hour"]
            .iter()
            .map(|k| column(k, "string"))
            .collect::<Result<Vec<_>, _>>()?;
        let input = TableInput::builder()
            .name(&table)
            .description(format!(
                "Lockstep offline store for feature group {} (plugin-computed features, one row per emitted row)",
                group.name
            ))
            .table_type("EXTERNAL_TABLE")
            .parameters("classification", "parquet")
            .parameters("lockstep.latest_version", &group.version)
            .set_partition_keys(Some(partition_keys))
            .storage_descriptor(storage(location, columns.clone()))
            .build()
            .map_err(|source| CatalogError::Input {
                what: "table".into(),
                source,
            })?;
        let existing = self
            .client
            .get_table()
            .database_name(&self.database)
            .name(&table)
            .send()
            .await;
        let created_table = match existing {
            Ok(_) => {
                self.client
                    .update_table()
                    .database_name(&self.database)
                    .table_input(input)
                    .send()
                    .await
                    .map_err(|e| glue_error("UpdateTable", &target)(describe(&e)))?;
                false
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                self.client
                    .create_table()
                    .database_name(&self.database)
                    .table_input(input)
                    .send()
                    .await
                    .map_err(|e| glue_error("CreateTable", &target)(describe(&e)))?;
                true
            }
            Err(e) => return Err(glue_error("GetTable", &target)(describe(&e))),
        };
        let mut added = 0;
        let mut existing = 0;
        let inputs: Vec<PartitionInput> = hours
            .iter()
            .map(|hour| {
                let values = hour.values();
                let dir = format!("{location}/version={}/{}", group.version, hour.relative());
                PartitionInput::builder()
                    .set_values(Some(
                        std::iter::once(group.version.clone())
                            .chain(values)
                            .collect(),
                    ))
                    .storage_descriptor(storage(&dir, columns.clone()))
                    .build()
            })
            .collect();
        for chunk in inputs.chunks(PARTITIONS_PER_CALL) {
            let out = self
                .client
                .batch_create_partition()
                .database_name(&self.database)
                .table_name(&table)
                .set_partition_input_list(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| glue_error("BatchCreatePartition", &target)(describe(&e)))?;
            let mut failed = 0;
            for error in out.errors() {
                let code = error
                    .error_detail()
                    .and_then(|d| d.error_code())
                    .unwrap_or_default();
                if code == "AlreadyExistsException" {
                    failed += 1;
                } else {
                    return Err(glue_error("BatchCreatePartition", &target)(format!(
                        "partition {:?}: {code}: {}",
                        error.partition_values(),
                        error
                            .error_detail()
                            .and_then(|d| d.error_message())
                            .unwrap_or_default()
                    )));
                }
            }
            existing += failed;
            added += chunk.len() - failed;
        }
        Ok(Registered {
            table: target,
            created_table,
            partitions_added: added,
            partitions_existing: existing,
        })
    }

    /// `group`'s table (named after the group, as [`register`](Self::register) names
    /// it), or `None` when the database or the table does not exist.
    pub async fn table(&self, group: &str) -> Result<Option<TableSummary>, CatalogError> {
        let table = group.to_ascii_lowercase();
        let target = format!("{}.{table}", self.database);
        match self
            .client
            .get_table()
            .database_name(&self.database)
            .name(&table)
            .send()
            .await
        {
            Ok(out) => Ok(Some(TableSummary {
                table: target,
                location: out
                    .table()
                    .and_then(|t| t.storage_descriptor())
                    .and_then(|d| d.location())
                    .map(str::to_owned),
                latest_version: out
                    .table()
                    .and_then(|t| t.parameters())
                    .and_then(|p| p.get("lockstep.latest_version"))
                    .cloned(),
            })),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(glue_error("GetTable", &target)(describe(&e))),
        }
    }

    async fn ensure_database(&self) -> Result<(), CatalogError> {
        let input = DatabaseInput::builder()
            .name(&self.database)
            .description("Lockstep offline-store tables")
            .build()
            .map_err(|source| CatalogError::Input {
                what: "database".into(),
                source,
            })?;
        match self
            .client
            .create_database()
            .database_input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(glue_error("CreateDatabase", &self.database)(describe(&e))),
        }
    }
}

fn column(name: &str, ty: &str) -> Result<Column, CatalogError> {
    Column::builder()
        .name(name)
        .r#type(ty)
        .build()
        .map_err(|source| CatalogError::Input {
            what: format!("column `{name}`"),
            source,
        })
}

/// The stored columns of `group`, as Hive columns.
fn columns(group: &GroupVersion) -> Result<Vec<Column>, CatalogError> {
    OfflineStore::schema(&group.manifest)
        .fields()
        .iter()
        .map(|f| column(f.name(), hive_type(f.data_type())))
        .collect()
}

fn storage(location: &str, columns: Vec<Column>) -> StorageDescriptor {
    StorageDescriptor::builder()
        .set_columns(Some(columns))
        .location(location)
        .input_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat")
        .output_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat")
        .serde_info(
            SerDeInfo::builder()
                .serialization_library(
                    "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                )
                .build(),
        )
        .compressed(true)
        .build()
}
