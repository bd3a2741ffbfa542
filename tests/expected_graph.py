"""What the code location must show, written out by hand (not read from the code)."""

#: Assets whose outputs the IO manager stores (one file per dump partition).
STORED_ASSETS = {
    "raw_requests",
    "raw_annotations",
    "disease_codes",
    "normalized_diagnoses",
    "disease_taxonomy",
    "image_records",
    "image_files",
    "image_embeddings",
    "duplicate_clusters",
    "splits",
    "manifest",
}
#: Every asset: the stored ones plus the two that write to the curated destination.
ASSETS = STORED_ASSETS | {"curated_images", "dataset_version"}
BLOCKING_CHECKS = {
    "no_split_leaks",
    "no_pii",
    "unique_image_uuid",
    "required_columns",
    "ranges_hold",
}
CHECKS = BLOCKING_CHECKS | {"split_ratios", "labels_in_every_split", "row_count_vs_previous"}
SENSORS = {"dump_sensor", "check_failure_alerts", "run_failure_alerts"}
SCHEDULES = {"nightly_recheck"}
