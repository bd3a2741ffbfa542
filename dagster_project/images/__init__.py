"""Image stages without Dagster: verify files (verify), cache derived facts (cache), embed
(embed, which imports torch, so it is not imported here) and find duplicates (dedup)."""
