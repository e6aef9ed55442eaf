"""txn_velocity's features with PySpark on local[2] (a Glue-job stand-in).

The same features as duckdb_velocity.py, with the DataFrame API: RANGE windows over the
event time in microseconds, `size(collect_set(merchant))` for distinct merchants (Spark
has no DISTINCT window aggregates), hour-partitioned Snappy Parquet out.

usage: spark_velocity.py EVENTS.parquet OUT_DIR MEMORY
"""

import sys

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

events, out, memory = sys.argv[1], sys.argv[2], sys.argv[3]
spark = (
    SparkSession.builder.master("local[2]")
    .appName("txn_velocity")
    .config("spark.driver.memory", memory)
    .config("spark.sql.shuffle.partitions", "8")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.parquet.compression.codec", "snappy")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")

HOUR = 3_600_000_000
df = spark.read.parquet(events).dropDuplicates(["txn_id"])
df = df.withColumn("t", F.unix_micros("ts"))
by_card = Window.partitionBy("card_id")
columns = [F.col("card_id"), F.col("ts").alias("event_time")]
for name, width in [("1h", HOUR), ("24h", 24 * HOUR), ("7d", 7 * 24 * HOUR)]:
    w = by_card.orderBy("t").rangeBetween(-(width - 1), 0)
    columns += [
        F.count(F.lit(1)).over(w).alias(f"txn_count_{name}"),
        F.sum("amount").over(w).alias(f"txn_sum_{name}"),
        F.avg("amount").over(w).alias(f"txn_mean_{name}"),
        F.max("amount").over(w).alias(f"txn_max_{name}"),
    ]
previous = F.lag("t").over(by_card.orderBy("t", "txn_id"))
w24 = by_card.orderBy("t").rangeBetween(-(24 * HOUR - 1), 0)
columns += [
    ((F.col("t") - previous) / 1e6).alias("secs_since_prev_txn"),
    F.size(F.collect_set("merchant").over(w24)).alias("distinct_merchants_24h"),
]
featured = df.select(*columns)
featured = featured.select(
    "*",
    F.year("event_time").alias("year"),
    F.month("event_time").alias("month"),
    F.dayofmonth("event_time").alias("day"),
    F.hour("event_time").alias("hour"),
)
featured.write.mode("overwrite").partitionBy("year", "month", "day", "hour").parquet(out)
spark.stop()
