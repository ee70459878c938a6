"""Running a study: a spec expands into cells (`spec`), the runner feeds each cell's requests to an
engine (`runner`), the recorder and results writer keep every event on disk (`recorder`, `results`),
with sharding over machines (`shards`) and energy meters (`energy`)."""
