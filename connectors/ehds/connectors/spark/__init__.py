"""The FHIR and CSV connectors as Spark jobs, for sources that do not fit one machine.

A Spark job does what the embedded pipeline does (stage, resolve keys and codes, write), with
the same pieces: FHIR lines are mapped by the FHIR connector's own ``map_line``, CSV mappings
are compiled by the mapping connector for Spark SQL, and keys and codes are resolved by the
framework's SQL in the Spark dialect. What differs is the target, the Parquet CDM layout of
``ehds.omop.parquet_layout``, and the ids: Spark keeps no persistent id map, so ids are
numbered from the sorted source keys (plus an offset), which gives a fresh DuckDB run's ids.

    session.py            a local SparkSession sized for one machine (Java 17+ checked)
    spark_types.py        Arrow and OMOP model types as Spark types
    staged_batches.py     staged rows built in a task, as one wide Arrow schema
    fhir_staging.py       FHIR files to staged rows (the FHIR connector's mapping, in tasks)
    observation_period.py the FHIR connector's observation periods, in Spark SQL
    vocabulary.py         the vocabulary relations, from a layout or a DuckDB CDM file
    commit.py             staged DataFrames to OMOP tables (ids, routing, FKs, concepts)
    layout_writer.py      DataFrames to the layout, typed as the models
    quarantine.py         rejected records to ``LAYOUT/_etl/quarantine/``
    job.py                around a job: layout, vocabulary, commit, report
    fhir_job.py           ``ehds etl spark fhir``
    csv_job.py            ``ehds etl spark csv``
"""
