"""Past one machine: distributed candidate builds on Ray Data (:mod:`.ray_build`) and the single writer's ingest
of their shards (:mod:`.ingest`). Ray is the optional ``scale`` extra; importing this package does not need it."""
